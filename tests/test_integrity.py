"""Integrity of what fuse-export writes and reads: umask modes, one checkpoint per export folder, locked and
staged folder writes, stale temporaries of killed runs, atomic swaps, and readers that verify before use."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import shutil
from pathlib import Path

import pytest

from fuse_export.contract import Preprocessing
from fuse_export.errors import IntegrityError, UserError
from fuse_export.exporters.manifest import staged_export, write_manifest
from fuse_export.exporters.manifest_read import read_manifest, verify_artifact
from fuse_export.fileio import (atomic_open, process_umask, remove_stale_siblings, sha256_file, stage_dir,
                                swap_dir, write_json)
from fuse_export.deploy.triton_repo import build_triton_repo


@pytest.fixture()
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def test_files_and_folders_follow_the_umask(tmp_path, umask_027, export_copy):
    assert process_umask() == 0o027
    write_json(tmp_path / "a.json", {"x": 1})
    with atomic_open(tmp_path / "b.bin", "wb") as fh:
        fh.write(b"x")
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o640
    assert stage_dir(tmp_path / "t").stat().st_mode & 0o777 == 0o750
    repo = tmp_path / "repo"
    build_triton_repo(export_copy, repo)
    dirs = [repo, *(p for p in repo.rglob("*") if p.is_dir())]
    files = [p for p in repo.rglob("*") if p.is_file()]
    assert {p.stat().st_mode & 0o777 for p in dirs} == {0o750}
    assert {p.stat().st_mode & 0o777 for p in files} == {0o640}


def test_exported_files_are_0644_under_the_default_umask(tiny_export):
    if process_umask() != 0o022:
        pytest.skip(f"this process runs with umask {process_umask():03o}")
    modes = {p.name: p.stat().st_mode & 0o777 for p in tiny_export.iterdir()}
    assert set(modes.values()) == {0o644}, modes
    assert tiny_export.stat().st_mode & 0o777 == 0o755


def _add_artifact(args: tuple[str, str, str, int]) -> None:
    """One process's export: a file plus its manifest entry, through the staged, locked folder write."""
    out, ckpt, name, size = args
    pre = Preprocessing(image_size=32)
    with staged_export(Path(out), Path(ckpt)) as stage:
        (stage / name).write_bytes(os.urandom(size))
        entry = {"file": name, "format": "torchscript", "backend": "torchscript", "precision": "fp32",
                 "sha256": sha256_file(stage / name), "io": {"inputs": [], "outputs": []}}
        write_manifest(stage, Path(ckpt), pre, [entry], lock=False)


