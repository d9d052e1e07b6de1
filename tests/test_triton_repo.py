"""`triton-repo`: every generated config.pbtxt parses with Triton's ModelConfig schema and matches the manifest."""

import json

import pytest
from typer.testing import CliRunner

from fuse_export.cli import app
from fuse_export.contract import Preprocessing
from fuse_export.errors import IntegrityError, UserError
from fuse_export.exporters.manifest import artifact_entry
from fuse_export.fileio import sha256_file
from fuse_export.deploy.triton_config import PLATFORMS, config_text, preferred_batch_sizes
from fuse_export.deploy.triton_repo import build_triton_repo

mc = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] (the test extra) "
                         "provides Triton's ModelConfig schema")
text_format = pytest.importorskip("google.protobuf.text_format")

TYPES = {"float32": "TYPE_FP32", "uint8": "TYPE_UINT8", "float16": "TYPE_FP16"}


def parse(path) -> "mc.ModelConfig":
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def check_config(cfg, artifact: dict, name: str, max_batch: int, instances: int) -> None:
    """Every field of the config against the artifact's manifest entry."""
    p = PLATFORMS[artifact["format"]]
    assert cfg.name == name and cfg.platform == p.platform and cfg.default_model_filename == p.model_file
    assert cfg.max_batch_size == max_batch and not cfg.backend
    for config_tensors, contract_tensors, outputs in ((cfg.input, artifact["io"]["inputs"], False),
                                                      (cfg.output, artifact["io"]["outputs"], True)):
        assert len(config_tensors) == len(contract_tensors)
        for i, (c, t) in enumerate(zip(config_tensors, contract_tensors)):
            assert c.name == (f"{t['name']}__{i}" if p.indexed_names else t["name"])
            assert mc.DataType.Name(c.data_type) == TYPES[t["dtype"]]
            assert t["shape"][0] == "batch" and list(c.dims) == t["shape"][1:]  # Triton adds the batch axis
            if outputs:
                assert c.label_filename == ("labels.txt" if t["name"] in ("logits", "probabilities") else "")
    assert list(cfg.dynamic_batching.preferred_batch_size) == preferred_batch_sizes(max_batch)
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
    (group,) = cfg.instance_group
    assert group.count == instances and mc.ModelInstanceGroup.Kind.Name(group.kind) == p.kind


