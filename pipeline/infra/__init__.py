"""The frameworks a run stands on: the DeepSpeed engine, MLflow tracking, and the capacity arithmetic."""
