"""The models `serve` puts into Triton: their tensors (from the I/O contract) and the Python-backend model code.

Triton's Python backend runs `TritonPythonModel` in a stub process per model instance; each loads its own
runner (the one the serving process selected, with its thread count) and answers Triton's batches directly,
with no further process in between. MODEL's batches are whole merged batches (one runner call); BYTES_MODEL's
requests are decoded one by one, so a corrupt image fails only its own request.

Every failure becomes one line in the response: what the request got wrong (an undecodable, empty, truncated or
oversized image: a UserError) is Triton's INVALID_ARG, HTTP 400; anything else is INTERNAL (HTTP 500) with the
exception's type only, its traceback going to the server's log. No traceback or server path reaches a client.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from fuse_export.contract import IOContract, Preprocessing, check_outputs
from fuse_export.errors import DataError, IntegrityError, UserError
from fuse_export.fileio import write_json
from fuse_export.runners.base import Runner

LABEL = "label"
TENSOR, BYTES = "tensor", "bytes"  # the two kinds of model (the `kind` parameter of the Triton config)


def model_tensors(contract: IOContract, pre: Preprocessing) -> tuple[Any, Any, list[Any]]:
    """Triton tensor specs, per item (Triton adds the batch axis): the contract's input, `image_bytes`, and
    the contract's outputs plus `label`."""
    from pytriton.model_config.triton_model_config import TensorSpec

    def spec(t) -> Any:
        return TensorSpec(name=t.name, dtype=np.dtype(t.dtype).type,
                          shape=tuple(t.shape(-1, pre.num_classes, pre.image_size)[1:]))

    (image,) = contract.inputs
    outputs = [spec(t) for t in contract.outputs] + [TensorSpec(name=LABEL, dtype=bytes, shape=(1,))]
    return spec(image), TensorSpec(name="image_bytes", dtype=bytes, shape=(1,)), outputs


