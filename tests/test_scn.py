"""SCN's pieces on small hand-made batches: rank regularization, the relabeling rule, relabels that persist
across epochs of the real training loop, and alpha-weighted logits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fuse_export.contract import Preprocessing
from fuse_export.data.base import Split
from fuse_export.data.torchdata import SplitDataset
from fuse_export.data.transforms import eval_transform
from fuse_export.model.fused import ExportView, FusedFER, ModelConfig
from fuse_export.model.scn import rank_regularization, relabel, split_by_importance
from fuse_export.training.distributed import DistContext
from fuse_export.training.loop import LabelState, train_one_epoch
from fuse_export.training.recipe import SCNSection, TrainSection
from fuse_export.training.speed import make_precision

# Ten alphas; with beta 0.7 the high group is the top int(10 * 0.7) = 7: .9 .8 .7 .6 .5 .4 .35,
# the low group indices 7, 1, 3 (alphas .3 .2 .1).
ALPHA = torch.tensor([0.9, 0.2, 0.8, 0.1, 0.7, 0.6, 0.5, 0.3, 0.4, 0.35])
HIGH_MEAN = (0.9 + 0.8 + 0.7 + 0.6 + 0.5 + 0.4 + 0.35) / 7
LOW_MEAN = (0.3 + 0.2 + 0.1) / 3


def test_groups_follow_beta():
    high, low = split_by_importance(ALPHA.view(-1, 1), 0.7)
    assert sorted(high.tolist()) == [0, 2, 4, 5, 6, 8, 9]
    assert sorted(low.tolist()) == [1, 3, 7]


def test_rank_regularization_value_against_hand_computation():
    # max(0, delta1 - (mean_high - mean_low)): 0.5 - (0.607142... - 0.2) = 0.092857...
    value = rank_regularization(ALPHA.view(-1, 1), beta=0.7, margin=0.5)
    assert value.item() == pytest.approx(0.5 - (HIGH_MEAN - LOW_MEAN), abs=1e-6)
    assert value.item() == pytest.approx(0.0928571, abs=1e-6)
    # The groups are already further apart than delta1 = 0.15: no penalty.
    assert rank_regularization(ALPHA, beta=0.7, margin=0.15).item() == 0.0
    # Equal alphas: the full margin is owed.
    assert rank_regularization(torch.full((8, 1), 0.5), beta=0.7, margin=0.07).item() == pytest.approx(0.07)
    # One sample cannot be ranked: zero, but still a tensor in the graph.
    assert rank_regularization(torch.tensor([[0.3]]), beta=0.7, margin=0.15).item() == 0.0


def test_rank_regularization_gradient_pushes_groups_apart():
    alpha = ALPHA.clone().requires_grad_(True)
    rank_regularization(alpha, beta=0.7, margin=0.5).backward()
    g = alpha.grad
    high, low = [0, 2, 4, 5, 6, 8, 9], [1, 3, 7]
    # d/d alpha_high = -1/7 (descending the loss raises them), d/d alpha_low = +1/3 (lowers them).
    torch.testing.assert_close(g[high], torch.full((7,), -1 / 7))
    torch.testing.assert_close(g[low], torch.full((3,), 1 / 3))


def _logits() -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted logits for the ten samples of ALPHA and their given labels (3 classes)."""
    logits = torch.zeros(10, 3)
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 0, 0, 1, 2])
    logits[torch.arange(10), targets] = 4.0  # by default every sample agrees with its label
    logits[0] = torch.tensor([0.0, 0.0, 5.0])  # high group, label 0, model sure of 2
    logits[1] = torch.tensor([0.0, 0.0, 5.0])  # low group, label 0, model sure of 2
    logits[3] = torch.tensor([0.0, 5.0, 0.0])  # low group, model agrees with label 1
    logits[7] = torch.tensor([1.0, 0.0, 1.3])  # low group, prefers 2 but P2 - P0 = 0.134 <= delta2 = 0.2
    return logits, targets


# Twenty samples for the margin rule (3 classes, delta2 = 0.2, beta = 0.7). Alphas: the low group is the
# int(20 * 0.3) = 6 samples under 0.3, the rest (14, the top int(20 * 0.7)) are at 0.5 and over.
MARGIN_ALPHA = [0.9, 0.2, 0.85, 0.1, 0.8, 0.75, 0.25, 0.7, 0.05, 0.65, 0.15, 0.6, 0.28, 0.58, 0.56, 0.54, 0.53,
                0.52, 0.51, 0.5]
