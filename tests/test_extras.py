"""Issue 26: a missing optional extra is found before any work starts, and the one error line names the extra
(`pip install 'fuse-export[plot]'`). A package is made absent the way Python sees an uninstalled one:
`sys.modules[name] = None` makes `import name` raise ImportError. "No work" is checked on the real code path: the
function that would start the work (reading the checkpoint, running the bench, selecting the artifact) is wrapped
to record a call, and still runs if called."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fuse_export.cli import app
from fuse_export.extras import EXTRAS, MissingExtra, install_hint, require

ROOT = Path(__file__).parents[1]


def record_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[tuple]:
    """Wrap owner.name so that calls are recorded (and still made)."""
    calls: list[tuple] = []
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def one_error_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, r.output
    return lines[0]


def test_the_table_of_extras_matches_pyproject():
    from fuse_export.training.recipe import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, packages in EXTRAS.items():
        assert extra in extras, f"{extra}: not an extra of pyproject.toml"
        listed = {re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower() for req in extras[extra]}
        for _, dist in packages:
            assert dist in listed, f"{dist}: not in pyproject.toml's `{extra}` extra ({sorted(listed)})"
    assert install_hint("plot") == "pip install 'fuse-export[plot]'"


def test_require_sees_an_absent_package_and_names_the_extra(monkeypatch):
    require("plot", "--plot")  # the test environment has every extra but `serve` on some platforms
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError):
        import matplotlib  # noqa: F401  (the simulation is what an uninstalled package looks like)
    with pytest.raises(MissingExtra, match=r"^--plot needs matplotlib, .*: pip install 'fuse-export\[plot\]'$") as e:
        require("plot", "--plot")
    assert e.value.extra == "plot" and e.value.exit_code == 2


def test_bench_plot_without_matplotlib_fails_before_the_bench_runs(tiny_export, tmp_path, monkeypatch):
    """It failed after the whole bench (74 s), naming matplotlib, not the `plot` extra."""
    import fuse_export.compare.bench as bench_module

    runs = record_calls(monkeypatch, bench_module, "benchmark")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    json_out = tmp_path / "bench.json"
    r = CliRunner().invoke(app, ["bench", str(tiny_export), "--plot", str(tmp_path / "plot.png"), "--json",
                                 str(json_out), "--batch-sizes", "1", "--warmup", "0", "--iterations", "1",
                                 "--min-time", "0", "--rounds", "1", "--no-progress"])
    assert r.exit_code == 2, r.output
    line = one_error_line(r)
    assert "--plot needs matplotlib" in line and "pip install 'fuse-export[plot]'" in line, line
    assert runs == [] and not json_out.exists() and not (tmp_path / "plot.png").exists()


def test_simplify_without_onnxslim_fails_before_the_export_through_the_api(tiny_run, tmp_path, monkeypatch):
    """The docs' `ExportOptions(simplify=True)` failed only after TorchScript was exported and verified."""
    import fuse_export
    import fuse_export.app.export_verify as export_verify

    loads = record_calls(monkeypatch, export_verify, "load_model")
    monkeypatch.setitem(sys.modules, "onnxslim", None)
    out = tmp_path / "export"
    with pytest.raises(fuse_export.UserError, match=r"--simplify needs onnxslim.*fuse-export\[simplify\]"):
        fuse_export.export(tiny_run.best, "torchscript,onnx", out=out,
                           options=fuse_export.ExportOptions(simplify=True))
    assert loads == [] and list(tmp_path.iterdir()) == []  # the checkpoint was not even read


def test_format_openvino_without_openvino_fails_before_the_export(tiny_run, tmp_path, monkeypatch):
    import fuse_export.app.export_verify as export_verify

    loads = record_calls(monkeypatch, export_verify, "load_model")
    monkeypatch.setitem(sys.modules, "openvino", None)
    out = tmp_path / "export"
    r = CliRunner().invoke(app, ["export", str(tiny_run.best), "--format", "onnx,openvino", "--out", str(out)])
    assert r.exit_code == 2, r.output
    line = one_error_line(r)
    assert "--format openvino needs openvino" in line and "pip install 'fuse-export[openvino]'" in line, line
    assert loads == [] and not out.exists()


def test_detect_faces_without_opencv_fails_before_the_artifact_is_selected(tiny_export, tmp_path, monkeypatch):
    import fuse_export.inference.photos as photos

    selections = record_calls(monkeypatch, photos, "select_for")
    monkeypatch.setitem(sys.modules, "cv2", None)
    from PIL import Image

    Image.new("RGB", (64, 64), (90, 90, 90)).save(tmp_path / "a.png")
    r = CliRunner().invoke(app, ["predict", str(tiny_export), str(tmp_path / "a.png"), "--detect-faces"])
    assert r.exit_code == 2, r.output
    line = one_error_line(r)
    assert "--detect-faces needs opencv-python-headless" in line and "fuse-export[faces]" in line, line
    assert selections == []


def test_serve_without_pytriton_fails_before_the_export_is_read(tiny_export, monkeypatch):
    """The slim install could not `serve` (it needs the `serve` extra): one line naming it, nothing selected."""
    import fuse_export.inference.selection as selection

    selections = record_calls(monkeypatch, selection, "select")
    monkeypatch.setitem(sys.modules, "pytriton", None)
    r = CliRunner().invoke(app, ["serve", str(tiny_export)])
    assert r.exit_code == 2, r.output
    line = one_error_line(r)
    assert "`serve` needs nvidia-pytriton" in line and "pip install 'fuse-export[serve]'" in line, line
    assert selections == []
