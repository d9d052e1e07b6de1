"""What every backend is fed (the same images, float NCHW and uint8 NHWC), and running a runner over them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuse_export.contract import Preprocessing
from fuse_export.cpuinfo import check_threads
from fuse_export.errors import UserError
from fuse_export.runners.base import Runner
from fuse_export.runners.cuda_base import CudaRunner
from fuse_export.runners.registry import Backend


@dataclass
class EvalInputs:
    """What every backend is fed: the same images, float NCHW and (for embedded graphs) uint8 NHWC."""

    float_nchw: np.ndarray
    uint8_nhwc: np.ndarray
    labels: np.ndarray | None  # None when the inputs are random (no data given)
    source: str


def data_format_for(path: str, fmt: str | None) -> str:
    """The --data format: as given, else fer2013-csv for a .csv file, image-folder for a folder."""
    if fmt:
        return fmt
    return "fer2013-csv" if Path(path).suffix.lower() == ".csv" else "image-folder"


def eval_inputs(pre: Preprocessing, data: str | None, limit: int | None = None, seed: int = 0,
                fmt: str | None = None) -> EvalInputs:
    """The data's evaluation split (test, else val) through the eval transform, or seeded random images."""
    from fuse_export.data.registry import load_dataset
    from fuse_export.data.transforms import eval_pixels_transform, normalize_pixels

    if data:
        fmt = data_format_for(data, fmt)
        ds = load_dataset(fmt, data)
        split_name = next((s for s in ("test", "val") if s in ds.splits and len(ds.splits[s])), None)
        if split_name is None:
            raise UserError(f"--data {data}: no test or val images to evaluate on ({fmt})")
        split = ds.splits[split_name]
        if list(ds.class_names) != list(pre.class_names):
            raise UserError(f"--data {data}: class names {list(ds.class_names)} differ from the model's "
                            f"{list(pre.class_names)}")
        n = len(split) if limit is None else min(limit, len(split))
        tf = eval_pixels_transform(pre)
        pixels = np.stack([tf(split.load(i)).numpy() for i in range(n)])  # uint8 [N, 3, H, W]
        labels: np.ndarray | None = split.labels[:n]
        source = f"{data} ({split_name} split, {n} images)"
    else:
        rng = np.random.default_rng(seed)
        n = limit or 64
        pixels = rng.integers(0, 256, size=(n, 3, pre.image_size, pre.image_size), dtype=np.uint8)
        labels, source = None, f"{n} random images (seed {seed})"
    nhwc = np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))
    return EvalInputs(normalize_pixels(nhwc, pre), nhwc, labels, source)


def run_all(runner: Runner, inputs: np.ndarray, batch: int = 32) -> dict[str, np.ndarray]:
    """Outputs over all inputs in chunks, concatenated."""
    name = runner.contract.input_names[0]
    parts = [runner.infer({name: inputs[i:i + batch]}) for i in range(0, len(inputs), batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in runner.contract.output_names}


def batch_of(inputs: np.ndarray, size: int) -> np.ndarray:
    reps = -(-size // len(inputs))
    return np.ascontiguousarray(np.concatenate([inputs] * reps)[:size])


def make_runner(backend: Backend, artifact: Path | None, checkpoint: Path, pre: Preprocessing, threads: int | None,
                embed: bool, device: str | None = None) -> Runner:
    """The backend's runner, on `device` ("cuda:N") when it is a CUDA runner (CPU runners ignore it)."""
    threads = check_threads(threads, "threads")  # every runner of every command and of load() comes through here
    runner = backend.factory(artifact, checkpoint, pre, threads, embed)
    if device and device.startswith("cuda") and isinstance(runner, CudaRunner):
        runner.device_name = device  # read when the runner activates
    return runner