MARGIN_LOW = {1, 3, 6, 8, 10, 12}
# ln(1.75) puts [0, 0, z] with label 0 exactly on the margin: P2 - P0 = (e^z - 1) / (e^z + 2) = 0.2.
ON_MARGIN = math.log(1.75)
MARGIN_CASES = [  # (weighted logits, given label)
    ([0.0, 0.0, ON_MARGIN + 0.01], 0),  # 0  high, just above: P2 - P0 = 0.2037, but high importance
    ([0.0, 0.0, ON_MARGIN + 0.01], 0),  # 1  low, just above -> 2
    ([0.0, 0.0, 5.0], 1),  # 2  high, far above, but high importance
    ([0.0, 0.0, ON_MARGIN - 0.01], 0),  # 3  low, just below: P2 - P0 = 0.1963
    ([0.0, 0.0, 5.0], 2),  # 4  high, agrees with its label
    ([3.0, 0.0, 0.0], 2),  # 5  high, far above, high importance
    ([ON_MARGIN + 0.01, 0.0, 0.0], 1),  # 6  low, just above -> 0
    ([0.0, 4.0, 0.0], 1),  # 7  high, agrees
    ([ON_MARGIN - 0.01, 0.0, 0.0], 2),  # 8  low, just below
    ([0.0, 0.0, 0.0], 0),  # 9  high, uniform: no margin
    ([0.0, 2.0, 1.9], 0),  # 10 low: P1 - P0 = 0.42 although P1 - P2 = 0.05 (the given label, not the runner-up) -> 1
    ([1.0, 0.0, 0.0], 1),  # 11 high, above
    ([0.0, 5.0, 0.0], 1),  # 12 low, agrees with its label: nothing to change
    ([1.0, 1.0, 1.0], 2),  # 13 high, uniform
    ([0.0, 0.0, 2.0], 0),  # 14 high, above
    ([0.0, 0.0, 0.0], 1),  # 15 high
    ([0.0, 1.0, 0.0], 0),  # 16 high, above
    ([2.0, 0.0, 0.0], 0),  # 17 high, agrees
    ([0.0, 0.0, 1.0], 1),  # 18 high, above
    ([0.0, 0.5, 0.0], 1),  # 19 high, agrees
]