def test_concurrent_exports_into_one_folder_all_end_up_listed(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"checkpoint")
    out = tmp_path / "export"
    jobs = [(str(out), str(ckpt), f"part{i}.bin", 200_000) for i in range(6)]
    with mp.get_context("spawn").Pool(3) as pool:
        pool.map(_add_artifact, jobs)
    m = read_manifest(out)
    assert sorted(a["file"] for a in m["artifacts"]) == sorted(j[2] for j in jobs)
    assert sorted(p.name for p in out.iterdir()) == sorted([j[2] for j in jobs] + ["manifest.json"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_another_checkpoint_is_refused_unless_force_replaces_the_whole_folder(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    _add_artifact((str(tmp_path / "e"), str(a), "model.bin", 10))
    with pytest.raises(UserError, match="another checkpoint .* pass --force"):
        _add_artifact((str(tmp_path / "e"), str(b), "model.torchscript", 10))
    _add_artifact((str(tmp_path / "e"), str(a), "model.torchscript", 10))  # the same checkpoint adds up
    assert len(read_manifest(tmp_path / "e")["artifacts"]) == 2
    with staged_export(tmp_path / "e", b, force=True) as stage:
        (stage / "model.pt2").write_bytes(b"x")
        write_manifest(stage, b, Preprocessing(image_size=32), [], lock=False)
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["manifest.json", "model.pt2"]
    assert read_manifest(tmp_path / "e")["source_checkpoint"]["sha256"] == sha256_file(b)


def test_force_never_deletes_the_checkpoint_it_exports(tmp_path):
    out = tmp_path / "e"
    out.mkdir()
    (out / "best.pt").write_bytes(b"weights")
    with pytest.raises(UserError, match="an input of this export"):
        with staged_export(out, out / "best.pt", force=True):
            pass
    assert (out / "best.pt").read_bytes() == b"weights"


def test_force_replaces_only_folders_with_a_fuse_export_manifest(tmp_path):
    """export --force needs the folder's manifest.json to be one fuse-export wrote (its format field, or the
    fields of the schema before that field existed); another tool's manifest.json is refused, nothing deleted."""
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    site = tmp_path / "site"
    site.mkdir()
    (site / "manifest.json").write_text('{"name": "my app", "start_url": "/"}')
    (site / "index.html").write_text("<html></html>")
    with pytest.raises(UserError, match="not written by fuse-export"), staged_export(site, a, force=True):
        pass
    assert (site / "index.html").read_text() == "<html></html>" and len(list(site.iterdir())) == 2
    _add_artifact((str(tmp_path / "e"), str(a), "model.bin", 10))
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert manifest["format"] == "fuse-export-manifest"
    del manifest["format"]  # as versions before the field wrote it: still recognised
    (tmp_path / "e" / "manifest.json").write_text(json.dumps(manifest))
    with staged_export(tmp_path / "e", b, force=True) as stage:
        write_manifest(stage, b, Preprocessing(image_size=32), [], lock=False)
    assert read_manifest(tmp_path / "e")["source_checkpoint"]["sha256"] == sha256_file(b)


def test_stale_temporaries_of_killed_runs_are_removed(tmp_path, export_copy):
    parent = export_copy.parent
    stale = [parent / ".export.stage-abc123", parent / ".export.old-xyz789", parent / ".repo.abcd1234",
             parent / ".repo.old.abcd1234"]
    for p in stale:
        (p / "sub").mkdir(parents=True)
    (parent / ".repo.abcd1234" / "sub" / "config.pbtxt").write_text("")  # what an old version's kill left
    (parent / ".repo.old.abcd1234" / "repo").mkdir()
    mine = parent / ".repo.backup01"  # a user's folder with a similar name is not ours to delete
    (mine / "sub").mkdir(parents=True)
    (export_copy / ".model.onnx.k2j3h4.tmp").write_bytes(b"half")
    build_triton_repo(export_copy, parent / "repo")
    assert not (parent / ".repo.abcd1234").exists() and not (parent / ".repo.old.abcd1234").exists()
    with staged_export(export_copy, Path(read_manifest(export_copy)["source_checkpoint"]["path"])) as stage:
        assert not (stage / ".model.onnx.k2j3h4.tmp").exists()  # not carried into the new folder
    assert not any(p.exists() for p in stale)
    assert not (export_copy / ".model.onnx.k2j3h4.tmp").exists()
    assert (mine / "sub").is_dir()


def test_a_kill_between_the_fallback_renames_is_repaired(tmp_path):
    """Where RENAME_EXCHANGE is missing, the old folder waits at .NAME.old-*: the next run puts it back."""
    target = tmp_path / "repo"
    old = tmp_path / ".repo.old-q1w2e3"
    old.mkdir()
    (old / "config.pbtxt").write_text("old")
    remove_stale_siblings(target)
    assert (target / "config.pbtxt").read_text() == "old" and not old.exists()


def test_swap_replaces_a_folder_whole(tmp_path):
    target, new = tmp_path / "t", tmp_path / "n"
    target.mkdir()
    (target / "a").write_text("old")
    new.mkdir()
    (new / "b").write_text("new")
    swap_dir(new, target)
    assert sorted(p.name for p in target.iterdir()) == ["b"] and not new.exists()


def test_triton_repo_force_replaces_only_model_repositories(export_copy, tmp_path):
    run = tmp_path / "runs" / "train"
    run.mkdir(parents=True)
    (run / "best.pt").write_bytes(b"w")
    with pytest.raises(UserError, match="a model repository does not"):
        build_triton_repo(export_copy, tmp_path / "runs", force=True)
    assert (run / "best.pt").read_bytes() == b"w"
    with pytest.raises(UserError, match="inside the export folder"):
        build_triton_repo(export_copy, export_copy / "repo")


def test_verify_rejects_escapes_and_changed_bytes(export_copy, tmp_path):
    m = read_manifest(export_copy)
    art = dict(m["artifacts"][0])
    for bad in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(IntegrityError, match="leaves the folder"):
            verify_artifact(export_copy, {**art, "file": bad})
    (export_copy / art["file"]).write_bytes(b"changed")
    with pytest.raises(IntegrityError, match="--no-verify"):
        read_manifest(export_copy)
    read_manifest(export_copy, verify=False)  # the escape hatch: paths still checked, bytes not
    m["artifacts"][0]["file"] = "../../etc/passwd"
    (export_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IntegrityError, match="leaves the folder"):
        read_manifest(export_copy, verify=False)


def test_a_listed_file_that_is_gone_fails_verification_and_is_skipped_without_it(export_copy, tmp_path):
    """Issue 24: a manifest entry whose file is missing was only skipped (triton-repo, bench: exit 0)."""
    (export_copy / "model.torchscript").unlink()
    with pytest.raises(IntegrityError, match=r"model\.torchscript: listed in .*manifest\.json but missing; .*verify"):
        read_manifest(export_copy)
    assert len(read_manifest(export_copy, verify=False)["artifacts"]) == 2  # the escape hatch: listed, not checked
    with pytest.raises(IntegrityError, match="listed in .* but missing"):
        build_triton_repo(export_copy, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_class_names_come_from_a_place_a_hash_covers(export_copy):
    """Embedded metadata wins over manifest.json's text; a format that embeds none (TensorRT) takes the manifest's
    preprocessing only when it matches the entry's preprocessing_sha256."""
    from fuse_export.exporters.embedded import trusted_preprocessing
    from fuse_export.exporters.manifest import preprocessing_sha256

    m = read_manifest(export_copy)
    pre = Preprocessing.from_dict(m["preprocessing"])
    onnx = next(a for a in m["artifacts"] if a["file"] == "model.onnx")
    assert all(a["preprocessing_sha256"] == preprocessing_sha256(pre) for a in m["artifacts"])  # written by export
    reversed_ = json.loads(json.dumps(m))
    reversed_["class_names"] = reversed_["preprocessing"]["class_names"] = m["class_names"][::-1]
    assert trusted_preprocessing(export_copy, onnx, reversed_) == pre  # the ONNX file's own metadata
    engine = {**onnx, "format": "tensorrt"}  # no metadata inside: the manifest's field, checked by its digest
    assert trusted_preprocessing(export_copy, engine, m) == pre
    with pytest.raises(IntegrityError, match="field 'preprocessing'.*preprocessing_sha256.*--no-verify"):
        trusted_preprocessing(export_copy, engine, reversed_)
    unchecked = trusted_preprocessing(export_copy, engine, reversed_, verify=False)
    assert unchecked.class_names == tuple(m["class_names"][::-1])


def test_csv_with_a_byte_order_mark_loads(tiny_csv, tmp_path):
    from fuse_export.data.fer2013 import load_fer2013_csv

    bom = tmp_path / "excel.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + tiny_csv.read_bytes())
    a, b = load_fer2013_csv(tiny_csv), load_fer2013_csv(bom)
    assert (a.splits["train"].labels == b.splits["train"].labels).all()


def test_refused_loads_never_advise_weights_only_false(tmp_path):
    from fuse_export.errors import CheckpointError
    from fuse_export.model.weights import read_state_dict
    from fuse_export.training.checkpoint import read_checkpoint

    # Seeded bytes, not os.urandom: what the unpickler raises varies with the bytes (about 1 draw in 8 is an
    # IndexError rather than an UnpicklingError), so each branch gets bytes known to reach it.
    (tmp_path / "rand.pt").write_bytes(random.Random(0).randbytes(4096))  # an UnpicklingError
    (tmp_path / "rand2.pt").write_bytes(random.Random(2).randbytes(4096))  # an IndexError inside the unpickler
    (tmp_path / "empty.pt").write_bytes(b"")
    for f, why in (("rand.pt", "corrupt pickle data"), ("rand2.pt", "corrupt, or not a PyTorch file"),
                   ("empty.pt", "truncated")):
        for reader in (read_checkpoint, read_state_dict):
            with pytest.raises(CheckpointError, match=why) as info:
                reader(tmp_path / f)
            assert "weights_only" not in str(info.value) and "objects other than tensors" not in str(info.value)


def test_export_refuses_another_checkpoint_then_force_replaces(tiny_run, tmp_path, export_copy):
    """Through the real exporter: a re-export of another checkpoint is refused, --force swaps the folder."""
    import torch

    from fuse_export.exporters.formats import FORMATS
    from fuse_export.app.export_verify import export_checkpoint

    state = torch.load(tiny_run.best, weights_only=True)
    key = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][key] = state["model"][key] * 1.001
    other = tmp_path / "other.pt"
    torch.save(state, other)
    before = {p.name: sha256_file(p) for p in export_copy.iterdir()}
    with pytest.raises(UserError, match="another checkpoint"):
        export_checkpoint(other, [FORMATS["onnx"]], export_copy)
    assert {p.name: sha256_file(p) for p in export_copy.iterdir()} == before
    export_checkpoint(other, [FORMATS["onnx"]], export_copy, force=True)
    m = read_manifest(export_copy)
    assert [a["file"] for a in m["artifacts"]] == ["model.onnx"]
    assert m["source_checkpoint"]["sha256"] == sha256_file(other)
    assert not (export_copy / "model.torchscript").exists()  # the old checkpoint's artifact went with the folder
    shutil.rmtree(export_copy)


def test_a_second_training_into_a_busy_run_folder_is_refused(tmp_path):
    from fuse_export.fileio import try_lock
    from fuse_export.training.checkpoint import run_folder

    (tmp_path / ".last.pt.abc.tmp").write_bytes(b"being written by the first run")
    fd = try_lock(tmp_path)  # the first run holds the folder
    try:
        with pytest.raises(UserError, match="another training is writing"):
            with run_folder(tmp_path, resume=False):
                pass
        assert (tmp_path / ".last.pt.abc.tmp").exists()  # its temporary file is not touched
    finally:
        os.close(fd)
    with run_folder(tmp_path, resume=False):  # once it is done, stale temporaries go
        assert not (tmp_path / ".last.pt.abc.tmp").exists()
