"""Training: recipes, checkpoints, the two-stage loop (joint heads, then the stacker), metrics."""

from fuse_export._callable import make_callable

make_callable(__name__, "train")  # `fuse_export.train(...)` is the API function (fuse_export/pipeline.py)
