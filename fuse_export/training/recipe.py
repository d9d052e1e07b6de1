"""Recipes: TOML files in recipes/ that fully describe a training run, validated field by field."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from fuse_export.contract import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from fuse_export.errors import RecipeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class DataSection:
    format: str = "fer2013-csv"
    path: str = ""  # overridable with --data
    image_size: int = 224
    # The one crop geometry of training and deployment (fuse_export.contract.GEOMETRIES; see data/transforms.py).
    geometry: str = "squash"
    limit: int = 0  # 0 = all; otherwise at most this many samples per split (quick runs)
    options: dict[str, Any] = field(default_factory=dict)  # format-specific loader options


@dataclass(frozen=True)
class ModelSection:
    pretrained: str = ""  # "" = none, "imagenet" (torchvision's, downloaded to the hub cache), or a file path
    allow_partial_weights: bool = False
    dcnn_hidden: tuple[int, ...] = (256,)
    dcnn_dropout: float = 0.5
    scn_dropout: float = 0.0
    shared_backbone: bool = True


@dataclass(frozen=True)
class SCNSection:
    beta: float = 0.7  # share of the high-importance group
    margin1: float = 0.07  # rank-regularization margin (0.15 at batch 1024 in the paper)
    margin2: float = 0.2  # relabeling margin
    relabel_epoch: int = 10  # first (1-based) epoch that relabels; 0 disables relabeling
    relabel_scope: str = "low"  # "low" (paper) or "all" (authors' released code)
    rank_weight: float = 1.0


@dataclass(frozen=True)
class TrainSection:
    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    scheduler: str = "exponential"  # exponential | step | cosine | none
    gamma: float = 0.9
    step_size: int = 6
    num_workers: int = 0
    seed: int = 0
    dcnn_weight: float = 1.0
    scn_weight: float = 1.0
    # Speed on a GPU (see fuse_export/training/speed.py); all also run, slowly, on the CPU.
    amp: str = "none"  # none | bf16 | fp16 (fp16 uses a gradient scaler)
    channels_last: bool = False
    compile: bool = False  # torch.compile the training network
    deterministic: bool = False  # deterministic kernels, no cudnn autotuning: bit-reproducible GPU runs, slower
    # Staged fine-tuning (Akhand et al.): the first N epochs train the heads only (trunk frozen, BatchNorm in eval).
    freeze_backbone_epochs: int = 0
    backbone_lr_mult: float = 1.0  # the trunk's learning rate is lr * this (0 < mult)
    sync_bn: bool = False  # SyncBatchNorm across processes (multi-GPU); a no-op in one process


@dataclass(frozen=True)
class StackingSection:
    holdout_fraction: float = 0.1  # share of the training split held out (never trained on) for the stacker
    # "linear": [p_dcnn, p_scn, alpha]; "interaction": alpha also scales each head's log-probabilities
    # (model/stacker.py). Linear was better in benchmarks/compare_stacker.py (RESULTS.md), so it is the default.
    kind: str = "linear"
    # How the stacker's weights are chosen (train/stacking.py): "cv" picks, by K-fold cross-validation on the
    # held-out split, among the DCNN head alone, the SCN head alone, their even combination and fits regularized
    # towards it at each of `strengths`, so the fused output is never below the better head on held-out data.
    # "fitted" (one fit with `weight_decay`), "average", "dcnn" and "scn" force one candidate: for ablations.
    select: str = "cv"
    folds: int = 5
    strengths: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
    weight_decay: float = 1e-3  # select = "fitted": the pull towards the even combination
    max_iter: int = 200


@dataclass(frozen=True)
class Recipe:
    name: str = "recipe"
    source: str = ""
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    scn: SCNSection = field(default_factory=SCNSection)
    train: TrainSection = field(default_factory=TrainSection)
    stacking: StackingSection = field(default_factory=StackingSection)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"]["dcnn_hidden"] = list(self.model.dcnn_hidden)
        d["stacking"]["strengths"] = list(self.stacking.strengths)
        return d

    def replace(self, **sections: dict[str, Any]) -> Recipe:
        """A copy with some fields of some sections changed, e.g. replace(train={"epochs": 3})."""
        new = {}
        for name, changes in sections.items():
            new[name] = dataclasses.replace(getattr(self, name), **changes)
        out = dataclasses.replace(self, **new)
        # Overrides (command-line options) obey the same rules as the file.
        _validate(f"{self.source or self.name} (with command-line overrides)", out)
        return out


_CHOICES = {
    ("scn", "relabel_scope"): ("low", "all"),
    ("train", "optimizer"): ("adam", "sgd"),
    ("train", "scheduler"): ("exponential", "step", "cosine", "none"),
    ("train", "amp"): ("none", "bf16", "fp16"),
    ("data", "geometry"): ("squash", "resize-crop"),
    ("stacking", "kind"): ("linear", "interaction"),
    ("stacking", "select"): ("cv", "fitted", "average", "dcnn", "scn"),  # train/stacking.SELECT_MODES
}


def _coerce(where: str, value: Any, hint: Any) -> Any:
    origin = get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where} must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where} must be an integer, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where} must be a number, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where} must be a string, not {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise RecipeError(f"{where} must be a list, not {value!r}")
        (item,) = {a for a in get_args(hint) if a is not Ellipsis}
        return tuple(_coerce(f"{where}[{i}]", v, item) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where} must be a table, not {value!r}")
        return dict(value)
    return value


def _section(file: str, name: str, cls: type, table: Any) -> Any:
    if not isinstance(table, dict):
        raise RecipeError(f"{file}: [{name}] must be a table")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise RecipeError(f"{file}: unknown field {name}.{unknown[0]}; known fields are {', '.join(sorted(known))}")
    values = {k: _coerce(f"{file}: {name}.{k}", v, hints[k]) for k, v in table.items()}
    for (sec, key), choices in _CHOICES.items():
        if sec == name and key in values and values[key] not in choices:
            raise RecipeError(f"{file}: {name}.{key} is {values[key]!r}; choose one of {', '.join(choices)}")
    return cls(**values)


# The DCNN head's hidden widths. Akhand et al.'s head is 256 wide on the backbone's 512-d feature; 8192 (16x the
# feature) is past anything that trains better, and the whole head stays under 2**27 weights (0.5 GB in fp32,
# ~2 GB with gradients and Adam's two moments: the backbone itself has 11M). Without it [65536, 65536] passed
# validation and training was killed at ~22 GB with no message (4.3e9 weights).
MAX_HIDDEN_WIDTH = 8192
MAX_HIDDEN_LAYERS = 16
MAX_HEAD_WEIGHTS = 2**27
HEAD_INPUT = 512  # the backbone's feature width (fuse_export.model.backbone.FEATURE_DIM; this module is torch-free)
MIN_LIMIT = 10  # with <= 9 samples over 8-9 classes, every class can be a singleton: an empty held-out set
SEED_MAX = 2**32 - 1  # numpy's generators take 0..2**32-1


def _finite_numbers(file: str, r: Recipe) -> None:
    """Every float field is a finite number (TOML has inf and nan; neither is a valid setting anywhere)."""
    for section in ("data", "model", "scn", "train", "stacking"):
        obj = getattr(r, section)
        for f in fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise RecipeError(f"{file}: {section}.{f.name} is {value}; it must be a finite number")


def head_weights(hidden: tuple[int, ...]) -> int:
    """Weights of the DCNN head's hidden layers (the last, to the few classes, is negligible)."""
    widths = (HEAD_INPUT, *(max(h, 0) for h in hidden))
    return sum(a * b for a, b in itertools.pairwise(widths))


