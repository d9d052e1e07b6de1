import json
import shutil
import subprocess
import sys
import time

from typer.testing import CliRunner

from fuse_export.cli import app
from fuse_export.compare.bench import run_bench
from fuse_export.compare.parity import compare_outputs
from fuse_export.runners.registry import BACKENDS, parse_backends

import numpy as np
import pytest

from fuse_export.errors import InputError, IntegrityError, UserError


def test_bench_cli_json_has_three_backends_with_parity_and_accuracy(tiny_export, tiny_csv, tmp_path):
    out = tmp_path / "b.json"
    # The fp32 backends plus two without an artifact here (reduced-precision rows have their own tests).
    r = CliRunner().invoke(app, ["bench", str(tiny_export), "--backends", "pytorch,torchscript,onnxruntime,"
                                 "onnxruntime-fp16,pt2", "--batch-sizes", "1,4", "--iterations", "3",
                                 "--warmup", "1", "--min-time", "0", "--rounds", "1", "--data", str(tiny_csv),
                                 "--json", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    for title in ("PyTorch", "TorchScript", "ONNX Runtime"):
        assert title in r.output
    doc = json.loads(out.read_text())
    assert doc["passed"] and {"cpu", "platform"} <= set(doc["machine"]) and "onnxruntime" in doc["versions"]
    # Backends without an artifact in the folder (pt2, reduced precision) are skipped rows with a reason.
    exported = {"pytorch", "torchscript", "onnxruntime"}
    assert all(x["reason"] for x in doc["rows"] if x["backend"] not in exported)
    rows = [x for x in doc["rows"] if x["backend"] in exported]
    assert {(x["backend"], x["batch"]) for x in rows} == {(b, n) for b in exported for n in (1, 4)}
    for row in rows:
        assert row["status"] == "ok"
        lat = row["latency"]
        assert 0 < lat["median_ms"] <= lat["p90_ms"] <= lat["p99_ms"] and lat["iterations"] == 3
        assert row["images_per_s"] > 0
        assert row["parity"]["max_abs_prob"] <= 1e-4 and row["parity"]["top1_agreement"] == 1.0
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["parity"]["samples"] == 28  # the whole test split of the tiny set (7 classes x 4)
        outs = row["parity"]["outputs"]  # every output gated, with its figures and error histogram
        assert set(outs) == {"logits", "probabilities", "confidence"} and all(o["passed"] for o in outs.values())
        assert sum(outs["probabilities"]["histogram"]) == 28 * 7 and len(row["parity"]["histogram_edges"]) == 12
    accs = {x["accuracy"] for x in rows}
    assert len(accs) == 1  # identical predictions -> identical accuracy on every backend


def test_bench_refuses_missing_artifacts_and_skips_them_with_reason_unverified(export_copy):
    (export_copy / "model.onnx").unlink()
    with pytest.raises(IntegrityError, match="model.onnx: listed in .* but missing; .*--no-verify"):
        run_bench(export_copy, parse_backends("pytorch,onnxruntime"), [1], warmup=0, iterations=1, progress=False)
    report = run_bench(export_copy, parse_backends("pytorch,torchscript,onnxruntime"), [1], warmup=0, iterations=1,
                       progress=False, verify=False)
    skipped = [r for r in report.rows if r.status == "skipped"]
    assert [r.backend for r in skipped] == ["onnxruntime"]
    assert "listed in manifest.json but missing" in skipped[0].reason


def test_parity_result_explains_failure():
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]])
    ref = {"logits": np.log(probs), "probabilities": probs, "confidence": np.ones((2, 1))}
    bad_probs = np.array([[0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    bad = {**ref, "logits": np.log(bad_probs), "probabilities": bad_probs}
    res = compare_outputs("x", ref, bad)
    assert not res and res.top1_agreement == 0.5
    assert "FAILED x" in res.explain() and "would pass only with atol >= 7.00e-01" in res.explain()
    assert compare_outputs("x", ref, ref)


def test_runner_checks_inputs_against_contract(tiny_export, tiny_run):
    from fuse_export.contract import Preprocessing

    pre = Preprocessing(image_size=40)
    with BACKENDS["onnxruntime"].factory(tiny_export / "model.onnx", tiny_run.best, pre, 1, False) as runner:
        with pytest.raises(InputError, match=r"shape \(1, 3, 32, 32\), expected \('N', 3, 40, 40\)"):
            runner.infer({"image": np.zeros((1, 3, 32, 32), np.float32)})
        with pytest.raises(InputError, match="dtype float64"):
            runner.infer({"image": np.zeros((1, 3, 40, 40))})
        with pytest.raises(InputError, match="expected exactly"):
            runner.infer({"input": np.zeros((1, 3, 40, 40), np.float32)})


def test_unknown_backend_and_bad_batch_sizes(tiny_export):
    with pytest.raises(UserError, match="unknown backend 'trt'"):
        parse_backends("pytorch,trt")
    r = CliRunner().invoke(app, ["bench", str(tiny_export), "--batch-sizes", "1,x"])
    assert r.exit_code == 2 and "expected comma-separated integers" in r.output
    r = CliRunner().invoke(app, ["bench", str(tiny_export.parent / "nowhere")])
    assert r.exit_code == 2 and "no manifest" in r.output


def test_help_is_instant_and_imports_no_heavy_modules():
    code = ("import sys, time; t=time.perf_counter(); from fuse_export.cli import app; "
            "heavy=[m for m in ('torch','onnx','onnxruntime','tensorrt') if m in sys.modules]; "
            "print(heavy, time.perf_counter()-t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "[]"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fuse_export", "--help"], capture_output=True, check=True)
    assert time.perf_counter() - t0 < 5.0


def test_bench_reference_reproduces_parity_without_the_checkpoint(export_copy, tiny_run, tmp_path):
    """Polygraphy-style: --save-results, move the checkpoint away, --reference gives the same parity figures."""
    ckpt = tmp_path / "ckpt" / "best.pt"
    ckpt.parent.mkdir()
    shutil.copy2(tiny_run.best, ckpt)
    mpath = export_copy / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["source_checkpoint"]["path"] = str(ckpt)  # the same bytes (same sha256), at a path we may move
    mpath.write_text(json.dumps(manifest))
    args = ["bench", str(export_copy), "--backends", "pytorch,torchscript,onnxruntime", "--batch-sizes", "1",
            "--iterations", "1", "--warmup", "0", "--min-time", "0", "--rounds", "1", "--no-progress"]
    saved, first, second = tmp_path / "results.npz", tmp_path / "a.json", tmp_path / "b.json"
    r = CliRunner().invoke(app, [*args, "--save-results", str(saved), "--json", str(first)])
    assert r.exit_code == 0, r.output
    ckpt.rename(tmp_path / "moved-away.pt")
    r = CliRunner().invoke(app, [*args, "--reference", str(saved), "--json", str(second)])
    assert r.exit_code == 0, r.output
    a, b = (json.loads(p.read_text()) for p in (first, second))
    parity = {x["backend"]: x["parity"] for x in a["rows"] if x["status"] == "ok"}
    again = {x["backend"]: x["parity"] for x in b["rows"] if x["status"] == "ok"}
    assert set(again) == {"torchscript", "onnxruntime"}  # eager cannot run: its outputs come from the file
    for key in again:
        for field in ("max_abs_prob", "max_abs_conf", "top1_agreement", "decided", "samples", "passed"):
            assert again[key][field] == parity[key][field], (key, field)
        for name, out in again[key]["outputs"].items():
            assert out["histogram"] == parity[key]["outputs"][name]["histogram"]
    (eager,) = [x for x in b["rows"] if x["backend"] == "pytorch"]
    assert eager["status"] == "skipped" and "saved reference" in eager["reason"]
    assert "saved in" in b["reference"] and a["inputs"] == b["inputs"]
    # The export's own reference.npz works the same way (and is found without --reference).
    r = CliRunner().invoke(app, [*args[:3], "onnxruntime", *args[4:], "--json", str(second)])
    assert r.exit_code == 0, r.output
    assert json.loads(second.read_text())["reference"].endswith("reference.npz")


def test_bench_without_pytorch_compares_against_the_exports_reference(tiny_export, tiny_csv, tmp_path):
    """Issue 24: `bench E --backends onnxruntime` was refused ("must include pytorch") although E holds its
    reference.npz; parity is now against that file, the checkpoint being there or not."""
    out = tmp_path / "b.json"
    args = ["bench", str(tiny_export), "--backends", "onnxruntime", "--batch-sizes", "1", "--iterations", "1",
            "--warmup", "0", "--min-time", "0", "--rounds", "1", "--no-progress"]
    r = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["reference"].endswith(str(tiny_export / "reference.npz")) and doc["passed"]
    assert [(x["backend"], x["status"]) for x in doc["rows"]] == [("onnxruntime", "ok")]
    assert doc["rows"][0]["parity"]["passed"]
    # --data names inputs that only the eager reference can answer: that still needs pytorch.
    r = CliRunner().invoke(app, [*args, "--data", str(tiny_csv)])
    assert r.exit_code == 2 and "--backends must include pytorch" in r.output


def test_bench_times_rows_interleaved_for_a_minimum_time_and_writes_csv_and_plot(tiny_export, tmp_path):
    out, csv_path, png = tmp_path / "b.json", tmp_path / "b.csv", tmp_path / "b.png"
    r = CliRunner().invoke(app, ["bench", str(tiny_export), "--backends", "pytorch,onnxruntime", "--batch-sizes",
                                 "1,2", "--iterations", "4", "--warmup", "1", "--min-time", "0.3", "--rounds", "2",
                                 "--json", str(out), "--csv", str(csv_path), "--plot", str(png), "--no-progress"])
    assert r.exit_code == 0, r.output
    rows = [x for x in json.loads(out.read_text())["rows"] if x["status"] == "ok"]
    assert len(rows) == 4
    for row in rows:
        lat = row["latency"]
        assert lat["rounds"] == 2 and lat["iterations"] >= 4 and lat["measured_s"] >= 0.3 - 1e-6
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("backend,title,status") and len(lines) == 1 + len(json.loads(out.read_text())["rows"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_interleaved_schedule_takes_turns_and_adapts_the_count():
    from fuse_export.compare.timing import Schedule, interleaved_adaptive

    order: list[str] = []

    class Sleeper:  # a real timed call (time.sleep), recording the turn order
        timed = "host"

        def __init__(self, key: str, seconds: float) -> None:
            self.key, self.seconds = key, seconds

        def run(self, n: int) -> None:
            for _ in range(n):
                time.sleep(self.seconds)

        def sample(self, n: int) -> list[float]:
            order.append(self.key)
            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                time.sleep(self.seconds)
                out.append(time.perf_counter() - t0)
            return out

    stats = interleaved_adaptive({"a": Sleeper("a", 0.001), "b": Sleeper("b", 0.01)},
                                 Schedule(warmup=0, min_iterations=2, min_time_s=0.06, rounds=3))
    turns = [k for i, k in enumerate(order) if i == 0 or k != order[i - 1]]
    assert turns == ["a", "b", "a", "b"]  # rounds alternate direction: a b | b a | a b
    assert stats["a"].iterations > stats["b"].iterations >= 3  # the cheap call is repeated more for the same time
    assert all(s.measured_s >= 0.06 and s.rounds == 3 for s in stats.values())


def test_bench_data_accepts_other_data_set_formats(tiny_export, tmp_path):
    from miniature_sets import write_fer_folders

    root = tmp_path / "fer-folders"
    write_fer_folders(root, train_per_class=4, test_per_class=2)
    out = tmp_path / "b.json"
    r = CliRunner().invoke(app, ["bench", str(tiny_export), "--backends", "pytorch,onnxruntime", "--batch-sizes", "1",
                                 "--iterations", "1", "--warmup", "0", "--min-time", "0", "--rounds", "1", "--data",
                                 str(root), "--data-format", "fer2013-folders", "--json", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert "test split, 14 images" in doc["inputs"]
    assert all(x["accuracy"] is not None for x in doc["rows"] if x["status"] == "ok")


def test_device_picks_the_backends_and_places_cuda_runners(tmp_path):
    from fuse_export.compare.bench import _default_backends, make_runner
    from fuse_export.contract import Preprocessing

    assert {b.device for b in _default_backends("cpu")} == {"cpu"}
    on_gpu = _default_backends("cuda:1")
    assert on_gpu[0].key == "pytorch" and {b.device for b in on_gpu[1:]} == {"cuda"}
    pre = Preprocessing(image_size=40)
    # Built, not activated (no GPU needed): the runner will activate on the GPU it was given.
    ckpt = tmp_path / "best.pt"  # read only on activation
    runner = make_runner(BACKENDS["pytorch-cuda"], None, ckpt, pre, None, False, "cuda:1")
    assert runner.device_name == "cuda:1"
    assert make_runner(BACKENDS["pytorch-cuda"], None, ckpt, pre, None, False).device_name == "cuda"
    cpu = make_runner(BACKENDS["pytorch"], None, ckpt, pre, None, False, "cuda:1")
    assert str(cpu.device) == "cpu"  # CPU runners ignore a CUDA device


def test_the_table_prints_install_hints_whole_in_a_column_of_their_own():
    """Rich markup would swallow `[openvino]` from pip install 'fuse-export[openvino]' (it did), and a long reason
    used to fill the Accuracy column."""
    from rich.console import Console

    from fuse_export.compare.bench import BenchReport, BenchRow
    from fuse_export.compare.report import bench_table

    hint = "openvino not installed (pip install 'fuse-export[openvino]')"
    report = BenchReport("E", "noise", 2, [BenchRow("openvino", "OpenVINO", None, "skipped", hint)])
    console = Console(width=400, record=True)
    console.print(bench_table(report))
    text = console.export_text()
    assert "pip install 'fuse-export[openvino]'" in text
    header = next(line for line in text.splitlines() if "Accuracy" in line)
    row = next(line for line in text.splitlines() if "OpenVINO" in line)
    assert row.index("pip install") > header.index("Note") - 1  # in the Note column, not under Accuracy


def test_version():
    from fuse_export import __version__
    from fuse_export.cli import run_app

    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_app(["--version"]) == 0
    assert out.getvalue().strip() == f"fuse-export {__version__}"
