"""Training: recipes, checkpoints, the two-stage loop (joint heads, then the stacker), metrics.

The API function `fuse_export.train(...)` lives in `fuse_export.app.api`."""
