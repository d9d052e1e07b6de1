import pytest
import torch

from fuse_export.model.backbone import ResNet18Trunk
from fuse_export.model.fused import ExportView, FusedFER, ModelConfig
from fuse_export.model.stacker import Stacker, fit_stacker
from fuse_export.contract import Preprocessing


def test_trunk_gives_512_features_and_torchvision_names():
    trunk = ResNet18Trunk().eval()
    assert trunk(torch.randn(2, 3, 64, 64)).shape == (2, 512)
    keys = set(trunk.state_dict())
    assert "conv1.weight" in keys and "layer4.1.bn2.running_var" in keys and not any(k.startswith("fc") for k in keys)


def test_fused_outputs_follow_contract():
    model = FusedFER(ModelConfig(num_classes=7, dcnn_hidden=(32, 16))).eval()
    logits, probs, conf = ExportView(model)(torch.randn(3, 3, 48, 48))
    assert logits.shape == (3, 7) and probs.shape == (3, 7) and conf.shape == (3, 1)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    assert bool(((conf > 0) & (conf < 1)).all())


def test_one_backbone_pass_feeds_both_heads():
    model = FusedFER(ModelConfig(num_classes=7)).eval()
    calls = []
    model.backbone.register_forward_hook(lambda *a: calls.append(1))
    model(torch.randn(2, 3, 48, 48))
    assert len(calls) == 1
    sep = FusedFER(ModelConfig(num_classes=7, shared_backbone=False)).eval()
    assert sep.scn_backbone is not None and sep(torch.randn(2, 3, 48, 48))[0].shape == (2, 7)


def test_scn_logits_are_alpha_weighted():
    model = FusedFER(ModelConfig(num_classes=5)).eval()
    feat = torch.randn(4, 512)
    weighted, alpha = model.scn(feat)
    torch.testing.assert_close(weighted, alpha * model.scn.fc(feat))


def test_embedded_preprocessing_matches_float_pipeline():
    pre = Preprocessing(image_size=40)
    model = FusedFER(ModelConfig(num_classes=7)).eval()
    pixels = torch.randint(0, 256, (2, 40, 40, 3), dtype=torch.uint8)
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    x = (pixels.permute(0, 3, 1, 2).float() / 255 - mean) / std
    a = ExportView(model, pre)(pixels)
    b = ExportView(model)(x)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["interaction", "linear"])
def test_stacker_learns_to_trust_the_better_head(kind):
    torch.manual_seed(0)
    n, c = 400, 4
    y = torch.randint(0, c, (n,))
    good = torch.log(torch.nn.functional.one_hot(y, c).float() * 0.9 + 0.025)  # logits of a good head
    bad = torch.randn(n, c)
    st = Stacker(c, kind)
    feats = st.features(bad, good, torch.rand(n, 1))
    fit_stacker(st, feats, y)
    acc = (st.linear(feats).argmax(1) == y).float().mean()
    assert acc > 0.95
    w = st.linear.weight.detach()
    assert w[:, c:2 * c].diagonal().mean() > w[:, :c].diagonal().mean()
