"""Training: models, data and training loops (needs torch)."""