class Instance:
    """One model instance: a loaded runner and what turns a batch of requests into its outputs."""

    def __init__(self, runner: Runner, pre: Preprocessing, embed: bool) -> None:
        self.runner, self.pre, self.embed = runner, pre, embed
        self.input_name = runner.contract.input_names[0]
        self._lock = threading.Lock()  # runtimes whose sessions are not re-entrant (OpenVINO, TensorRT)
        self._labels = np.array([c.encode() for c in pre.class_names], dtype=object)
        self.runner_s = 0.0  # time inside runner.infer, summed: the per-hop breakdown's innermost hop

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            t0 = time.perf_counter()
            try:
                outs = self.runner.infer({self.input_name: x})
            finally:
                self.runner_s += time.perf_counter() - t0
        problems = check_outputs(outs)
        if problems:  # an artifact that breaks its output contract must not answer as if it were fine
            raise IntegrityError(f"{self.runner.label}: {'; '.join(problems)}")
        outs[LABEL] = self._labels[outs["probabilities"].argmax(axis=1)].reshape(-1, 1)
        return outs

    def infer_tensor(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """A batch in the artifact's own input contract (Triton has checked name, dtype and shape)."""
        return self._run(image)

    def infer_bytes(self, image_bytes: np.ndarray) -> dict[str, np.ndarray]:
        """A batch of encoded images ([N, 1] bytes): decoded (EXIF applied) and preprocessed as `predict` does."""
        from fuse_export import preprocess

        images = []
        for i, item in enumerate(image_bytes.reshape(-1)):
            data = item if isinstance(item, bytes) else bytes(item)
            if not data:
                raise DataError(f"image_bytes[{i}]", "empty; send the encoded JPEG/PNG file's bytes")
            images.append(preprocess.open_image(data, name=f"image_bytes[{i}]"))
        x = preprocess.model_pixels(images, self.pre) if self.embed else preprocess.preprocess(images, self.pre)
        return self._run(x)


def load_instance(export: str, backend: str, threads: int, spin: str | None = None) -> Instance:
    """The runner `serve` selected, loaded (the serving process verified the artifact's hash already)."""
    from fuse_export.inference.selection import select
    from fuse_export.runners.registry import BACKENDS

    sel = select(Path(export), backend, verify=False)
    runner = BACKENDS[sel.backend].factory(sel.path, sel.checkpoint, sel.pre, threads, sel.embed)
    runner.spin = spin
    return Instance(runner.activate(), sel.pre, sel.embed)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def client_error(exc: BaseException, model: str) -> tuple[str, bool]:
    """(the one line a client gets for `exc`, whether the request was at fault). A UserError (other than an
    artifact breaking its output contract) names the item and the problem; anything else only says that the
    server failed, and its traceback goes to the server's log, not to the client."""
    if isinstance(exc, UserError) and not isinstance(exc, IntegrityError):
        text = str(exc).strip().splitlines()
        return (text[0][:500] if text else type(exc).__name__), True
    print(f"fuse-export serve: model {model}: request failed:", file=sys.stderr)
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    return f"model {model}: internal error ({type(exc).__name__}); see the server log", False


def error_response(pb: Any, exc: BaseException, model: str) -> Any:
    """A Triton response carrying `exc` as one line: INVALID_ARG (HTTP 400, gRPC INVALID_ARGUMENT) when the
    request was at fault, INTERNAL otherwise. Stubs without error codes (before Triton 23.x) get the line only."""
    message, bad_request = client_error(exc, model)
    code = getattr(pb.TritonError, "INVALID_ARG" if bad_request else "INTERNAL", None)
    error = pb.TritonError(message) if code is None else pb.TritonError(message, code)
    return pb.InferenceResponse(error=error)


class TritonPythonModel:
    """Triton's Python-backend model (the interface names are Triton's): one instance, one runner."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.kind = params["kind"]
        self.name = config.get("name", self.kind)
        self.outputs = [o["name"] for o in config["output"]]
        self.metrics = None
        try:
            self.instance = load_instance(params["export"], params["backend"], int(params["threads"]),
                                          params.get("spin"))
        except BaseException as exc:
            # The serving process waits for this verdict to stop with one line (exit 1 for a bad artifact).
            code = exc.exit_code if isinstance(exc, UserError) else 2
            message = str(exc) if isinstance(exc, UserError) else (
                f"{params['export']}: the {params['backend']} runner failed to load ({_one_line(exc)})")
            write_json(params["status"], {"exit_code": code, "message": message})  # atomic: serve polls it
            raise
        import triton_python_backend_utils as pb

        from fuse_export.deploy.hops import StubMetrics

        self.metrics = StubMetrics(pb, self.name, args.get("model_instance_name", self.name))

    def execute(self, requests: list[Any]) -> list[Any]:
        t0, runner0 = time.perf_counter(), self.instance.runner_s
        try:
            return self._execute(requests)
        finally:  # the per-hop breakdown's stub side (fuse_export.deploy.hops)
            if self.metrics is not None:
                self.metrics.record(time.perf_counter() - t0, self.instance.runner_s - runner0)

    def _execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb

        try:
            if self.kind == BYTES:  # one request at a time: a corrupt image fails its own request only
                out = []
                for r in requests:
                    try:
                        x = pb.get_input_tensor_by_name(r, "image_bytes").as_numpy()
                    except Exception as exc:  # noqa: BLE001 - answered as one line, never a traceback
                        out.append(error_response(pb, exc, self.name))
                        continue
                    out += self._answer(pb, self.instance.infer_bytes, x, [len(x)])
                return out
            arrays = [pb.get_input_tensor_by_name(r, self.instance.input_name).as_numpy() for r in requests]
            x = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)  # Triton's merged batch: one runner call
            return self._answer(pb, self.instance.infer_tensor, x, [len(a) for a in arrays])
        except Exception as exc:  # noqa: BLE001 - an exception out of execute() reaches clients with its traceback
            return [error_response(pb, exc, self.name) for _ in requests]

    def _answer(self, pb: Any, infer: Any, x: np.ndarray, sizes: list[int]) -> list[Any]:
        """One response per request: its rows of the outputs, or the batch's error in one line."""
        try:
            outs = infer(x)
        except Exception as exc:  # noqa: BLE001 - answered as one line (400 for the request's fault, else 500)
            return [error_response(pb, exc, self.name) for _ in sizes]
        responses, start = [], 0
        for n in sizes:
            responses.append(pb.InferenceResponse(
                output_tensors=[pb.Tensor(k, np.ascontiguousarray(outs[k][start:start + n])) for k in self.outputs]))
            start += n
        return responses

    def finalize(self) -> None:
        if getattr(self, "metrics", None) is not None:
            self.metrics.close()
        instance = getattr(self, "instance", None)
        if instance is not None:
            instance.runner.deactivate()
