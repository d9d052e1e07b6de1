"""Hostile and careless inputs through the CLI, grouped by kind: every case ends in one line naming the file or
field and the fix, with exit 2 (1 when an artifact fails integrity or its output contract), no traceback, and
nothing half-written.

Each case builds its own hostile files (tampered artifacts, escaping manifests, pickles that would run code,
bad recipes, 16-bit and bomb PNGs) in a fresh folder, then runs `fuse-export` in-process through
`fuse_export.cli.run_app` (what the console script runs). Run as a script to print the "hostile inputs" table:

    python tests/test_hostile_inputs.py            # builds a tiny model (~40 s on 2 cores), prints the table
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "synthetic-quick.toml"


@dataclass
class World:
    """What the cases start from (never modified; cases copy what they tamper with)."""

    csv: Path
    run: Path  # a training run folder (best.pt, last.pt)
    export: Path  # torchscript + onnx export of run/best.pt
    other_ckpt: Path  # a second, different checkpoint


@dataclass
class Case:
    kind: str
    name: str
    argv: Callable[[World, Path], list[str]]  # (world, a fresh folder for this case) -> arguments
    code: int  # expected exit code
    match: str  # in the one-line message (or, for exit 0, in stdout)
    after: Callable[[World, Path], str | None] | None = None  # a post-condition: None when it holds


@dataclass
class Outcome:
    case: Case
    code: int | None
    out: str
    err: str
    error: BaseException | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """clean | traceback | silent (accepted a bad input) | wrong (another failure of the contract)."""
        if self.error is not None:
            return "traceback"
        if self.case.code != 0 and self.code == 0:
            return "silent"
        return "wrong" if self.problems else "clean"


def run_cli(argv: list[str]) -> tuple[int | None, str, str, BaseException | None]:
    """`fuse-export ARGV` in this process: exit code, stdout, stderr, and any exception that escaped."""
    from fuse_export.cli import run_app

    out, err = io.StringIO(), io.StringIO()
    code, exc = None, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = run_app([str(a) for a in argv])
        except SystemExit as e:  # not expected from run_app, but a case must not end the test run
            code = e.code if isinstance(e.code, int) else 1
        except BaseException as e:  # noqa: BLE001 - recorded as a traceback
            exc = e
    return code, out.getvalue(), err.getvalue(), exc


def run_case(case: Case, world: World, folder: Path) -> Outcome:
    folder.mkdir(parents=True, exist_ok=True)
    argv = case.argv(world, folder)
    code, out, err, exc = run_cli(argv)
    o = Outcome(case, code, out, err, exc)
    if exc is None:
        if code != case.code:
            o.problems.append(f"exit {code}, expected {case.code}")
        text = out if case.code == 0 else err
        if case.match not in text:
            o.problems.append(f"message lacks {case.match!r}")
        if case.code != 0:
            # Progress lines may come first (data loaded, format being exported); the error is one last line.
            lines = [ln for ln in err.splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith("error: ")]
            if len(errors) != 1 or lines[-1] != errors[0]:
                o.problems.append(f"stderr does not end in one 'error:' line: {err[-600:]!r}")
            if "weights_only=False" in err or "Traceback" in err:
                o.problems.append("message repeats unsafe advice or a traceback")
        (folder / "stderr.txt").write_text(err)
        if case.after is not None and (why := case.after(world, folder)):
            o.problems.append(why)
    return o


# ---------------------------------------------------------------------------------------------- fixtures


def copy_export(w: World, d: Path, name: str = "export") -> Path:
    dst = d / name
    shutil.copytree(w.export, dst)
    return dst


def edit_manifest(folder: Path, change: Callable[[dict], None]) -> None:
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


def rehash(folder: Path, file: str) -> None:
    """An attacker who also edits the manifest: the recorded hash matches the edited file."""
    from fuse_export.fileio import sha256_file

    def change(m: dict) -> None:
        for a in m["artifacts"]:
            if a["file"] == file:
                a["sha256"] = sha256_file(folder / file)
    edit_manifest(folder, change)


def flip_byte(path: Path, offset: int = -100) -> None:
    b = bytearray(path.read_bytes())
    b[offset] ^= 0xFF
    path.write_bytes(bytes(b))


def face_png(d: Path, value: int = 128, name: str = "face.png") -> Path:
    from PIL import Image

    p = d / name
    Image.new("L", (48, 48), value).save(p)
    return p


def evil_pickle(d: Path) -> Path:
    """A torch file whose unpickling would run `touch PWNED` (refused by weights_only=True)."""
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {d / 'PWNED'}",))

    p = d / "evil.pt"
    torch.save({"format": "fuse-export-checkpoint", "x": Evil()}, p)
    return p


def not_pwned(w: World, d: Path) -> str | None:
    return "the pickle payload ran" if (d / "PWNED").exists() else None


def recipe_with(d: Path, section: str, line: str) -> Path:
    """synthetic-quick with `key = value` set in [section] (replacing the key's line when the file has one)."""
    key = line.split("=", 1)[0].strip()
    out, current, done = [], None, False
    for ln in RECIPE.read_text().splitlines():
        if ln.strip().startswith("["):
            if current == section and not done:
                out.append(line)
                done = True
            current = ln.strip().strip("[]")
        elif current == section and ln.split("=", 1)[0].strip() == key:
            ln, done = line, True
        out.append(ln)
    if not done:
        out += ([line] if current == section else [f"[{section}]", line])
    p = d / "recipe.toml"
    p.write_text("\n".join(out) + "\n")
    return p


def train_argv(w: World, d: Path, *extra: str, recipe: Path | None = None) -> list[str]:
    return ["train", str(recipe or RECIPE), "--data", str(w.csv), "--out", str(d / "run"), "--epochs", "1",
            "--no-progress", *extra]


def nothing_at(path_fn: Callable[[World, Path], Path]) -> Callable[[World, Path], str | None]:
    def check(w: World, d: Path) -> str | None:
        p = path_fn(w, d)
        return f"{p} was written" if p.exists() else None
    return check


def no_stage_left(w: World, d: Path) -> str | None:
    left = [p.name for p in d.rglob(".*") if ".stage-" in p.name or p.name.endswith(".tmp")]
    return f"temporaries left: {left}" if left else None


def tamper_outside_link(w: World, d: Path) -> list[str]:
    e = copy_export(w, d)
    outside = d / "outside.onnx"
    shutil.copy(e / "model.onnx", outside)
    (e / "model.onnx").unlink()
    (e / "model.onnx").symlink_to(outside)
    return ["predict", str(e), str(face_png(d))]


def onnx_external_outside(w: World, d: Path) -> list[str]:
    """A small ONNX whose weight lives in ../secret.bin, listed with a matching hash (a consistent tamper)."""
    import onnx
    from onnx import TensorProto, helper

    e = copy_export(w, d)
    (d / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
    w_init = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        w_init.external_data.add(key=k, value=v)
    g = helper.make_graph([helper.make_node("Add", ["image", "w"], ["logits"])], "g",
                          [helper.make_tensor_value_info("image", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [4])], [w_init])
    onnx.save_model(helper.make_model(g), str(e / "model.onnx"))
    rehash(e, "model.onnx")
    return ["triton-repo", str(e), "--out", str(d / "repo")]


def edited_torchscript(w: World, d: Path) -> list[str]:
    """model.torchscript replaced by code returning confidence 118 (metadata kept, manifest hash updated)."""
    import torch

    from fuse_export.exporters.to_torchscript import METADATA_FILE

    e = copy_export(w, d)
    meta = {METADATA_FILE: ""}
    torch.jit.load(str(e / "model.torchscript"), _extra_files=meta)
    classes = len(json.loads(meta[METADATA_FILE])["class_names"])

    class Liar(torch.nn.Module):
        def forward(self, x: torch.Tensor):
            n = x.shape[0]
            logits = torch.zeros(n, classes) + x.mean()
            return logits, torch.softmax(logits, 1), torch.full((n, 1), 118.0)

    size = json.loads(meta[METADATA_FILE])["image_size"]
    traced = torch.jit.trace(Liar(), torch.zeros(2, 3, size, size))
    torch.jit.save(traced, str(e / "model.torchscript"), _extra_files=meta)
    rehash(e, "model.torchscript")
    return ["predict", str(e), str(face_png(d)), "--backend", "torchscript"]


def reversed_classes(*backend: str) -> Callable[[World, Path], list[str]]:
    """predict (with `--backend BACKEND`) on a copy of the export whose manifest lists the classes reversed."""
    def argv(w: World, d: Path) -> list[str]:
        e = copy_export(w, d)

        def change(m: dict) -> None:
            m["class_names"] = m["class_names"][::-1]
            m["preprocessing"]["class_names"] = m["preprocessing"]["class_names"][::-1]
        edit_manifest(e, change)
        return ["predict", str(e), str(face_png(d)), "--json", *(["--backend", *backend] if backend else [])]
    return argv


def embedded_classes_win(*backend: str) -> Callable[[World, Path], str | None]:
    """predict's JSON names the export's real classes (the artifact's or the checkpoint's), not the manifest's."""
    def check(w: World, d: Path) -> str | None:
        m = json.loads((w.export / "manifest.json").read_text())
        code, out, err, exc = run_cli(["predict", str(d / "export"), str(d / "face.png"), "--json",
                                       *(["--backend", *backend] if backend else [])])
        got = json.loads(out)["class_names"] if code == 0 else None
        return None if got == m["class_names"] else f"predict used class names {got}, not the artifact's"
    return check


def unlisted_tampered_copy(w: World, d: Path) -> list[str]:
    """Issue 24's fourth reproduction: a byte-flipped copy of model.onnx beside it, which the manifest does not list."""
    e = copy_export(w, d)
    shutil.copy(e / "model.onnx", e / "evil.onnx")
    flip_byte(e / "evil.onnx", (e / "evil.onnx").stat().st_size // 2)  # in the weights: the old code ran it silently
    return ["predict", str(e / "evil.onnx"), str(face_png(d))]


def swapped_checkpoint(command: str) -> Callable[[World, Path], list[str]]:
    """Issue 24's fifth reproduction: source_checkpoint.path pointed at another checkpoint (the sha256 left as is)."""
    def argv(w: World, d: Path) -> list[str]:
        e = copy_export(w, d)
        edit_manifest(e, lambda m: m["source_checkpoint"].update(path=str(w.other_ckpt)))
        if command == "predict":
            return ["predict", e, face_png(d), "--backend", "pytorch", "--json"]
        return ["bench", e, "--backends", "pytorch,onnxruntime", "--batch-sizes", "1", "--no-progress"]
    return argv


def listed_but_missing(command: str, file: str) -> Callable[[World, Path], list[str]]:
    """A copy of the export with one listed artifact deleted (was: skipped, exit 0)."""
    def argv(w: World, d: Path) -> list[str]:
        e = copy_export(w, d)
        (e / file).unlink()
        if command == "triton-repo":
            return ["triton-repo", e, "--out", d / "repo"]
        return ["bench", e, "--batch-sizes", "1", "--no-progress"]
    return argv


def sixteen_bit(w: World, d: Path) -> list[str]:
    from PIL import Image

    Image.fromarray(np.full((48, 48), 32768, np.uint16)).save(d / "grey16.png")
    Image.fromarray(np.full((48, 48), 65535, np.uint16)).save(d / "white16.png")
    return ["predict", str(w.export), str(d / "grey16.png"), str(d / "white16.png"), "--json"]


def grey_differs_from_white(w: World, d: Path) -> str | None:
    code, out, err, exc = run_cli(["predict", str(w.export), str(d / "grey16.png"), str(d / "white16.png"), "--json"])
    res = json.loads(out)["results"]
    a, b = (r["predictions"][0]["probabilities"] for r in res)
    return "mid-grey 16-bit gives white's probabilities" if a == b else None


def bomb_png(d: Path) -> Path:
    """A 20000x20000 1-bit PNG: a few kB on disk, 400 Mpx decoded (over Pillow's and our pixel limit)."""
    import struct
    import zlib

    width = height = 20000
    row = b"\x00" + b"\x00" * (width // 8)
    raw = zlib.compress(row * height, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    p = d / "bomb.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                  + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return p


def csv_variant(w: World, d: Path, header: str, bom: bool = False) -> Path:
    lines = w.csv.read_text().splitlines()
    body = lines[1:]
    if header.count("emotion") == 2:
        body = [f"{ln.split(',', 1)[0]},{ln}" for ln in body]
    p = d / "data.csv"
    p.write_text(("\ufeff" if bom else "") + header + "\n" + "\n".join(body) + "\n", encoding="utf-8")
    return p


def csv_rows(w: World, d: Path, keep: Callable[[int, str], bool], name: str = "data.csv") -> Path:
    """The world's CSV with only the body rows `keep(index, row)` accepts (header kept)."""
    lines = w.csv.read_text().splitlines()
    p = d / name
    p.write_text("\n".join([lines[0], *[ln for i, ln in enumerate(lines[1:]) if keep(i, ln)]]) + "\n")
    return p


def one_class_csv(w: World, d: Path) -> list[str]:
    """Issue 24: a CSV holding one class (angry) trained a 7-class model without a word."""
    data = csv_rows(w, d, lambda i, ln: ln.startswith("0,"))
    return ["train", RECIPE, "--data", data, "--out", d / "run", "--epochs", "1", "--no-progress"]


def warns_of_classes_without_samples(w: World, d: Path) -> str | None:
    lines = [ln for ln in (d / "stderr.txt").read_text().splitlines() if ln.startswith("warning: ")]
    want = "warning: no training samples of 6 of the 7 classes (disgust, fear, happy, sad, surprise, neutral) in "
    return None if len(lines) == 1 and lines[0].startswith(want) else f"no one-line warning naming the classes: {lines}"


def resume_on_other_data(w: World, d: Path) -> list[str]:
    """Issue 24: `train --resume` with another data set (here: the run's CSV less seven training rows)."""
    shutil.copytree(w.run, d / "run")
    training = [i for i, ln in enumerate(w.csv.read_text().splitlines()[1:]) if ln.endswith(",Training")]
    data = csv_rows(w, d, lambda i, ln: i not in training[:7], "other.csv")
    return ["train", RECIPE, "--data", data, "--out", d / "run", "--epochs", "3", "--resume", "--no-progress"]


def repo_of_reversed_classes(w: World, d: Path) -> list[str]:
    """triton-repo of a copy of the export whose manifest lists the classes reversed (the files are untouched)."""
    reversed_classes()(w, d)
    return ["triton-repo", d / "export", "--out", d / "repo"]


def labels_from_artifacts(w: World, d: Path) -> str | None:
    """Every labels.txt holds the export's real classes (embedded in the verified files), not the manifest's list."""
    want = json.loads((w.export / "manifest.json").read_text())["class_names"]
    got = {p.parent.name: p.read_text().splitlines() for p in sorted((d / "repo").glob("*/labels.txt"))}
    wrong = {k: v for k, v in got.items() if v != want}
    return None if got and not wrong else f"labels.txt not the artifact's classes {want}: {wrong or got}"


def fifo(d: Path) -> Path:
    """A named pipe: a path that exists and is no regular file (as /dev/full is), safe to hand to old code."""
    os.mkfifo(d / "pipe")
    return d / "pipe"


def not_replaced(name: str) -> Callable[[World, Path], str | None]:
    def check(w: World, d: Path) -> str | None:
        import stat

        return None if stat.S_ISFIFO(os.lstat(d / name).st_mode) else f"{name} was replaced by a file"
    return check


def resume_from(w: World, d: Path, best_as_last: bool, recipe: Path | None = None) -> list[str]:
    run = d / "run"
    shutil.copytree(w.run, run)
    if best_as_last:
        shutil.copy(run / "best.pt", run / "last.pt")
    return train_argv(w, d, "--resume", recipe=recipe)


def checkpoint_missing_key(w: World, d: Path) -> list[str]:
    import torch

    state = torch.load(w.run / "best.pt", weights_only=True)
    key = sorted(state["model"])[-1]
    del state["model"][key]
    torch.save(state, d / "cut.pt")
    (d / "key").write_text(key)
    return ["export", str(d / "cut.pt"), "--out", str(d / "out")]


def names_the_key(w: World, d: Path) -> str | None:
    key = (d / "key").read_text()
    return None if key in (d / "stderr.txt").read_text() else f"the message does not name the missing key {key}"


def run_unchanged(w: World, d: Path) -> str | None:
    from fuse_export.fileio import sha256_file

    for name in ("best.pt", "last.pt"):
        if sha256_file(d / "run" / name) != sha256_file(w.run / name):
            return f"{name} was overwritten"
    return None


def bad_manifest(change: Callable[[dict], None]) -> Callable[[World, Path], list[str]]:
    def argv(w: World, d: Path) -> list[str]:
        e = copy_export(w, d)
        edit_manifest(e, change)
        return ["predict", str(e), str(face_png(d))]
    return argv


def broken_onnx(kind: str) -> Callable[[World, Path], list[str]]:
    def argv(w: World, d: Path) -> list[str]:
        e = copy_export(w, d)
        p = e / "model.onnx"
        if kind == "truncated":
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
        elif kind == "random":
            p.write_bytes(os.urandom(4096))
        else:
            p.unlink()
            p.mkdir()
        return ["predict", str(e), str(face_png(d)), "--backend", "onnxruntime", "--no-verify"]
    return argv


def record_files(folder: Path) -> Path:
    """Every file under `folder` with its sha256, recorded beside it for `survives` to compare after the run."""
    from fuse_export.fileio import sha256_file

    record = folder.with_name(f"{folder.name}.files.json")
    record.write_text(json.dumps({str(f.relative_to(folder)): sha256_file(f)
                                  for f in sorted(folder.rglob("*")) if f.is_file()}))
    return folder


def survives(name: str) -> Callable[[World, Path], str | None]:
    """The post-condition of a data-loss case: every file recorded under d/NAME is still there, byte for byte."""
    def check(w: World, d: Path) -> str | None:
        from fuse_export.fileio import sha256_file

        folder = d / name
        before = json.loads(folder.with_name(f"{name}.files.json").read_text())
        lost = [f for f, sha in before.items() if not (folder / f).is_file() or sha256_file(folder / f) != sha]
        return f"lost or changed under {name}/: {lost}" if lost else None
    return check


def data_set_folder(w: World, d: Path) -> Path:
    """Issue 24's first reproduction: a data set folder (a FER-2013 CSV, a folder of photos)."""
    (d / "d" / "photos").mkdir(parents=True)
    shutil.copy(w.csv, d / "d" / "fer2013.csv")
    face_png(d / "d" / "photos")
    return record_files(d / "d")


def deep_training_run(w: World, d: Path) -> Path:
    """Issue 24's second reproduction: a training run three levels down (the old guard looked two deep)."""
    (d / "p" / "runs" / "exp1" / "train").mkdir(parents=True)
    shutil.copy(w.run / "last.pt", d / "p" / "runs" / "exp1" / "train" / "last.pt")
    return record_files(d / "p")


def repo_with_a_users_model(w: World, d: Path) -> Path:
    """A repository triton-repo wrote, to which the user then added a model of their own."""
    code, _, err, exc = run_cli(["triton-repo", w.export, "--out", d / "repo"])
    assert code == 0 and exc is None, err
    (d / "repo" / "my_model" / "1").mkdir(parents=True)
    (d / "repo" / "my_model" / "config.pbtxt").write_text('name: "my_model"\nbackend: "python"\n')
    (d / "repo" / "my_model" / "1" / "model.py").write_text("# mine\n")
    return record_files(d / "repo")


def web_app_folder(w: World, d: Path) -> Path:
    """A folder whose manifest.json another tool wrote (a web app's)."""
    (d / "site").mkdir()
    (d / "site" / "manifest.json").write_text('{"name": "my app", "start_url": "/"}')
    (d / "site" / "index.html").write_text("<html></html>\n")
    return record_files(d / "site")


def lone_onnx_with_image_size(w: World, d: Path, size: int) -> Path:
    """model.onnx copied away from its folder, its embedded preprocessing.image_size edited."""
    import onnx

    model = onnx.load(str(w.export / "model.onnx"))
    for prop in model.metadata_props:
        if prop.key == "preprocessing":
            pre = json.loads(prop.value)
            pre["image_size"] = size
            prop.value = json.dumps(pre)
    onnx.save(model, str(d / "lone.onnx"))
    return d / "lone.onnx"


def set_image_size(size: int) -> Callable[[dict], None]:
    def change(m: dict) -> None:
        m["preprocessing"]["image_size"] = size
    return change


def with_flag(command: str, option: str, value: str) -> Callable[[World, Path], list[str]]:
    """`export` (into d/o) or `bench` of the tiny model with one option set."""
    def argv(w: World, d: Path) -> list[str]:
        base = {"export": ["export", w.run / "best.pt", "--out", d / "o", "-f", "onnx"],
                "bench": ["bench", w.export, "--batch-sizes", "1", "--no-progress"]}[command]
        return [*base, option, value]
    return argv


def set_art(key: str, value) -> Callable[[dict], None]:
    def change(m: dict) -> None:
        m["artifacts"][0][key] = value
    return change


S = "security"
L = "data loss"
W = "silent wrong output"
V = "values"
O = "output paths"
A = "broken artifacts"

CASES: list[Case] = [
    # integrity and security
    Case(S, "predict: one byte flipped in model.onnx",
         lambda w, d: (flip_byte(copy_export(w, d) / "model.onnx"), ["predict", d / "export", face_png(d)])[1],
         1, "differs from its sha256"),
    Case(S, "predict --backend torchscript: byte flipped in model.torchscript",
         lambda w, d: (flip_byte(copy_export(w, d) / "model.torchscript", 200),
                       ["predict", d / "export", face_png(d), "--backend", "torchscript"])[1], 1, "--no-verify"),
    Case(S, "bench: edited model.onnx",
         lambda w, d: (flip_byte(copy_export(w, d) / "model.onnx"),
                       ["bench", d / "export", "--batch-sizes", "1", "--no-progress"])[1], 1, "differs from its sha256"),
    Case(S, "triton-repo: edited model.onnx",
         lambda w, d: (flip_byte(copy_export(w, d) / "model.onnx"),
                       ["triton-repo", d / "export", "--out", d / "repo"])[1], 1, "differs from its sha256",
         nothing_at(lambda w, d: d / "repo")),
    Case(S, "triton-repo: manifest file ../../../../../etc/passwd",
         lambda w, d: (edit_manifest(copy_export(w, d), set_art("file", "../../../../../etc/passwd")),
                       ["triton-repo", d / "export", "--out", d / "repo"])[1], 1, "leaves the folder",
         nothing_at(lambda w, d: d / "repo")),
    Case(S, "predict: manifest file is an absolute path",
         bad_manifest(set_art("file", "/etc/passwd")), 1, "leaves the folder"),
    Case(S, "predict: model.onnx is a symlink to a file outside the folder", tamper_outside_link, 1, "outside"),
    Case(S, "triton-repo: ONNX external data outside the folder (consistent hash)", onnx_external_outside, 1,
         "'../secret.bin' leaves the folder", nothing_at(lambda w, d: d / "repo")),
    Case(S, "predict: TorchScript forward() edited to return confidence 118", edited_torchscript, 1,
         "confidence outside"),
    Case(S, "export: checkpoint pickle that would run code",
         lambda w, d: ["export", evil_pickle(d), "--out", d / "out"], 2, "refused", not_pwned),
    Case(S, "train --pretrained: pickle that would run code",
         lambda w, d: train_argv(w, d, "--pretrained", str(evil_pickle(d))), 2, "refused", not_pwned),
    Case(S, "export: random bytes as checkpoint",
         lambda w, d: ((d / "r.pt").write_bytes(os.urandom(3000)), ["export", d / "r.pt", "--out", d / "o"])[1],
         2, "corrupt"),
    Case(S, "bench --checkpoint: pickle that would run code",
         lambda w, d: ["bench", w.export, "--checkpoint", evil_pickle(d), "--batch-sizes", "1", "--no-progress"],
         2, "refused", not_pwned),
    Case(S, "predict: a tampered copy of model.onnx its folder's manifest does not list (issue 24: ran, exit 0)",
         unlisted_tampered_copy, 1, "not listed in"),
    Case(S, "predict --backend pytorch: manifest's checkpoint path swapped to another checkpoint (issue 24: ran it)",
         swapped_checkpoint("predict"), 1, "differs from the source checkpoint's sha256"),
    Case(S, "bench: manifest's checkpoint path swapped to another checkpoint",
         swapped_checkpoint("bench"), 1, "differs from the source checkpoint's sha256"),
    # data loss and consistency
    Case(L, "triton-repo EXPORT --out PARENT_OF_EXPORT --force",
         lambda w, d: (copy_export(w, d), shutil.copytree(w.run, d / "run"),
                       ["triton-repo", d / "export", "--out", d, "--force"])[2], 2, "--force would delete it",
         lambda w, d: None if (d / "export" / "manifest.json").is_file() and (d / "run" / "best.pt").is_file()
         else "deleted the export or the run"),
    Case(L, "train --out EXISTING_RUN without --resume",
         lambda w, d: (shutil.copytree(w.run, d / "run"), train_argv(w, d))[1], 2, "pass --resume", run_unchanged),
    Case(L, "export another checkpoint into an export folder",
         lambda w, d: (copy_export(w, d), ["export", w.other_ckpt, "--out", d / "export"])[1], 2,
         "pass --force to replace", lambda w, d: None if json.loads((d / "export" / "manifest.json").read_text())
         == json.loads((w.export / "manifest.json").read_text()) else "manifest changed"),
    Case(L, "export --out a non-empty folder that is not an export",
         lambda w, d: ((d / "mine.txt").write_text("keep"), ["export", w.run / "best.pt", "--out", d])[1], 2,
         "not an export folder", lambda w, d: None if (d / "mine.txt").read_text() == "keep" else "lost mine.txt"),
    Case(L, "triton-repo --force into a data set folder (issue 24: deleted, exit 0)",
         lambda w, d: ["triton-repo", w.export, "--out", data_set_folder(w, d), "--force"], 2,
         "which a model repository does not", survives("d")),
    Case(L, "triton-repo --force into a folder with a training run three levels down",
         lambda w, d: ["triton-repo", w.export, "--out", deep_training_run(w, d), "--force"], 2,
         "which a model repository does not", survives("p")),
    Case(L, "triton-repo --force over a repository the user added a model to",
         lambda w, d: ["triton-repo", w.export, "--out", repo_with_a_users_model(w, d), "--force"], 2,
         "my_model", survives("repo")),
    Case(L, "export --force into a folder whose manifest.json another tool wrote",
         lambda w, d: ["export", w.run / "best.pt", "--out", web_app_folder(w, d), "--force", "-f", "onnx"], 2,
         "not written by fuse-export", survives("site")),
    Case(L, "export into a folder that holds only a .git folder",
         lambda w, d: ((d / "r" / ".git").mkdir(parents=True), (d / "r" / ".git" / "HEAD").write_text("ref\n"),
                       ["export", w.run / "best.pt", "--out", record_files(d / "r"), "-f", "onnx"])[-1], 2,
         "not an export folder", survives("r")),
    # silent wrong output
    Case(W, "predict: manifest class list reversed (the artifact's own list wins)", reversed_classes(), 0,
         '"class_names"', embedded_classes_win()),
    Case(W, "predict --backend pytorch: manifest class list reversed (the checkpoint's own list wins; issue 24: "
         "every label wrong)", reversed_classes("pytorch"), 0, '"class_names"', embedded_classes_win("pytorch")),
    Case(W, "predict: 16-bit PNGs (mid-grey vs white)", sixteen_bit, 0, '"results"', grey_differs_from_white),
    Case(W, "triton-repo: manifest class list reversed (labels.txt from the verified artifact)",
         repo_of_reversed_classes, 0, "repository:", labels_from_artifacts),
    Case(W, "train: a CSV holding one class (was: a 7-class model without a word)", one_class_csv, 0,
         "best checkpoint:", warns_of_classes_without_samples),
    Case(W, "export --opset 13", lambda w, d: ["export", w.run / "best.pt", "--out", d / "o", "--opset", "13",
                                               "-f", "onnx"], 2, "--opset 13", nothing_at(lambda w, d: d / "o")),
    Case(W, "export --opset 5", lambda w, d: ["export", w.run / "best.pt", "--out", d / "o", "--opset", "5",
                                              "-f", "onnx"], 2, "--opset 5"),
    Case(W, "export --opset 99", lambda w, d: ["export", w.run / "best.pt", "--out", d / "o", "--opset", "99",
                                               "-f", "onnx"], 2, "--opset 99"),
    Case(W, "recipe train.gamma = -2",
         lambda w, d: train_argv(w, d, recipe=recipe_with(d, "train", "gamma = -2.0")), 2, "train.gamma"),
    Case(W, "recipe stacking.max_iter = 0",
         lambda w, d: train_argv(w, d, recipe=recipe_with(d, "stacking", "max_iter = 0")), 2, "stacking.max_iter"),
    Case(W, "CSV with two emotion columns",
         lambda w, d: train_argv(w, d)[:2] + ["--data", csv_variant(w, d, "emotion,emotion,pixels,Usage"), "--out",
                                              d / "run", "--epochs", "1", "--no-progress"], 2, "appears 2 times"),
    # values
    *[Case(V, f"recipe {field_} = {value}", (lambda s, f_, v: lambda w, d: train_argv(
        w, d, recipe=recipe_with(d, s, f"{f_} = {v}")))(section, field_, value), 2, f"{section}.{field_}")
      for section, field_, value in (("train", "lr", "inf"), ("train", "lr", "1e30"), ("train", "lr", "nan"),
                                     ("train", "weight_decay", "-0.1"), ("train", "step_size", "0"),
                                     ("train", "momentum", "-0.5"), ("model", "dcnn_dropout", "1.5"),
                                     ("data", "image_size", "100000"), ("train", "seed", "-1"))],
    Case(V, "train --seed -1", lambda w, d: train_argv(w, d, "--seed", "-1"), 2, "train.seed"),
    Case(V, "train --limit 1", lambda w, d: train_argv(w, d, "--limit", "1"), 2, "data.limit"),
    Case(V, "train --epochs 0 (a range error is one line)", lambda w, d: train_argv(w, d)[:-3] + ["--epochs", "0"],
         2, "--epochs"),
    Case(V, "export --batch 0", lambda w, d: ["export", w.run / "best.pt", "--out", d / "o", "--batch", "0"], 2,
         "--batch"),
    Case(V, "bench --batch-sizes 100000", lambda w, d: ["bench", w.export, "--batch-sizes", "100000"], 2,
         "--batch-sizes"),
    Case(V, "triton-repo --max-batch-size 100000",
         lambda w, d: ["triton-repo", w.export, "--out", d / "r", "--max-batch-size", "100000"], 2,
         "--max-batch-size"),
    *[Case(V, f"predict: manifest preprocessing.image_size = {size}", bad_manifest(set_image_size(size)), 1,
           f"preprocessing.image_size is {size}; it must be in 32..1024") for size in (0, 16, 60000)],
    Case(V, "predict: a lone model.onnx with embedded preprocessing.image_size = 60000",
         lambda w, d: ["predict", lone_onnx_with_image_size(w, d, 60000), face_png(d)], 1,
         "preprocessing.image_size is 60000; it must be in 32..1024"),
    Case(V, "export --static-batch --batch 100000",
         lambda w, d: ["export", w.run / "best.pt", "--out", d / "o", "-f", "onnx", "--static-batch", "--batch",
                       "100000"], 2, "--batch 100000: must be 1..4096", nothing_at(lambda w, d: d / "o")),
    Case(V, "recipe model.dcnn_hidden = [65536, 65536]",
         lambda w, d: train_argv(w, d, recipe=recipe_with(d, "model", "dcnn_hidden = [65536, 65536]")), 2,
         "model.dcnn_hidden", nothing_at(lambda w, d: d / "run" / "last.pt")),
    Case(V, "recipe model.dcnn_hidden = [8192, 8192, 8192] (each width allowed, the head too big)",
         lambda w, d: train_argv(w, d, recipe=recipe_with(d, "model", "dcnn_hidden = [8192, 8192, 8192]")), 2,
         "model.dcnn_hidden"),
    Case(V, "predict --threads 100000", lambda w, d: ["predict", w.export, face_png(d), "--threads", "100000"], 2,
         "--threads 100000"),
    Case(V, "bench --threads 100000",
         lambda w, d: ["bench", w.export, "--threads", "100000", "--batch-sizes", "1", "--no-progress"], 2,
         "--threads 100000"),
    *[Case(V, f"{cmd} {opt} {value} (a check that cannot fail)", with_flag(cmd, opt, value), 2, f"{opt} ",
           nothing_at(lambda w, d: d / "o"))
      for cmd, opt, value in (("export", "--atol", "inf"), ("export", "--rtol", "1e308"), ("export", "--atol", "2"),
                              ("bench", "--atol", "inf"), ("bench", "--rtol", "1e308"))],
    Case(V, "export --device cuda:99 (a GPU this machine lacks)",
         lambda w, d: ["export", w.run / "best.pt", "--out", d / "o", "-f", "onnx", "--device", "cuda:99"], 2,
         "--device cuda:99", nothing_at(lambda w, d: d / "o")),
    Case(V, "bench --device cuda:99 (a GPU this machine lacks)",
         lambda w, d: ["bench", w.export, "--device", "cuda:99", "--batch-sizes", "1", "--no-progress"], 2,
         "--device cuda:99"),
    Case(V, "train --resume on a copy of best.pt", lambda w, d: resume_from(w, d, True), 2, "not a resumable"),
    Case(V, "train --resume with another data set (was: a traceback)", resume_on_other_data, 2,
         "trained on another data set", run_unchanged),
    Case(V, "train: a zero-byte recipe (was: every default trained for minutes without a word)",
         lambda w, d: ((d / "empty.toml").write_bytes(b""), train_argv(w, d, recipe=d / "empty.toml"))[1], 2,
         "empty recipe", nothing_at(lambda w, d: d / "run")),
    Case(V, "bench --min-time inf (was: a traceback)",
         lambda w, d: ["bench", w.export, "--batch-sizes", "1", "--no-progress", "--min-time", "inf"], 2,
         "--min-time inf: must be a finite number"),
    Case(V, "train --resume with another architecture",
         lambda w, d: resume_from(w, d, False, recipe_with(d, "model", "dcnn_hidden = [64]")), 2,
         "another architecture"),
    Case(V, "export: a checkpoint missing one state-dict key", checkpoint_missing_key, 2, "Missing key(s)",
         names_the_key),
    # output paths
    Case(O, "export --out an existing file",
         lambda w, d: ((d / "f").write_text("x"), ["export", w.run / "best.pt", "--out", d / "f"])[1], 2,
         "not a folder"),
    Case(O, "bench --json a folder",
         lambda w, d: ["bench", w.export, "--json", d, "--batch-sizes", "1", "--no-progress"], 2, "is a folder"),
    Case(O, "bench --json a named pipe (as /dev/full: was written over by a rename)",
         lambda w, d: ["bench", w.export, "--json", fifo(d), "--batch-sizes", "1", "--no-progress"], 2,
         "is not a regular file", not_replaced("pipe")),
    Case(O, "bench --reference an empty file (was: 'aborted', exit 130)",
         lambda w, d: ((d / "empty.npz").write_bytes(b""),
                       ["bench", w.export, "--reference", d / "empty.npz", "--batch-sizes", "1", "--no-progress"])[1],
         2, "empty.npz: empty file (0 bytes)"),
    Case(O, "export --out under a file", lambda w, d: ((d / "f").write_text("x"),
                                                       ["export", w.run / "best.pt", "--out", d / "f" / "sub"])[1],
         2, str("f")),
    Case(O, "export: a folder where model.onnx goes",
         lambda w, d: (copy_export(w, d), shutil.rmtree(d / "export"), (d / "export" / "model.onnx").mkdir(
             parents=True), (d / "export" / "manifest.json").write_text((w.export / "manifest.json").read_text()),
             ["export", w.run / "best.pt", "--out", d / "export", "-f", "onnx"])[-1], 2, "model.onnx",
         no_stage_left),
    Case(O, "export: a folder where manifest.json goes",
         lambda w, d: ((d / "e" / "manifest.json").mkdir(parents=True),
                       ["export", w.run / "best.pt", "--out", d / "e", "-f", "onnx"])[1], 2, "manifest.json",
         no_stage_left),
    # broken artifacts and manifests
    Case(A, "predict --no-verify: truncated model.onnx", broken_onnx("truncated"), 1, "cannot load it"),
    Case(A, "predict --no-verify: random bytes as model.onnx", broken_onnx("random"), 1, "cannot load it"),
    Case(A, "predict --no-verify: model.onnx is a folder", broken_onnx("folder"), 1, "model.onnx"),
    Case(A, "predict: manifest artifacts is not a list", bad_manifest(lambda m: m.update(artifacts={})), 1,
         "'artifacts'"),
    Case(A, "predict: manifest sha256 missing", bad_manifest(lambda m: m["artifacts"][0].pop("sha256")), 1,
         "sha256"),
    Case(A, "predict: manifest preprocessing malformed",
         bad_manifest(lambda m: m["preprocessing"].update(image_size="big")), 1, "'preprocessing'"),
    Case(A, "predict: manifest is not JSON",
         lambda w, d: ((copy_export(w, d) / "manifest.json").write_text("{"), ["predict", d / "export",
                                                                            face_png(d)])[1], 1, "not valid JSON"),
    Case(A, "predict: decompression-bomb PNG", lambda w, d: ["predict", w.export, bomb_png(d)], 2,
         "decompression bomb"),
    Case(A, "triton-repo: a listed artifact is missing (issue 24: skipped, exit 0)",
         listed_but_missing("triton-repo", "model.torchscript"), 1, "listed in", nothing_at(lambda w, d: d / "repo")),
    Case(A, "bench: a listed artifact is missing (was: skipped, exit 0)", listed_but_missing("bench", "model.onnx"), 1,
         "--no-verify"),
]


@pytest.fixture(scope="module")
def world(tiny_csv, tiny_run, tiny_export, tmp_path_factory) -> World:
    other = tmp_path_factory.mktemp("other") / "other.pt"
    _other_checkpoint(tiny_run.best, other)
    return World(tiny_csv, tiny_run.out_dir, tiny_export, other)


def _other_checkpoint(src: Path, dst: Path) -> None:
    """The same checkpoint with one weight nudged: another checkpoint (another sha256), same architecture."""
    import torch

    state = torch.load(src, weights_only=True)
    key = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][key] = state["model"][key] + 1e-3
    torch.save(state, dst)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.kind}: {c.name}" for c in CASES])
def test_hostile_input(case: Case, world: World, tmp_path: Path) -> None:
    o = run_case(case, world, tmp_path / "case")
    if o.error is not None:
        raise o.error
    assert not o.problems, f"{o.problems}\nstdout: {o.out[-2000:]}\nstderr: {o.err[-2000:]}"


def full_disk(monkeypatch: pytest.MonkeyPatch, under: Path) -> None:
    """A full disk under `under`: fsync of a file there fails with ENOSPC (where a full disk reports a write that
    the page cache took), and so does every TensorBoard event write (its writer thread's own file)."""
    import errno

    from tensorboard.summary.writer.record_writer import RecordWriter

    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(under)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    def write(self, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(RecordWriter, "write", write)


def names_a_file_in(name: str) -> Callable[[World, Path], str | None]:
    """The error line names the file under d/NAME that could not be written (not '?')."""
    def check(w: World, d: Path) -> str | None:
        last = (d / "stderr.txt").read_text().strip().splitlines()[-1]
        return None if last.startswith(f"error: {d / name}") else f"the error names no file under {name}: {last!r}"
    return check


FULL_DISK: list[Case] = [
    Case(O, "train --out on a full disk (was: the TensorBoard thread's traceback, then '?: No space left')",
         lambda w, d: train_argv(w, d, "--limit", "20"), 2, "No space left on device; free some space",
         names_a_file_in("run")),
    Case(O, "bench --json on a full disk (was: '?: No space left on device')",
         lambda w, d: ["bench", w.export, "--backends", "pytorch,onnxruntime", "--batch-sizes", "1", "--warmup", "0",
                       "--iterations", "1", "--min-time", "0", "--rounds", "1", "--no-progress", "--json",
                       d / "b.json"], 2, "b.json: No space left on device", nothing_at(lambda w, d: d / "b.json")),
]


@pytest.mark.parametrize("case", FULL_DISK, ids=[c.name for c in FULL_DISK])
def test_full_disk_is_one_line_naming_the_file(case: Case, world: World, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    full_disk(monkeypatch, tmp_path)
    o = run_case(case, world, tmp_path / "case")
    if o.error is not None:
        raise o.error
    assert not o.problems, f"{o.problems}\nstdout: {o.out[-2000:]}\nstderr: {o.err[-2000:]}"


def test_load_refuses_thread_counts_out_of_range(world: World) -> None:
    """`load(threads=...)` is bounded as `predict --threads` is: 0 and 100000 are one-line UserErrors."""
    import fuse_export as fx

    limit = (os.cpu_count() or 1) * 4  # fuse_export.cpuinfo.THREADS_PER_CPU per logical CPU
    for threads in (0, limit + 1, 100000):
        with pytest.raises(fx.UserError, match=f"threads {threads}: must be 1..{limit} "):
            fx.load(world.export, threads=threads)
    from PIL import Image

    with fx.load(world.export, threads=1) as model:
        assert len(model.predict([Image.new("RGB", (48, 48), (128, 128, 128))])) == 1


# ------------------------------------------------------------------------------- the RESULTS.md table


def build_world(root: Path) -> World:
    """A tiny model from scratch (for the script): 7x40 faces, 1 epoch at 40x40, TorchScript + ONNX."""
    from fuse_export.data.synthetic import SyntheticSpec
    from fuse_export.data.synthetic_csv import write_fer2013_csv
    from fuse_export.exporters.formats import FORMATS
    from fuse_export.training.recipe import load_recipe
    from fuse_export.training.trainer import run_training
    from fuse_export.app.export_verify import export_checkpoint

    csv = root / "fer2013.csv"
    write_fer2013_csv(csv, SyntheticSpec(samples_per_class=40, seed=3))
    recipe = load_recipe(RECIPE).replace(data={"image_size": 40}, train={"epochs": 1, "batch_size": 32})
    run = run_training(recipe, str(csv), root / "run", device="cpu", progress=False)
    export_checkpoint(run.best, [FORMATS["torchscript"], FORMATS["onnx"]], root / "export")
    _other_checkpoint(run.best, root / "other.pt")
    return World(csv, root / "run", root / "export", root / "other.pt")


def table(outcomes: list[Outcome]) -> str:
    kinds = list(dict.fromkeys(o.case.kind for o in outcomes))
    rows = ["| kind | cases tried | clean (one line, right exit code) | tracebacks | silent acceptances | "
            "other failures |", "|---|---:|---:|---:|---:|---:|"]
    for k in [*kinds, None]:
        sel = [o for o in outcomes if k is None or o.case.kind == k]
        count = {v: sum(o.verdict == v for o in sel) for v in ("clean", "traceback", "silent", "wrong")}
        name = "**all**" if k is None else k
        rows.append(f"| {name} | {len(sel)} | {count['clean']} | {count['traceback']} | {count['silent']} | "
                    f"{count['wrong']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    import tempfile
    import time

    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        w = build_world(Path(tmp) / "world")
        outcomes = []
        for i, c in enumerate(CASES):
            o = run_case(c, w, Path(tmp) / f"case{i}")
            outcomes.append(o)
            detail = "; ".join(o.problems) or (repr(o.error) if o.error else o.err.strip()[:160])
            print(f"[{o.verdict:>9}] {c.kind}: {c.name} -> exit {o.code}: {detail}", file=sys.stderr)
        print(table(outcomes))
        print(f"\n{len(outcomes)} cases in {time.time() - t0:.0f} s (tiny model built in the same run)")
