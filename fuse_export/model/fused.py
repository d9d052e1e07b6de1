"""The fused network: one shared ResNet-18 trunk, a DCNN head and an SCN head, stacked by a meta-learner."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from fuse_export.contract import Preprocessing
from fuse_export.model.backbone import FEATURE_DIM, ResNet18Trunk
from fuse_export.model.heads import DCNNHead, SCNHead
from fuse_export.model.stacker import Stacker


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters (the contract between a checkpoint and the code that rebuilds it)."""

    num_classes: int
    dcnn_hidden: tuple[int, ...] = (256,)
    dcnn_dropout: float = 0.5
    scn_dropout: float = 0.0
    # False: the SCN head gets its own trunk (an ablation; the paper shares one).
    shared_backbone: bool = True
    stacker: str = "linear"  # the stacker's feature set (model/stacker.py)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dcnn_hidden"] = list(self.dcnn_hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return cls(
            num_classes=int(d["num_classes"]),
            dcnn_hidden=tuple(int(h) for h in d.get("dcnn_hidden", (256,))),
            dcnn_dropout=float(d.get("dcnn_dropout", 0.5)),
            scn_dropout=float(d.get("scn_dropout", 0.0)),
            shared_backbone=bool(d.get("shared_backbone", True)),
            # Checkpoints written before the choice existed hold the linear stacker.
            stacker=str(d.get("stacker", "linear")),
        )


class HeadOutputs(NamedTuple):
    dcnn_logits: torch.Tensor  # [N, C]
    scn_logits: torch.Tensor  # [N, C], alpha-weighted
    alpha: torch.Tensor  # [N, 1]


class FusedFER(nn.Module):
    """Backbone -> (DCNN head, SCN head) -> stacker over both heads' (log-)probabilities and alpha."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = ResNet18Trunk()
        self.scn_backbone = None if config.shared_backbone else ResNet18Trunk()
        self.dcnn = DCNNHead(FEATURE_DIM, config.num_classes, config.dcnn_hidden, config.dcnn_dropout)
        self.scn = SCNHead(FEATURE_DIM, config.num_classes, config.scn_dropout)
        self.stacker = Stacker(config.num_classes, config.stacker)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The trunk's 512-d features for the DCNN head and for the SCN head (the same tensor when shared)."""
        feat = self.backbone(x)
        return feat, (feat if self.scn_backbone is None else self.scn_backbone(x))

    def heads(self, feat: torch.Tensor, scn_feat: torch.Tensor) -> HeadOutputs:
        scn_logits, alpha = self.scn(scn_feat)
        return HeadOutputs(self.dcnn(feat), scn_logits, alpha)

    def forward_heads(self, x: torch.Tensor) -> HeadOutputs:
        """One backbone pass (when shared) feeding both heads."""
        return self.heads(*self.features(x))

    def stack(self, heads: HeadOutputs) -> torch.Tensor:
        """Fused logits from the heads' outputs."""
        return self.stacker(heads.dcnn_logits, heads.scn_logits, heads.alpha)

    def stacking_features(self, heads: HeadOutputs) -> torch.Tensor:
        return self.stacker.features(heads.dcnn_logits, heads.scn_logits, heads.alpha)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heads = self.forward_heads(x)
        logits = self.stack(heads)
        return logits, torch.softmax(logits, dim=1), heads.alpha


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """Float RGB pixel values [N, 3, H, W] in 0..255 -> gray [N, 1, H, W], bit-exact to PIL's convert("L").

    PIL computes (R*19595 + G*38470 + B*7471 + 0x8000) >> 16. Here each weight is divided by 2^16 first: every
    term and partial sum is a multiple of 2^-16 below 256, which float32's 24-bit significand holds exactly,
    so floor(sum + 0.5) is PIL's integer; and no value exceeds 256, so graphs built in fp16 cannot overflow.
    """
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    return torch.floor(r * (19595.0 / 65536.0) + g * (38470.0 / 65536.0) + b * (7471.0 / 65536.0) + 0.5)


class ExportView(nn.Module):
    """The exported interface (see `fuse_export.contract`): image -> (logits, probabilities, confidence).

    With `embed_preprocessing`, the input is raw uint8 RGB [N, H, W, 3] at the input size (the client applies
    the contract's geometry) and the conversion to normalized float NCHW happens inside the graph, so a client
    passes pixels. For a gray model (`color_mode == "gray"`) the graph first converts RGB to luma with PIL's
    convert("L") arithmetic (ITU-R 601-2: 299/587/114 per 1000, rounded to an integer) and replicates it to
    3 channels, so a colour photo gives what the model was trained on.
    """

    def __init__(self, model: FusedFER, preprocessing: Preprocessing | None = None) -> None:
        super().__init__()
        self.model = model
        self.embed_preprocessing = preprocessing is not None
        self.gray = preprocessing is not None and preprocessing.color_mode == "gray"
        if preprocessing is not None:
            mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1) * 255.0
            std = torch.tensor(preprocessing.std).view(1, 3, 1, 1) * 255.0
            self.register_buffer("pixel_mean", mean)
            self.register_buffer("pixel_std", std)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.embed_preprocessing:
            x = image.permute(0, 3, 1, 2).float()
            if self.gray:
                x = luma(x).expand(-1, 3, -1, -1)
            image = (x - self.pixel_mean) / self.pixel_std
        return self.model(image)
