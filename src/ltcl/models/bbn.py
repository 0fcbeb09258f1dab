"""BBN's bilateral-branch backbones (Zhou et al., CVPR 2020): a shared trunk, then the last residual block twice,
once for the conventional-learning branch and once for the re-balancing branch, each globally average-pooled.

``model.backbone``: ``bbn_resnet32`` (the authors' CIFAR network; also ``bbn_resnet8/20/44/56``), ``bbn_resnet50``
(their iNaturalist network) and ``bbn_resnext50_32x4d`` (the same split of torchvision's ResNeXt-50, for
ImageNet-LT). The features are the two branches' pooled outputs side by side: 2 x 64 for the CIFAR ResNets,
2 x 2048 for the ImageNet ones.

- ``forward(x)`` (evaluation, and any user of the network): both branches on the same images, weighted equally
  (BBN's test rule), ``[f_c ; f_r]`` = :func:`ltcl.losses.bbn.bilateral_mix` with ``alpha = 1/2``.
- ``forward_branches(x_conventional, x_rebalancing)`` (the ``bbn`` method): the trunk runs on each batch
  separately (its BatchNorm layers see each batch's own statistics, as in the authors' two forward calls,
  lib/core/combiner.py lines 43-46), the conventional block on the first, the re-balancing block on the second.

Where this differs from the authors' networks (Megvii-Nanjing/BBN lib/backbone/resnet_cifar.py ``BBN_ResNet_Cifar``
and resnet.py ``BBN_ResNet``): the CIFAR trunk is ltcl's :class:`~ltcl.models.resnet_cifar.CifarResNet` (the same
layers, option-A shortcuts padded the same way, the same Kaiming-normal initialisation, the re-balancing block's
included); the ImageNet networks are torchvision's, with torchvision's initialisation (the authors' ``BBN_ResNet``
keeps PyTorch's default layer initialisation); the pooling follows each branch instead of the concatenation (the
same numbers: the average of a concatenation is the concatenation of the averages). ``bbn_resnet8`` (one block
per stage) makes both branches out of the stage's only, downsampling block and ends the trunk after stage 2, where
the authors' layer builder, asked for no block, would make one and add the two branch blocks after it.
"""

from __future__ import annotations

import copy

import torch
import torchvision
from torch import nn

from ltcl.errors import UserError
from ltcl.losses.bbn import bilateral_mix
from ltcl.models.registry import BackboneRequest, BuiltBackbone, register_backbone
from ltcl.models.resnet_cifar import CIFAR_RESNETS, BasicBlock, CifarResNet


class BilateralBranches(nn.Module):
    """A trunk shared by two residual blocks of the same shape, each followed by global average pooling.

    Args:
        trunk: (B, 3, H, W) -> (B, C_in, h, w) feature maps.
        conventional: the conventional-learning branch's block, (B, C_in, h, w) -> (B, F, h', w').
        rebalancing: the re-balancing branch's block, the same shapes.
        branch_features: F.

    ``out_features`` is 2F: ``forward`` returns ``[f_c ; f_r]``.
    """

    def __init__(self, trunk: nn.Module, conventional: nn.Module, rebalancing: nn.Module, branch_features: int):
        super().__init__()
        self.trunk = trunk
        self.conventional = conventional
        self.rebalancing = rebalancing
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.branch_features = branch_features
        self.out_features = 2 * branch_features

    def _pooled(self, block: nn.Module, maps: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(block(maps)), 1)

    def forward_branches(
        self, x_conventional: torch.Tensor, x_rebalancing: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B_c, 3, H, W) and (B_r, 3, H, W) images -> the pooled features (B_c, F) of the conventional branch on
        the first and (B_r, F) of the re-balancing branch on the second; the trunk runs once on each batch."""
        f_c = self._pooled(self.conventional, self.trunk(x_conventional))
        f_r = self._pooled(self.rebalancing, self.trunk(x_rebalancing))
        return f_c, f_r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 2F): both branches on the same images with equal weights (BBN's test rule)."""
        shared = self.trunk(x)
        return bilateral_mix(self._pooled(self.conventional, shared), self._pooled(self.rebalancing, shared), 0.5)


class _CifarTrunk(nn.Module):
    """A :class:`CifarResNet` up to its last block (stem, stages 1-2, stage 3 without its last block)."""

    def __init__(self, net: CifarResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.layer1, self.layer2 = net.conv1, net.bn1, net.layer1, net.layer2
        self.layer3 = nn.Sequential(*list(net.layer3)[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


def bilateral_cifar_resnet(depth: int) -> BilateralBranches:
    """The CIFAR ResNet of ``depth`` with its last block duplicated: 2 x 64 features."""
    net = CifarResNet(depth)
    last = net.layer3[-1]
    stride = last.conv1.stride[0]
    twin = BasicBlock(last.conv1.in_channels, last.conv2.out_channels, stride)
    for module in twin.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)  # as CifarResNet initialises its convolutions
    return BilateralBranches(_CifarTrunk(net), last, twin, CifarResNet.out_features)


TORCHVISION_BILATERAL = {"bbn_resnet50": "resnet50", "bbn_resnext50_32x4d": "resnext50_32x4d"}


def bilateral_torchvision(name: str) -> BilateralBranches:
    """torchvision's ResNet ``name`` with its last bottleneck duplicated: 2 x 2048 features."""
    net = torchvision.models.get_model(name, weights=None)
    last = net.layer4[-1]
    twin = copy.deepcopy(last)
    for module in twin.modules():  # torchvision's own initialisation (ResNet.__init__)
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    stages = list(net.layer4)[:-1]
    trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, *stages)
    return BilateralBranches(trunk, last, twin, net.fc.in_features)


BILATERAL_BACKBONES = (*(f"bbn_{n}" for n in CIFAR_RESNETS), *TORCHVISION_BILATERAL)


def _build(request: BackboneRequest) -> BuiltBackbone:
    if request.pretrained:
        raise UserError(f"model.pretrained is for timm/ and open_clip/ backbones; {request.name} starts from scratch "
                        "or loads a local file (model.weights).")  # fmt: skip
    if request.kwargs:
        raise UserError(f"model.backbone_kwargs must be empty for {request.name}, got {dict(request.kwargs)}.")
    if request.name in TORCHVISION_BILATERAL:
        module = bilateral_torchvision(TORCHVISION_BILATERAL[request.name])
    else:
        module = bilateral_cifar_resnet(int(request.name.removeprefix("bbn_resnet")))
    return BuiltBackbone(module, module.out_features)


register_backbone(
    "bbn",
    _build,
    names=BILATERAL_BACKBONES,
    paper="Zhou et al., CVPR 2020 (BBN: shared trunk, the last block twice; for loss.objective bbn)",
)