def _validate(file: str, r: Recipe) -> None:
    _finite_numbers(file, r)
    exp_or_step = r.train.scheduler in ("exponential", "step")
    checks = [
        (MIN_IMAGE_SIZE <= r.data.image_size <= MAX_IMAGE_SIZE,
         f"data.image_size must be in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}"),
        (r.data.limit == 0 or r.data.limit >= MIN_LIMIT,
         f"data.limit must be 0 (all samples) or at least {MIN_LIMIT} (fewer leave the stacker nothing to fit on)"),
        (0.0 <= r.model.dcnn_dropout < 1.0 and 0.0 <= r.model.scn_dropout < 1.0,
         "model.dcnn_dropout and model.scn_dropout must be in [0, 1)"),
        (all(h <= MAX_HIDDEN_WIDTH for h in r.model.dcnn_hidden),
         f"model.dcnn_hidden sizes must be at most {MAX_HIDDEN_WIDTH} (the default head is [256])"),
        (len(r.model.dcnn_hidden) <= MAX_HIDDEN_LAYERS,
         f"model.dcnn_hidden lists at most {MAX_HIDDEN_LAYERS} layers (the default head is [256])"),
        (head_weights(r.model.dcnn_hidden) <= MAX_HEAD_WEIGHTS,
         (f"model.dcnn_hidden makes a head of {head_weights(r.model.dcnn_hidden):,} weights; at most "
          f"{MAX_HEAD_WEIGHTS:,} (~2 GB to train; the default head [256] has 131,072)")),
        (0.0 <= r.scn.rank_weight <= 100.0, "scn.rank_weight must be in [0, 100]"),
        (r.scn.margin1 <= 1.0 and r.scn.margin2 <= 1.0,
         "scn.margin1 and scn.margin2 must be at most 1 (they compare weights and probabilities in [0, 1])"),
        (r.train.epochs <= 100_000, "train.epochs must be at most 100000"),
        (r.train.batch_size <= 65536, "train.batch_size must be at most 65536"),
        (r.train.lr <= 10.0, "train.lr must be at most 10 (typical: 1e-4..1e-1)"),
        (0.0 <= r.train.weight_decay <= 1.0, "train.weight_decay must be in [0, 1] (typical: 1e-4)"),
        (0.0 <= r.train.momentum < 1.0, "train.momentum must be in [0, 1)"),
        (not exp_or_step or 0.0 < r.train.gamma <= 1.0,
         f"train.gamma must be in (0, 1] with scheduler {r.train.scheduler!r} (it multiplies the learning rate)"),
        (r.train.step_size >= 1, "train.step_size must be >= 1 (epochs between learning-rate steps)"),
        (r.train.num_workers <= 256, "train.num_workers must be at most 256"),
        (0 <= r.train.seed <= SEED_MAX, f"train.seed must be in 0..{SEED_MAX}"),
        (0.0 <= r.train.dcnn_weight <= 100.0 and 0.0 <= r.train.scn_weight <= 100.0
         and r.train.dcnn_weight + r.train.scn_weight > 0,
         "train.dcnn_weight and train.scn_weight must be in [0, 100], not both 0"),
        (0.0 <= r.stacking.weight_decay <= 100.0, "stacking.weight_decay must be in [0, 100] (typical: 1e-3)"),
        (1 <= r.stacking.max_iter <= 100_000, "stacking.max_iter must be in 1..100000 (0 would leave the stacker unfitted)"),
        (0.0 < r.scn.beta < 1.0, "scn.beta must be in (0, 1)"),
        (r.scn.margin1 >= 0.0 and r.scn.margin2 >= 0.0, "scn.margin1 and scn.margin2 must be >= 0"),
        (r.scn.relabel_epoch >= 0, "scn.relabel_epoch must be >= 0 (0 disables relabeling)"),
        (r.train.epochs >= 1, "train.epochs must be >= 1"),
        (r.train.batch_size >= 2, "train.batch_size must be >= 2 (rank regularization needs two groups)"),
        (r.train.lr > 0, "train.lr must be > 0"),
        (r.train.num_workers >= 0, "train.num_workers must be >= 0"),
        (r.train.freeze_backbone_epochs >= 0, "train.freeze_backbone_epochs must be >= 0 (0: no frozen stage)"),
        (r.train.backbone_lr_mult > 0 and r.train.backbone_lr_mult != float("inf"),
         "train.backbone_lr_mult must be a finite number > 0 (freeze with train.freeze_backbone_epochs instead)"),
        (0.0 < r.stacking.holdout_fraction < 0.5, "stacking.holdout_fraction must be in (0, 0.5)"),
        (2 <= r.stacking.folds <= 50, "stacking.folds must be in 2..50 (typical: 5)"),
        (1 <= len(r.stacking.strengths) <= 20 and all(0.0 < v <= 100.0 for v in r.stacking.strengths),
         "stacking.strengths must list 1..20 numbers in (0, 100] (typical: [0.001, 0.01, 0.1, 1])"),
        (all(h > 0 for h in r.model.dcnn_hidden), "model.dcnn_hidden sizes must be > 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise RecipeError(f"{file}: {message}")


def recipe_from_dict(d: dict[str, Any], source: str = "<recipe>") -> Recipe:
    sections = {"data": DataSection, "model": ModelSection, "scn": SCNSection, "train": TrainSection,
                "stacking": StackingSection}
    unknown = sorted(set(d) - set(sections) - {"name", "source"})
    if unknown:
        raise RecipeError(f"{source}: unknown section or field {unknown[0]!r}; sections are {', '.join(sections)}")
    kwargs = {k: _section(source, k, cls, d.get(k, {})) for k, cls in sections.items()}
    recipe = Recipe(name=str(d.get("name", Path(source).stem)), source=str(d.get("source", "")), **kwargs)
    _validate(source, recipe)
    return recipe


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Parse and validate a recipe TOML file."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe not found; see recipes/ for examples")
    try:
        d = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: not valid TOML ({exc})") from None
    if not d:  # a zero-byte (or comments-only) file would silently train every default for minutes
        raise RecipeError(f"{path}: empty recipe (no tables or keys); start from one in recipes/, or name one "
                          "(e.g. `fuse-export train fer2013`)")
    d.setdefault("name", path.stem)
    return recipe_from_dict(d, str(path))
