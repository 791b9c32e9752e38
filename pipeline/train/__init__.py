"""Training loops (pre-training; fine-tuning later) and what they share: sessions, meters, checkpoints."""
