"""Self-supervised pretraining of CNN backbones (CARE and baselines)."""
