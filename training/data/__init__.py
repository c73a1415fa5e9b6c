"""Datasets, windows and scalers (numpy; no torch)."""
