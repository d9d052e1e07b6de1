"""`--pretrained imagenet`: the cached file is checked against its full sha256, an absent one is downloaded through
torch.hub (progress bar, full sha256 check) from a server on 127.0.0.1; offline or unreachable is one line naming
where to put the file; a mirror file the project has no full hash for is refused unless the user gives it. Nothing
leaves the machine: FUSE_EXPORT_IMAGENET_URL points at the local server.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18
from typer.testing import CliRunner

from fuse_export.cli import app
from fuse_export.errors import CheckpointError
from fuse_export.model.backbone import ResNet18Trunk
from fuse_export.model.weights import load_backbone_weights
from fuse_export.model.weights_fetch import IMAGENET_SHA256_ENV, IMAGENET_URL_ENV, KNOWN_SHA256, OFFLINE_ENV


def _weights_bytes() -> tuple[bytes, dict[str, torch.Tensor]]:
    torch.manual_seed(11)
    sd = {k: (torch.randn(v.shape) if v.is_floating_point() else v) for k, v in resnet18(weights=None).state_dict().items()}
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue(), sd


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, Path, dict[str, torch.Tensor]]]:
    """An HTTP server on 127.0.0.1 serving a good file (named with its real sha256 prefix), the same bytes under a
    name without a hash, and a corrupt one."""
    root = tmp_path_factory.mktemp("www")
    data, sd = _weights_bytes()
    good = f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (root / good).write_bytes(data)
    (root / "resnet18.pth").write_bytes(data)
    # Same name pattern, content that does not hash to its prefix (a truncated transfer, a tampered mirror).
    (root / "resnet18-0badc0de.pth").write_bytes(data[: len(data) // 2])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root / good, sd
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # keep a real ~/.cache out of the test
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    monkeypatch.delenv(IMAGENET_SHA256_ENV, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_prefix_other_hash(digest: str) -> str:
    """A full sha256 that agrees with `digest` in the 8 hex digits a torch.hub name carries, and differs after."""
    return digest[:8] + ("0" if digest[8] != "0" else "1") + digest[9:]


def _assert_loaded(trunk: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    got = trunk.state_dict()
    for k, v in sd.items():
        if not k.startswith("fc.") and "num_batches" not in k:
            assert torch.equal(got[k], v), k


def test_absent_file_is_downloaded_hash_checked_and_then_used_from_the_cache(served, cache, monkeypatch, capsys):
    url, good, sd = served
    monkeypatch.setenv(IMAGENET_URL_ENV, f"{url}/{good.name}")
    monkeypatch.setenv(IMAGENET_SHA256_ENV, _sha256(good))  # a mirror file the project has no record of
    trunk = ResNet18Trunk()
    assert load_backbone_weights(trunk, "imagenet").complete
    _assert_loaded(trunk, sd)
    assert sorted(p.name for p in cache.iterdir()) == [good.name]  # only the finished file, no .partial
    assert (cache / good.name).read_bytes() == good.read_bytes()
    assert "downloading ImageNet ResNet-18 weights" in capsys.readouterr().err
    # Second use: from the cache, even offline and with the server unreachable.
    monkeypatch.setenv(OFFLINE_ENV, "1")
    monkeypatch.setenv(IMAGENET_URL_ENV, f"http://127.0.0.1:9/{good.name}")
    trunk2 = ResNet18Trunk()
    assert load_backbone_weights(trunk2, "imagenet").complete
    _assert_loaded(trunk2, sd)


def test_corrupt_download_is_refused_and_nothing_is_left_in_the_cache(served, cache, monkeypatch):
    url, _, _ = served
    monkeypatch.setenv(IMAGENET_URL_ENV, f"{url}/resnet18-0badc0de.pth")
    monkeypatch.setenv(IMAGENET_SHA256_ENV, "0badc0de" + "0" * 56)
    with pytest.raises(CheckpointError, match=r"failed its sha256 check .*nothing was kept"):
        load_backbone_weights(ResNet18Trunk(), "imagenet")
    assert not cache.exists() or list(cache.iterdir()) == []


def test_cached_file_that_does_not_match_its_name_is_refused(served, cache, monkeypatch):
    _, good, _ = served
    cache.mkdir(parents=True)
    (cache / good.name).write_bytes(good.read_bytes()[:-10])  # a truncated copy under the real name
    monkeypatch.setenv(IMAGENET_URL_ENV, f"http://127.0.0.1:9/{good.name}")
    monkeypatch.setenv(IMAGENET_SHA256_ENV, _sha256(good))
    with pytest.raises(CheckpointError, match=r"corrupt or replaced: its sha256 is [0-9a-f]{64}, expected"):
        load_backbone_weights(ResNet18Trunk(), "imagenet")


def test_offline_and_unreachable_name_the_folder_to_put_the_file_in(cache, monkeypatch):
    monkeypatch.setenv(IMAGENET_URL_ENV, "http://127.0.0.1:9/resnet18-f37072fd.pth")  # port 9: nothing listens
    with pytest.raises(CheckpointError) as err:
        load_backbone_weights(ResNet18Trunk(), "imagenet")
    assert "could not be downloaded" in str(err.value) and f"in {cache}" in str(err.value)
    monkeypatch.setenv(OFFLINE_ENV, "1")
    with pytest.raises(CheckpointError, match="offline") as err:
        load_backbone_weights(ResNet18Trunk(), "imagenet")
    assert f"put resnet18-f37072fd.pth (from http://127.0.0.1:9/resnet18-f37072fd.pth) in {cache}" in str(err.value)


def test_cli_offline_flag_is_one_line_and_exit_2(cache, tiny_csv, monkeypatch, tmp_path):
    monkeypatch.setenv(IMAGENET_URL_ENV, "http://127.0.0.1:9/resnet18-f37072fd.pth")
    res = CliRunner().invoke(app, ["train", "synthetic-quick", "--data", str(tiny_csv), "--out", str(tmp_path / "o"),
                                   "--pretrained", "imagenet", "--offline", "--device", "cpu", "--no-progress",
                                   "--epochs", "1"])
    assert res.exit_code == 2, res.output
    assert "offline" in res.output and str(cache) in res.output and "Traceback" not in res.output


def test_mirror_file_matching_only_the_prefix_in_its_name_is_refused(served, cache, monkeypatch):
    """The 8 hex digits of a torch.hub name are 32 bits: a replaced file can be made to match them. The full sha256
    decides, both for a download and for a file already in the cache, whether the project or the user knows it."""
    url, good, _ = served
    cached = cache / good.name
    monkeypatch.setenv(IMAGENET_URL_ENV, f"{url}/{good.name}")
    # The user's full hash agrees with the name's prefix, not with the file: the download is refused, nothing kept.
    monkeypatch.setenv(IMAGENET_SHA256_ENV, _same_prefix_other_hash(_sha256(good)))
    with pytest.raises(CheckpointError, match=r"failed its sha256 check .*nothing was kept"):
        load_backbone_weights(ResNet18Trunk(), "imagenet")
    assert not cache.exists() or list(cache.iterdir()) == []
    # The same file already in the cache under that name: refused too (the old check compared the name's prefix).
    cache.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(good.read_bytes())
    with pytest.raises(CheckpointError, match=r"corrupt or replaced: its sha256 is [0-9a-f]{64}, expected"):
        load_backbone_weights(ResNet18Trunk(), "imagenet")
    # A file the project itself records (as it does resnet18-f37072fd.pth): the record's full hash decides.
    monkeypatch.delenv(IMAGENET_SHA256_ENV)
    monkeypatch.setitem(KNOWN_SHA256, good.name, _same_prefix_other_hash(_sha256(good)))
    with pytest.raises(CheckpointError, match=r"corrupt or replaced: its sha256 is [0-9a-f]{64}, expected"):
        load_backbone_weights(ResNet18Trunk(), "imagenet")
    monkeypatch.setitem(KNOWN_SHA256, good.name, _sha256(good))
    assert load_backbone_weights(ResNet18Trunk(), "imagenet").complete


def test_mirror_without_a_known_hash_needs_the_users_sha256(served, cache, monkeypatch):
    url, good, sd = served
    monkeypatch.setenv(IMAGENET_URL_ENV, f"{url}/resnet18.pth")  # no hash in the name, none recorded
    with pytest.raises(CheckpointError, match=f"resnet18.pth, a file with no known sha256.*{IMAGENET_SHA256_ENV}"):
        load_backbone_weights(ResNet18Trunk(), "imagenet")
    assert not cache.exists()  # refused before anything was downloaded
    monkeypatch.setenv(IMAGENET_SHA256_ENV, "f37072fd")  # a prefix is not a hash
    with pytest.raises(CheckpointError, match="not a sha256"):
        load_backbone_weights(ResNet18Trunk(), "imagenet")
    monkeypatch.setenv(IMAGENET_SHA256_ENV, _sha256(good).upper())
    trunk = ResNet18Trunk()
    assert load_backbone_weights(trunk, "imagenet").complete
    _assert_loaded(trunk, sd)
    assert sorted(p.name for p in cache.iterdir()) == ["resnet18.pth"]
    # Known files keep their record: a user hash that contradicts it is refused rather than trusted.
    monkeypatch.setenv(IMAGENET_URL_ENV, "http://127.0.0.1:9/resnet18-f37072fd.pth")
    monkeypatch.setenv(IMAGENET_SHA256_ENV, _same_prefix_other_hash(KNOWN_SHA256["resnet18-f37072fd.pth"]))
    with pytest.raises(CheckpointError, match="is known to hash to f37072fd47e89c5e"):
        load_backbone_weights(ResNet18Trunk(), "imagenet")


def test_cli_refuses_a_mirror_without_a_known_hash_in_one_line(served, cache, tiny_csv, monkeypatch, tmp_path):
    url, _, _ = served
    monkeypatch.setenv(IMAGENET_URL_ENV, f"{url}/resnet18.pth")
    res = CliRunner().invoke(app, ["train", "synthetic-quick", "--data", str(tiny_csv), "--out", str(tmp_path / "o"),
                                   "--pretrained", "imagenet", "--device", "cpu", "--no-progress", "--epochs", "1"])
    assert res.exit_code == 2, res.output
    assert IMAGENET_SHA256_ENV in res.output and "Traceback" not in res.output
    assert not cache.exists()
