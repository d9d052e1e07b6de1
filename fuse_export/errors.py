"""The project's error hierarchy: errors a user can cause, turned into one line and exit code 2 by the CLI."""

from __future__ import annotations

import os


class UserError(Exception):
    """An error the user can fix. The message names the file, the field and the fix."""

    exit_code = 2


class DataError(UserError):
    """A data file is missing, malformed or inconsistent."""

    def __init__(self, path: str | os.PathLike, problem: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = str(path)
        self.line = line
        self.problem = problem


class RecipeError(UserError):
    """A recipe (TOML) is missing, malformed or has an invalid field."""


class CheckpointError(UserError):
    """A checkpoint or weights file cannot be loaded into the model."""


class ExportError(UserError):
    """An export failed, or the exported artifact does not match eager PyTorch."""


class BackendUnavailable(UserError):
    """An optional backend (onnxruntime-gpu, TensorRT, CUDA) is not usable here."""


class InputError(UserError):
    """An input given to a runner has the wrong name, shape or dtype."""


class IntegrityError(UserError):
    """An artifact fails its integrity or output contract: edited after export, outside its folder, or giving
    outputs its contract rules out. Exit code 1 (the artifact is bad), not 2 (the command line is)."""

    exit_code = 1


class UnverifiedArtifactWarning(UserWarning):
    """An artifact runs although nothing checked its bytes: a lone file with no manifest beside it (or one its
    folder's manifest does not list, run with verify=False). `fuse_export.load` warns with it; the CLI prints a line."""


class ParityError(IntegrityError, ExportError):
    """An artifact's outputs differ from the eager reference beyond the tolerance. Exit code 1, as every
    artifact that fails verification (an ExportError too, so `except ExportError` still sees export failures)."""
