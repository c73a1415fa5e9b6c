"""Forecaster networks (torch)."""
