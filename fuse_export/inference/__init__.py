"""Inference: which artifact runs (selection), the Predictor over its runner, and predict on photos."""
