"""Export: the format table and one writer per format. Verification against eager lives in `fuse_export.app.export_verify`.

The API function `fuse_export.export(...)` lives in `fuse_export.app.api`."""