def _softmax_by_hand(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def test_relabel_margin_hand_computation():
    """SCN's rule computed by hand, with plain numbers: softmax, P_max - P_given > delta2, in the low group only."""
    low_by_hand = sorted(range(20), key=lambda i: MARGIN_ALPHA[i])[:20 - int(20 * 0.7)]
    assert set(low_by_hand) == MARGIN_LOW
    expected_new, expected_changed = [], []
    for i, (row, given) in enumerate(MARGIN_CASES):
        p = _softmax_by_hand(row)
        gap = max(p) - p[given]
        change = i in MARGIN_LOW and gap > 0.2 and p.index(max(p)) != given
        expected_changed.append(change)
        expected_new.append(p.index(max(p)) if change else given)
    # The near cases sit within 0.004 of delta2, on both sides: the margin comparison decides them.
    gaps = {i: max(p := _softmax_by_hand(MARGIN_CASES[i][0])) - p[MARGIN_CASES[i][1]] for i in (0, 1, 3, 6, 8)}
    assert all(0.2 < gaps[i] < 0.205 for i in (0, 1, 6)) and all(0.195 < gaps[i] < 0.2 for i in (3, 8)), gaps
    assert [i for i, c in enumerate(expected_changed) if c] == [1, 6, 10]
    assert expected_new[1] == 2 and expected_new[6] == 0 and expected_new[10] == 1

    logits = torch.tensor([row for row, _ in MARGIN_CASES])
    targets = torch.tensor([given for _, given in MARGIN_CASES])
    alpha = torch.tensor(MARGIN_ALPHA).view(-1, 1)
    new, changed = relabel(logits, targets, alpha, margin=0.2, beta=0.7, scope="low")
    assert changed.tolist() == expected_changed
    assert new.tolist() == expected_new
    # The low group given from outside (a distributed step ranks the global batch): it, not these alphas, decides.
    outside = torch.zeros(20, dtype=torch.bool)
    outside[[0, 3, 5]] = True
    new, changed = relabel(logits, targets, alpha, margin=0.2, beta=0.7, scope="low", low_mask=outside)
    assert changed.nonzero().flatten().tolist() == [0, 5]  # 3 is just below the margin
    assert new[0].item() == 2 and new[5].item() == 0


def test_relabel_low_scope_changes_only_low_importance_samples_above_the_margin():
    logits, targets = _logits()
    new, changed = relabel(logits, targets, ALPHA.view(-1, 1), margin=0.2, beta=0.7, scope="low")
    assert changed.tolist() == [i == 1 for i in range(10)]
    expected = targets.clone()
    expected[1] = 2
    assert new.tolist() == expected.tolist()
    assert targets.tolist() == [0, 0, 1, 1, 2, 2, 0, 0, 1, 2]  # the input is not modified


def test_relabel_all_scope_also_changes_high_importance_samples():
    logits, targets = _logits()
    new, changed = relabel(logits, targets, ALPHA.view(-1, 1), margin=0.2, beta=0.7, scope="all")
    assert changed.nonzero().flatten().tolist() == [0, 1]
    assert new[0].item() == 2 and new[1].item() == 2
    # Sample 7 stays under either scope (margin too small); a larger delta2 stops everything.
    assert not relabel(logits, targets, ALPHA, margin=0.99, beta=0.7, scope="all")[1].any()
    # A margin of 0 relabels sample 7 too (its argmax differs from its label).
    _, changed = relabel(logits, targets, ALPHA, margin=0.0, beta=0.7, scope="all")
    assert changed.nonzero().flatten().tolist() == [0, 1, 7]


def test_relabel_rejects_unknown_scope():
    logits, targets = _logits()
    with pytest.raises(ValueError, match="scope"):
        relabel(logits, targets, ALPHA, scope="most")


def _rigged_model() -> FusedFER:
    """SCN head that ignores its input: alpha ~= 1 and weighted logits ~= [6, 0, 0] for every image."""
    model = FusedFER(ModelConfig(num_classes=3, dcnn_hidden=(8,)))
    with torch.no_grad():
        model.scn.fc.weight.zero_()
        model.scn.fc.bias.copy_(torch.tensor([6.0, 0.0, 0.0]))
        model.scn.alpha[0].weight.zero_()
        model.scn.alpha[0].bias.fill_(10.0)
    return model


def test_relabeled_labels_persist_across_epochs_of_the_training_loop():
    rng = np.random.default_rng(0)
    given = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    split = Split(labels=given, images=rng.integers(0, 256, (12, 32, 32), dtype=np.uint8))
    loader = DataLoader(SplitDataset(split, eval_transform(Preprocessing(32, ("a", "b", "c")))), batch_size=12,
                        shuffle=True, generator=torch.Generator().manual_seed(0))
    labels = LabelState(torch.from_numpy(given.copy()), torch.from_numpy(given.copy()))
    model = _rigged_model()
    # lr 0: the weights stay rigged, so only the label state can change what the loop sees.
    optimizer = torch.optim.SGD([p for n, p in model.named_parameters() if not n.startswith("stacker.")], lr=0.0)
    ctx, precision, train = DistContext(), make_precision("none", torch.device("cpu")), TrainSection()

    def epoch(n: int, scn: SCNSection):
        return train_one_epoch(model.forward_heads, model, loader, labels, optimizer, precision, scn, train, n, ctx)

    relabel_from_2 = SCNSection(relabel_epoch=2, relabel_scope="all", margin2=0.2)
    first = epoch(1, relabel_from_2)
    assert first.relabeled_epoch == 0 and labels.relabeled == 0  # before relabel_epoch: nothing changes
    assert first.train_acc_scn == pytest.approx(4 / 12)

    second = epoch(2, relabel_from_2)
    assert second.relabeled_epoch == 8 and labels.relabeled == 8
    assert labels.labels.tolist() == [0] * 12  # every label that disagreed with the confident head became 0
    assert labels.original.tolist() == given.tolist()
    # The epoch that relabels still trained and scored against the old labels.
    assert second.train_acc_scn == pytest.approx(4 / 12)

    third = epoch(3, SCNSection(relabel_epoch=0))  # relabeling off: the new labels must still be in use
    assert third.relabeled_epoch == 0 and labels.relabeled == 8
    assert third.train_acc_scn == pytest.approx(1.0)
    assert third.loss_scn < first.loss_scn / 10  # CE against the new labels (all 0), which the head predicts


def test_alpha_multiplies_the_logits():
    model = FusedFER(ModelConfig(num_classes=4, scn_dropout=0.5)).eval()
    feat = torch.randn(5, 512)
    with torch.no_grad():
        model.scn.alpha[0].bias.fill_(-1.0)
        weighted, alpha = model.scn(feat)
    w, b = model.scn.alpha[0].weight, model.scn.alpha[0].bias
    expected_alpha = torch.sigmoid(feat @ w.T + b)
    expected_logits = expected_alpha * (feat @ model.scn.fc.weight.T + model.scn.fc.bias)
    torch.testing.assert_close(alpha, expected_alpha)
    torch.testing.assert_close(weighted, expected_logits)
    assert ((alpha > 0) & (alpha < 1)).all()
    # A positive scale never changes the predicted class, but a low alpha flattens the softmax (less sure).
    plain = model.scn.fc(feat)
    assert torch.equal(weighted.argmax(1), plain.argmax(1))
    assert (torch.softmax(weighted, 1).max(1).values <= torch.softmax(plain, 1).max(1).values + 1e-6).all()


def test_alpha_is_learned_through_the_weighted_cross_entropy_and_exported_as_confidence():
    model = FusedFER(ModelConfig(num_classes=4)).eval()
    x = torch.randn(3, 3, 32, 32)
    heads = model.forward_heads(x)
    feat = model.backbone(x)
    torch.testing.assert_close(heads.scn_logits, heads.alpha * model.scn.fc(feat))
    F.cross_entropy(heads.scn_logits, torch.tensor([0, 1, 2])).backward()
    assert model.scn.alpha[0].weight.grad is not None and model.scn.alpha[0].weight.grad.abs().sum() > 0
    with torch.no_grad():
        _, _, confidence = ExportView(model)(x)
    torch.testing.assert_close(confidence, heads.alpha.detach())
