"""Training: recipes, checkpoints, the two-stage loop (joint heads, then the stacker), metrics."""
