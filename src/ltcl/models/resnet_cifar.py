"""ResNet for 32x32 images (He et al. 2016, section 4.2), as used by LDAM-DRW, PaCo/GPaCo and the ACL paper.

Three stages of 16/32/64 channels, ``n`` BasicBlocks each (depth ``6n + 2``), option-A shortcuts: where a
block halves the resolution and doubles the channels, the identity path subsamples with stride 2 and pads
the new channels with zeros, so shortcuts carry no parameters. The module ends with global average pooling
and returns the 64-d feature vector; the classifier lives in :mod:`ltcl.models.network`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ltcl.errors import UserError


class ShortcutA(nn.Module):
    """Parameter-free option-A shortcut: stride-``stride`` subsampling, then zero channels on both sides.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output (>= ``in_channels``).
        stride: spatial subsampling step.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise UserError(f"ShortcutA cannot reduce channels ({in_channels} -> {out_channels}).")
        self.stride = stride
        # The new channels are split evenly before and after the old ones, as in the LDAM/GPaCo code,
        # so that checkpoints trained there behave identically here.
        extra = out_channels - in_channels
        self.pad_front = extra // 2
        self.pad_back = extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride))."""
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm; the (option-A) shortcut is added before the last ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ShortcutA(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet family without its classifier.

    Args:
        depth: ``6n + 2`` (8, 20, 32, 44, 56, 110, ...).

    Input (B, 3, H, W) of any size (32 px by design; 16 or 24 px views also work thanks to the adaptive
    pooling); output (B, 64) pooled features. ``out_features`` is 64.
    """

    out_features = 64

    def __init__(self, depth: int = 32) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise UserError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (8, 20, 32, ...), got {depth}.")
        blocks = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks, stride=1)
        self.layer2 = self._stage(16, 32, blocks, stride=2)
        self.layer3 = self._stage(32, 64, blocks, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, 64) features."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.pool(x), 1)


def resnet8() -> CifarResNet:
    """ResNet-8 (1 block per stage), for fast tests."""
    return CifarResNet(8)


def resnet20() -> CifarResNet:
    """ResNet-20 (3 blocks per stage)."""
    return CifarResNet(20)


def resnet32() -> CifarResNet:
    """ResNet-32 (5 blocks per stage): the CIFAR-LT backbone of the paper, 0.46 M parameters with a fc-10."""
    return CifarResNet(32)


def resnet44() -> CifarResNet:
    """ResNet-44 (7 blocks per stage)."""
    return CifarResNet(44)


def resnet56() -> CifarResNet:
    """ResNet-56 (9 blocks per stage)."""
    return CifarResNet(56)


CIFAR_RESNETS = {
    "resnet8": resnet8,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
}
