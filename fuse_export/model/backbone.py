"""ResNet-18 trunk up to global average pooling (512-d), with torchvision's parameter names."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18

FEATURE_DIM = 512


class ResNet18Trunk(nn.Module):
    """torchvision ResNet-18 without `fc`: conv1, bn1, relu, maxpool, layer1..4, avgpool -> [N, 512].

    Keeping torchvision's attribute names means an ImageNet state dict maps onto it key for key.
    """

    def __init__(self) -> None:
        super().__init__()
        r = resnet18(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = r.conv1, r.bn1, r.relu, r.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
        self.avgpool = r.avgpool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)
