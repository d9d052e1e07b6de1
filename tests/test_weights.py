"""Pretrained trunk weights in every circulating layout: load, check the tensors, and refuse bad files loudly."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import resnet18, resnet34

from fuse_export.errors import CheckpointError
from fuse_export.model.backbone import ResNet18Trunk
from fuse_export.model.weights import load_backbone_weights
from fuse_export.model.weights_fetch import IMAGENET_FILE, IMAGENET_SHA256_ENV, IMAGENET_URL_ENV, OFFLINE_ENV

SCN_INDEX = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    """A torchvision ResNet-18 state dict with every tensor random (BN statistics too), so equality means something."""
    torch.manual_seed(7)
    sd = resnet18(weights=None).state_dict()
    return {k: (torch.randint(0, 100, v.shape) if v.dtype == torch.int64 else torch.randn(v.shape)) for k, v in sd.items()}


def trunk_keys(sd: dict[str, torch.Tensor], with_counters: bool = True) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not k.startswith("fc.") and (with_counters or "num_batches" not in k)}


def assert_trunk_equals(trunk: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    got = trunk.state_dict()
    for k, v in trunk_keys(reference, with_counters=False).items():
        assert torch.equal(got[k], v), k


def ms_celeb_dream(reference) -> dict:
    """ijba_res18_naive.pth.tar: DataParallel `module.` keys, no BN counters (pre-0.4.1), feature + fc layers."""
    sd = {f"module.{k}": v for k, v in trunk_keys(reference, with_counters=False).items()}
    sd.update({"module.feature.weight": torch.randn(256, 512), "module.feature.bias": torch.randn(256),
               "module.fc.weight": torch.randn(500, 256), "module.fc.bias": torch.randn(500)})
    return {"epoch": 30, "arch": "resnet18", "best_prec1": 97.1, "state_dict": sd}


def ms_celeb_plain(reference) -> dict:
    """resnet18_msceleb.pth: {'state_dict': torchvision names with the 1000-way fc}."""
    return {"state_dict": dict(reference)}


def scn_checkpoint(reference) -> dict:
    """SCN's Res18Feature: features.N.* plus its fc (7 classes) and alpha, saved as the authors' train.py does."""
    sd = {}
    for k, v in trunk_keys(reference).items():
        head, rest = k.split(".", 1)
        sd[f"features.{SCN_INDEX[head]}.{rest}"] = v
    sd.update({"fc.weight": torch.randn(7, 512), "fc.bias": torch.randn(7), "alpha.0.weight": torch.randn(1, 512),
               "alpha.0.bias": torch.randn(1)})
    return {"iter": 12, "model_state_dict": sd, "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.001}]}}


@pytest.mark.parametrize("build, name, skipped, layout", [
    (lambda ref: dict(ref), "resnet18-imagenet.pth", 2, "torchvision ResNet names"),
    (ms_celeb_dream, "ijba_res18_naive.pth.tar", 4, "DataParallel (module.) MS-Celeb-1M face model"),
    (ms_celeb_plain, "resnet18_msceleb.pth", 2, "torchvision ResNet names"),
    (scn_checkpoint, "epoch40_acc0.87.pth", 4, "SCN features.N"),
])
def test_each_layout_loads_every_trunk_tensor(tmp_path, reference, build, name, skipped, layout):
    path = tmp_path / name
    torch.save(build(reference), path)
    trunk = ResNet18Trunk()
    report = load_backbone_weights(trunk, path)
    assert report.complete and report.loaded == report.expected == 100
    assert len(report.skipped) == skipped and not report.mismatched and not report.missing
    assert report.layout.startswith(layout)
    assert_trunk_equals(trunk, reference)


def test_safetensors_file(tmp_path, reference):
    path = tmp_path / "trunk.safetensors"
    save_file({k: v.contiguous() for k, v in reference.items()}, str(path))
    trunk = ResNet18Trunk()
    assert load_backbone_weights(trunk, path).complete
    assert_trunk_equals(trunk, reference)


def test_imagenet_from_the_torch_hub_cache_offline(tmp_path, reference, monkeypatch):
    import hashlib

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # keep a real ~/.cache out of the test
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv(IMAGENET_URL_ENV, raising=False)
    monkeypatch.delenv(IMAGENET_SHA256_ENV, raising=False)
    monkeypatch.setenv(OFFLINE_ENV, "1")
    with pytest.raises(CheckpointError) as err:
        load_backbone_weights(ResNet18Trunk(), "imagenet")
    message = str(err.value)
    assert IMAGENET_FILE in message and str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message and "offline" in message
    cache = tmp_path / "home" / ".cache" / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    # The default cache is searched too. The file is checked against its full sha256, so this random file goes
    # under a mirror name of its own, and (the project has no record of that file) with the user's sha256.
    torch.save(dict(reference), cache / "tmp.pth")
    digest = hashlib.sha256((cache / "tmp.pth").read_bytes()).hexdigest()
    name = f"resnet18-{digest[:8]}.pth"
    (cache / "tmp.pth").rename(cache / name)
    monkeypatch.setenv(IMAGENET_URL_ENV, f"http://127.0.0.1:9/{name}")
    with pytest.raises(CheckpointError, match=f"no known sha256.*{IMAGENET_SHA256_ENV}"):
        load_backbone_weights(ResNet18Trunk(), "imagenet")  # the prefix in the name alone is not enough
    monkeypatch.setenv(IMAGENET_SHA256_ENV, digest)
    trunk = ResNet18Trunk()
    assert load_backbone_weights(trunk, "imagenet").complete
    assert_trunk_equals(trunk, reference)


def test_wrong_files_fail_with_counts(tmp_path, reference):
    r34 = tmp_path / "resnet34.pth"
    torch.save(resnet34(weights=None).state_dict(), r34)
    # ResNet-34 holds every ResNet-18 key with the same shape: only its extra blocks give it away.
    with pytest.raises(CheckpointError, match=r"loaded 100/100 backbone tensors .*skipped 2, missing 0, "
                                              r"shape-mismatched 0, unexpected 96; .*e.g. layer1.2.conv1.weight"):
        load_backbone_weights(ResNet18Trunk(), r34)
    unrelated = tmp_path / "other.pth"
    torch.save({"state_dict": {"encoder.weight": torch.randn(3, 3)}}, unrelated)
    with pytest.raises(CheckpointError, match=r"loaded 0/100 backbone tensors .* skipped 1, missing 100"):
        load_backbone_weights(ResNet18Trunk(), unrelated)


def test_partial_file_needs_the_explicit_flag(tmp_path, reference):
    partial = {k: v for k, v in reference.items() if not k.startswith("layer4.")}
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    with pytest.raises(CheckpointError, match=r"loaded 75/100 .* missing 25, .*allow-partial-weights"):
        load_backbone_weights(ResNet18Trunk(), path)
    trunk = ResNet18Trunk()
    before = trunk.layer4[0].conv1.weight.clone()
    report = load_backbone_weights(trunk, path, allow_partial=True)
    assert report.loaded == 75 and len(report.missing) == 25 and not report.complete
    assert torch.equal(trunk.conv1.weight, reference["conv1.weight"])
    assert torch.equal(trunk.layer4[0].conv1.weight, before)


def test_unsafe_unreadable_and_ambiguous_files_are_refused(tmp_path, reference):
    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": dict(reference), "hook": Path("/etc")}, pickled)  # an arbitrary object inside
    with pytest.raises(CheckpointError, match="refused to load: the file holds a pathlib.PosixPath object"):
        load_backbone_weights(ResNet18Trunk(), pickled)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable PyTorch weights file .corrupt pickle data"):
        load_backbone_weights(ResNet18Trunk(), junk)
    mixed = tmp_path / "mixed.pth"
    torch.save({**reference, "module.conv1.weight": reference["conv1.weight"]}, mixed)
    with pytest.raises(CheckpointError, match="both map to 'conv1.weight'"):
        load_backbone_weights(ResNet18Trunk(), mixed)
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_backbone_weights(ResNet18Trunk(), tmp_path / "absent.pth")
