"""pt2: the export view through `torch.export`, compiled ahead of time by AOTInductor into one package.

TorchScript is deprecated upstream; torch.export + AOTInductor is its successor. The package (a zip with
a compiled shared library and the weights) loads with `torch._inductor.aoti_load_package` in Python and
with `torch::inductor::AOTIModelPackageLoader` in C++ (see examples/cpp), without Python or fuse_export.
Compiling needs a C++ compiler on the exporting machine; loading does not.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from fuse_export.contract import BATCH_AXIS, MAX_BATCH, IOContract
from fuse_export.errors import BackendUnavailable, ExportError, UserError

METADATA_KEY = "fuse_export"  # package metadata key holding the artifact metadata as JSON

# Freezing turns the weights into constants, which lets Inductor fold the batch norms and pre-pack the
# convolution weights for oneDNN (it applies only under no_grad). On 2 CPU cores it compiled faster and ran
# faster at batch 1 than the unfrozen package (the README has the figures).
INDUCTOR_CONFIGS: dict[str, Any] = {"freezing": True}


@contextlib.contextmanager
def _quiet_inductor() -> Iterator[None]:
    """Silence torch's "No CUDA runtime is found" log line and compile warnings: noise for a CPU package."""
    cpp_log = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_log.level
    cpp_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        cpp_log.setLevel(level)


def find_cpp_compiler() -> str:
    """The C++ compiler AOTInductor will use (honours $CXX); BackendUnavailable when there is none."""
    try:
        from torch._inductor import cpp_builder, exc

        cpp_builder.cpp_compiler_search.cache_clear()  # a compiler installed since the last call counts
        try:
            return cpp_builder.get_cpp_compiler()
        except exc.InvalidCxxCompiler:
            pass
    except (ImportError, AttributeError):  # private API moved: fall back to what Inductor defaults to
        found = shutil.which(os.environ.get("CXX", "g++"))
        if found:
            return found
    raise BackendUnavailable(
        f"the pt2 format compiles C++ with AOTInductor, but no C++ compiler was found "
        f"(tried $CXX={os.environ.get('CXX', '<unset>')} and g++): install one (e.g. apt-get install g++) "
        "or set CXX, or drop pt2 from --format")


def _require_aoti() -> None:
    if not hasattr(torch._inductor, "aoti_compile_and_package"):
        raise BackendUnavailable(f"torch {torch.__version__} has no AOTInductor packaging "
                                 "(torch._inductor.aoti_compile_and_package); the pt2 format needs torch >= 2.6")


def export_pt2(view: torch.nn.Module, example: torch.Tensor, path: str | os.PathLike, contract: IOContract,
               metadata: dict[str, Any], static_batch: bool = False) -> float:
    """torch.export the view, compile it with AOTInductor for CPU and save the package atomically.

    The batch axis is a dynamic `Dim` unless `static_batch`; like the ONNX export, that needs an example
    batch >= 2, since torch.export specializes a size-1 dimension to a constant. Returns compile seconds.
    """
    with _quiet_inductor():
        import torch._inductor  # noqa: F401  (the attribute is not there until the submodule is imported)
    _require_aoti()
    find_cpp_compiler()
    if not static_batch and example.shape[0] < 2:
        raise ValueError("a dynamic-batch export needs an example batch >= 2")
    dynamic_shapes = None
    if not static_batch:
        (inp,) = contract.inputs
        dynamic_shapes = ({inp.dims.index(BATCH_AXIS): torch.export.Dim(BATCH_AXIS, min=1, max=MAX_BATCH)},)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    configs = {**INDUCTOR_CONFIGS, "aot_inductor.metadata": {METADATA_KEY: json.dumps(metadata)}}
    start = time.perf_counter()
    # aoti_compile_and_package insists on a name ending in .pt2, so the temporary file lives in a
    # temporary folder beside the target (same file system, so the final rename is atomic).
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        # no_grad matters: Inductor only freezes (and so pre-packs the oneDNN weights) without autograd.
        with _quiet_inductor(), torch.no_grad():
            program = torch.export.export(view.eval(), (example,), dynamic_shapes=dynamic_shapes)
            tmp = tmp_dir / path.name if path.suffix == ".pt2" else tmp_dir / f"{path.name}.pt2"
            torch._inductor.aoti_compile_and_package(program, package_path=str(tmp), inductor_configs=configs)
        os.replace(tmp, path)
    except BackendUnavailable:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ExportError(f"pt2 export (torch.export + AOTInductor) failed: {type(exc).__name__}: {first[:300]}") \
            from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return time.perf_counter() - start


def load_pt2(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """Load an AOTInductor package and its fuse-export metadata (plain `aoti_load_package` works too)."""
    with _quiet_inductor():
        import torch._inductor  # noqa: F401

    _require_aoti()
    if not Path(path).is_file():
        raise UserError(f"{path}: no such pt2 package")
    try:
        with _quiet_inductor():
            model = torch._inductor.aoti_load_package(str(path))
    except Exception as exc:  # a truncated or foreign file fails deep inside the loader
        raise UserError(f"{path}: not a loadable AOTInductor package ({type(exc).__name__}); re-export it "
                        "with --format pt2 using this torch version") from None
    raw = model.get_metadata().get(METADATA_KEY, "")
    return model, (json.loads(raw) if raw else {})


def read_pt2_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata embedded in an AOTInductor package (the format table's `metadata_reader`)."""
    return load_pt2(path)[1]
