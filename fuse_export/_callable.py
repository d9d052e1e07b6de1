"""`fuse_export.train(...)` and `fuse_export.export(...)` are API functions AND the names of subpackages
(fuse_export/train/, fuse_export/export/). Python binds a subpackage to its parent's attribute as soon as any
of its modules is imported, so a plain function of that name would be replaced. Instead the subpackage
module itself is made callable, forwarding to the API function (fuse_export/pipeline.py)."""

from __future__ import annotations

import sys
import types
from typing import Any


def make_callable(module_name: str, function: str) -> None:
    """Let `sys.modules[module_name](...)` call `fuse_export.pipeline.<function>(...)` (imported on call)."""

    class _CallablePackage(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            from fuse_export import pipeline

            return getattr(pipeline, function)(*args, **kwargs)

    _CallablePackage.__call__.__doc__ = f"fuse_export.pipeline.{function}: see help(fuse_export.pipeline.{function})."
    sys.modules[module_name].__class__ = _CallablePackage
