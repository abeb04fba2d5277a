"""Evaluation of the models against baselines on held-out data (paper-style tables)."""
