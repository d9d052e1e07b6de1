"""Export: the format table and one writer per format. Verification against eager lives in `workflow`."""

from fuse_export._callable import make_callable

make_callable(__name__, "export")  # `fuse_export.export(...)` is the API function (fuse_export/pipeline.py)