def test_cli_writes_a_repository_that_matches_the_manifest(export_copy, tmp_path):
    repo = tmp_path / "repo"
    r = CliRunner().invoke(app, ["triton-repo", str(export_copy), "--out", str(repo), "--max-batch-size", "16",
                                 "--instances", "2"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((export_copy / "manifest.json").read_text())
    models = {"fer_onnx": "onnx", "fer_torchscript": "torchscript"}
    assert sorted(p.name for p in repo.iterdir()) == sorted(models)
    for name, fmt in models.items():
        (artifact,) = [a for a in manifest["artifacts"] if a["format"] == fmt]
        check_config(parse(repo / name / "config.pbtxt"), artifact, name, 16, 2)
        model_file = repo / name / "1" / PLATFORMS[fmt].model_file
        assert sha256_file(model_file) == artifact["sha256"]  # the verified file, byte for byte
        assert (repo / name / "labels.txt").read_text().splitlines() == manifest["class_names"]
        assert sorted(p.name for p in (repo / name).iterdir()) == ["1", "config.pbtxt", "labels.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_uint8_fp16_and_tensorrt_entries_derive_their_configs(tmp_path):
    """Entries as the other exporters write them (artifact_entry); the files only need to exist for the hash."""
    pre = Preprocessing(image_size=48)
    (tmp_path / "model.uint8.onnx").write_bytes(b"x")
    (tmp_path / "model.plan").write_bytes(b"y")
    uint8 = artifact_entry(tmp_path, "model.uint8.onnx", "onnx", "onnxruntime", pre, precision="fp16",
                           embed_preprocessing=True)
    plan = artifact_entry(tmp_path, "model.plan", "tensorrt", "tensorrt", pre)
    for entry, name in ((uint8, "fer_onnx_fp16_uint8"), (plan, "fer_tensorrt")):
        cfg = text_format.Parse(config_text(name, entry, 8, 3), mc.ModelConfig())
        check_config(cfg, entry, name, 8, 3)
    cfg = text_format.Parse(config_text("u", uint8, 8, 1), mc.ModelConfig())
    assert list(cfg.input[0].dims) == [48, 48, 3] and mc.DataType.Name(cfg.input[0].data_type) == "TYPE_UINT8"


def test_unservable_artifacts_are_skipped_with_reasons_and_nothing_left_on_failure(export_copy, tmp_path):
    onnx = (export_copy / "model.onnx").read_bytes()
    (export_copy / "model.onnx").write_bytes(b"changed")  # no longer the verified file: refused, not skipped
    with pytest.raises(IntegrityError, match="differs from its sha256"):
        build_triton_repo(export_copy, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()
    (export_copy / "model.onnx").write_bytes(onnx)
    (export_copy / "model.torchscript").unlink()  # listed but missing: refused; --no-verify skips it with the reason
    with pytest.raises(IntegrityError, match="listed in .* but missing"):
        build_triton_repo(export_copy, tmp_path / "repo")
    result = build_triton_repo(export_copy, tmp_path / "repo", verify=False)
    assert [m.name for m in result.models] == ["fer_onnx"]
    assert result.skipped == [("model.torchscript", f"{export_copy / 'model.torchscript'} is listed in "
                                                    "manifest.json but missing; re-export it")]
    (export_copy / "model.onnx").unlink()
    with pytest.raises(UserError, match="nothing Triton can serve"):
        build_triton_repo(export_copy, tmp_path / "repo2", verify=False)
    assert not (tmp_path / "repo2").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_existing_output_needs_force_and_is_replaced_whole(export_copy, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "stale_model").mkdir()
    r = CliRunner().invoke(app, ["triton-repo", str(export_copy), "--out", str(repo)])
    assert r.exit_code == 2 and "pass --force" in r.output
    r = CliRunner().invoke(app, ["triton-repo", str(export_copy), "--out", str(repo), "--force"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in repo.iterdir()) == ["fer_onnx", "fer_torchscript"]
    assert parse(repo / "fer_onnx" / "config.pbtxt").max_batch_size == 32  # the default
    r = CliRunner().invoke(app, ["triton-repo", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "no manifest" in r.output


def test_force_replaces_a_repository_it_wrote_and_nothing_it_did_not(export_copy, tmp_path):
    """--force replaces an earlier repository whole (recognised by the mark in every config.pbtxt it writes); a
    file the user put into it, or a folder that merely lacks a manifest and a checkpoint, is refused, byte for byte
    untouched."""
    repo = tmp_path / "repo"
    build_triton_repo(export_copy, repo, max_batch_size=8)
    build_triton_repo(export_copy, repo, max_batch_size=16, force=True)
    assert sorted(p.name for p in repo.iterdir()) == ["fer_onnx", "fer_torchscript"]
    assert parse(repo / "fer_onnx" / "config.pbtxt").max_batch_size == 16
    (repo / "fer_onnx" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="notes.txt, which a model repository does not"):
        build_triton_repo(export_copy, repo, force=True)
    assert (repo / "fer_onnx" / "notes.txt").read_text() == "mine"
    shots = tmp_path / "shots"  # no manifest.json, no .pt: the old guard let --force delete it
    (shots / "2024").mkdir(parents=True)
    (shots / "2024" / "face.png").write_bytes(b"\x89PNG")
    r = CliRunner().invoke(app, ["triton-repo", str(export_copy), "--out", str(shots), "--force"])
    assert r.exit_code == 2 and "which a model repository does not" in r.output, r.output
    assert (shots / "2024" / "face.png").read_bytes() == b"\x89PNG"


def test_two_runs_into_one_new_folder_do_not_both_write_it(export_copy, tmp_path, monkeypatch):
    """Issue 24: two concurrent runs into one new --out both exited 0, the second replacing the first without
    --force. OUT is checked under the folder lock, so the second sees the first's repository and is refused."""
    import contextlib
    import threading

    from fuse_export.deploy import triton_repo

    real_lock, arrived = triton_repo.folder_lock, threading.Semaphore(0)

    @contextlib.contextmanager
    def lock(folder):
        arrived.release()  # this run is at the lock (the old code had checked OUT already: still empty)
        with real_lock(folder):
            yield

    monkeypatch.setattr(triton_repo, "folder_lock", lock)
    repo, outcomes = tmp_path / "repo", []

    def run(batch: int) -> None:
        try:
            build_triton_repo(export_copy, repo, max_batch_size=batch)
            outcomes.append(("written", batch))
        except UserError as exc:
            outcomes.append(("refused", str(exc)))

    threads = [threading.Thread(target=run, args=(b,)) for b in (8, 16)]
    with real_lock(tmp_path):  # both runs reach the lock before either may write
        for t in threads:
            t.start()
        assert all(arrived.acquire(timeout=120) for _ in threads)
    for t in threads:
        t.join(timeout=300)
    assert sorted(kind for kind, _ in outcomes) == ["refused", "written"], outcomes
    (batch,) = [b for kind, b in outcomes if kind == "written"]
    (why,) = [b for kind, b in outcomes if kind == "refused"]
    assert "already exists and is not empty; pass --force" in why
    assert parse(repo / "fer_onnx" / "config.pbtxt").max_batch_size == batch  # the first run's, not replaced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_preferred_batch_sizes():
    assert preferred_batch_sizes(1) == [1]
    assert preferred_batch_sizes(32) == [4, 8, 16, 32]
    assert preferred_batch_sizes(48) == [4, 8, 16, 32, 48]
