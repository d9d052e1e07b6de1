"""The optional extras of pyproject.toml: which packages each installs, and a check to run before any work.

A command or API function that needs an extra calls `require(extra, why)` first, so that a missing package is
one line naming the extra (`pip install 'fuse-export[plot]'`) before anything is read, trained, exported or written,
not a failure after minutes of work. The check finds the package without importing it (no cold-start cost).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from fuse_export.errors import BackendUnavailable

# extra -> (import name, the distribution that provides it) for each package the code imports from that extra,
# as pyproject.toml's [project.optional-dependencies] lists them (tests/test_extras.py checks the two agree).
EXTRAS: dict[str, tuple[tuple[str, str], ...]] = {
    "train": (("torch", "torch"), ("torchvision", "torchvision"), ("onnx", "onnx"), ("onnxscript", "onnxscript"),
              ("safetensors", "safetensors")),
    "plot": (("matplotlib", "matplotlib"),),
    "simplify": (("onnxslim", "onnxslim"),),
    "openvino": (("openvino", "openvino"),),
    "faces": (("cv2", "opencv-python-headless"),),
    "serve": (("pytriton", "nvidia-pytriton"),),
    "tensorboard": (("tensorboard", "tensorboard"),),
    "executorch": (("executorch", "executorch"),),
}


def install_hint(extra: str) -> str:
    """The command that installs an extra."""
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    return f"pip install 'fuse-export[{extra}]'"


class MissingExtra(BackendUnavailable):
    """A package of an optional extra is not installed: one line naming what needs it and the extra to install."""

    def __init__(self, extra: str, why: str, packages: Sequence[str]) -> None:
        self.extra, self.packages = extra, tuple(packages)
        super().__init__(f"{why} needs {' and '.join(packages)}, which this install leaves out: "
                         f"{install_hint(extra)}")


def importable(module: str) -> bool:
    """Whether `import module` finds a top-level module, without importing it. A None in sys.modules (an import
    blocked on purpose, as the tests do to simulate an absent package) counts as absent."""
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # in sys.modules without a __spec__: already imported, so present
        return True
    except ImportError:
        return False


def missing(extra: str) -> list[str]:
    """The distributions of `extra` whose modules cannot be imported here."""
    install_hint(extra)  # an unknown extra is a bug: say so
    return [dist for module, dist in EXTRAS[extra] if not importable(module)]


def require(extra: str, why: str) -> None:
    """Raise MissingExtra (a UserError: one line, exit 2) unless every package of `extra` is installed.
    `why` names what needs it, as the user asked for it: "--plot", "--format openvino", "`serve`"."""
    absent = missing(extra)
    if absent:
        raise MissingExtra(extra, why, absent)
