"""Manifests and the datasets that produce them (builders, sample videos, synthetic motion data)."""
