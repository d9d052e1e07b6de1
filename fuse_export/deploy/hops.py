"""Where a served request's time goes: Triton's own statistics joined with timings taken inside the stub.

Triton's statistics extension (`/v2/models/NAME/stats`) splits the time a request spends in the server into its
queue, input copy, `compute_infer` and output copy. For a Python-backend model, `compute_infer` holds the hop from
the backend to the stub process (the request's tensors handed over in shared memory, a message, the wait) and
back, plus everything the stub does. The stub therefore counts its own time on Triton's /metrics, as Python-backend
custom metrics: all of `execute()` and, inside it, the runner alone. Subtracting one from the other names each
hop with its cost; the client's own latency minus Triton's request time is the wire (serialization, the loopback
connection, the HTTP/gRPC frontend).
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

# Counters the stub adds to Triton's /metrics (labelled with the model's name), in microseconds like Triton's.
EXECUTE_US = "fuse_export_execute_duration_us"
RUNNER_US = "fuse_export_runner_duration_us"
EXECUTIONS = "fuse_export_execution_count"
_DESCRIPTIONS = {
    EXECUTE_US: "Cumulative time inside the Python stub's execute(), inputs to responses, in microseconds",
    RUNNER_US: "Cumulative time inside the runner (the model itself), in microseconds",
    EXECUTIONS: "Number of batches the Python stub executed",
}


class StubMetrics:
    """The stub's counters (Python-backend custom metrics; absent on stubs older than Triton 23.02: no-ops)."""

    def __init__(self, pb: Any, model: str, instance: str) -> None:
        self._families: dict[str, Any] = {}
        self._metrics: dict[str, Any] = {}
        family = getattr(pb, "MetricFamily", None)
        if family is None:
            return
        for name, text in _DESCRIPTIONS.items():
            self._families[name] = family(name=name, description=text, kind=family.COUNTER)
            self._metrics[name] = self._families[name].Metric(labels={"model": model, "instance": instance})

    def record(self, execute_s: float, runner_s: float) -> None:
        if self._metrics:
            self._metrics[EXECUTE_US].increment(execute_s * 1e6)
            self._metrics[RUNNER_US].increment(runner_s * 1e6)
            self._metrics[EXECUTIONS].increment(1)

    def close(self) -> None:
        """Metrics before their families: the stub refuses to delete a family that still has metrics."""
        self._metrics.clear()
        self._families.clear()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def snapshot(http_url: str, metrics_url: str, model: str) -> dict[str, float]:
    """Cumulative counters of one model: Triton's statistics (ns, counts) and the stub's metrics (us)."""
    doc = json.loads(_get(f"{http_url}/v2/models/{model}/stats"))
    stats = doc["model_stats"][0]
    inf = stats["inference_stats"]
    out = {"requests": float(inf["success"]["count"]), "executions": float(stats["execution_count"]),
           "inferences": float(stats["inference_count"]), "failures": float(inf["fail"]["count"])}
    for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        out[f"{key}_ns"] = float(inf[key]["ns"])
    # Per execution (a batch), not per request: what the stub's own per-batch timings compare with.
    out["batch_compute_infer_ns"] = float(sum(b["compute_infer"]["ns"] for b in stats.get("batch_stats", [])))
    for line in _get(metrics_url).decode().splitlines():
        name, _, rest = line.partition("{")
        if name in _DESCRIPTIONS and f'model="{model}"' in rest:  # summed over the model's instances
            out[name] = out.get(name, 0.0) + float(rest.rsplit(" ", 1)[1])
    return out


def breakdown(before: dict[str, float], after: dict[str, float], client_ms: float | None = None) -> dict[str, Any]:
    """Mean milliseconds per request in each hop between two snapshots (and the client's, if measured).

    Hops are means per request except the stub's, which are per batch run and shown per request only when
    each batch held one request (batch 1 without merging); `mean_batch` says which case it was."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(before) | set(after)}
    n, runs = max(d.get("requests", 0.0), 1.0), max(d.get("executions", 0.0), 1.0)
    per_req = {k: d.get(f"{k}_ns", 0.0) / n / 1e6 for k in ("success", "queue", "compute_input", "compute_infer",
                                                             "compute_output")}
    out: dict[str, Any] = {"requests": d.get("requests", 0.0), "failures": d.get("failures", 0.0),
                           "mean_batch": d.get("inferences", 0.0) / runs, "in_triton_ms": per_req["success"],
                           "queue_ms": per_req["queue"], "compute_input_ms": per_req["compute_input"],
                           "compute_infer_ms": per_req["compute_infer"], "compute_output_ms": per_req["compute_output"]}
    out["triton_other_ms"] = per_req["success"] - sum(per_req[k] for k in ("queue", "compute_input", "compute_infer",
                                                                           "compute_output"))
    if EXECUTE_US in d and d.get(EXECUTIONS):
        stub_runs = d[EXECUTIONS]
        execute_ms = d[EXECUTE_US] / stub_runs / 1e3
        runner_ms = d[RUNNER_US] / stub_runs / 1e3
        infer_per_run_ms = d.get("batch_compute_infer_ns", 0.0) / runs / 1e6
        out.update({"stub_hop_ms": infer_per_run_ms - execute_ms, "stub_python_ms": execute_ms - runner_ms,
                    "runner_ms": runner_ms, "per": "batch"})
    if client_ms is not None:
        out["client_ms"] = client_ms
        out["wire_ms"] = client_ms - per_req["success"]
    return out


HOPS = (("wire_ms", "client <-> Triton (serialization, loopback, HTTP/gRPC frontend)"),
        ("queue_ms", "Triton's queue (the scheduler, the dynamic batcher's delay)"),
        ("compute_input_ms", "Triton copies the inputs"),
        ("stub_hop_ms", "Python backend <-> stub process (shared memory, message, wake-up)"),
        ("stub_python_ms", "the stub's Python around the runner (tensors in, label, responses)"),
        ("runner_ms", "the runner (the model)"),
        ("compute_output_ms", "Triton copies the outputs"),
        ("triton_other_ms", "the rest of Triton's request time (frontend to scheduler, response)"))
