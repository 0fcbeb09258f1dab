"""Trainable backbone parameters of each fine-tuning mode on a ViT (the table in ltcl.models.finetune).

Builds ``timm/<model>`` without pretrained weights (nothing is downloaded: only the shapes matter), applies each
mode to the backbone alone and prints a Markdown table: the parameter elements that train, and their share of the
backbone's (adapter parameters included in the total). The heads (projection, classifier) train in every mode and
are not counted. AdaptFormer's default bottleneck depends on the number of classes (LIFT's rule), hence
``--classes``.

    python benchmarks/finetune_param_counts.py                      # ViT-B/16, 1000 classes
    python benchmarks/finetune_param_counts.py --model vit_tiny_patch16_224 --classes 10
"""

from __future__ import annotations

import argparse

from torch import nn

from ltcl.config import ModelConfig
from ltcl.models.finetune import FINETUNE_MODES, parse_finetune
from ltcl.models.timm_backbone import build_timm_backbone

MODES = ("full", "bitfit", "lora:8", "adaptformer", "vpt_shallow:10", "vpt_deep:10", "ssf")


class _Holder(nn.Module):
    """Just a ``backbone`` and ``num_classes``: what :func:`~ltcl.models.finetune.apply_finetune`'s modes read."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes


def count(model: str, mode: str, num_classes: int, kwargs: dict) -> tuple[int, int, int]:
    """(trainable, total, argument) backbone parameter elements of ``mode`` on a fresh ``timm/<model>``."""
    backbone, _ = build_timm_backbone(model, False, kwargs)
    finetune, argument = parse_finetune(mode)
    if argument == 0 and finetune.default is not None:
        argument = finetune.default(backbone, num_classes)
    cfg = ModelConfig(backbone=f"timm/{model}", finetune=mode)
    trains = finetune.select(backbone, argument, cfg)
    params = dict(backbone.named_parameters())
    return sum(params[n].numel() for n in trains), sum(p.numel() for p in params.values()), argument


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224", help="a timm ViT (default: vit_base_patch16_224)")
    parser.add_argument("--classes", type=int, default=1000, help="C, for AdaptFormer's default width (1000)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), help=f"default: {' '.join(MODES)}")
    args = parser.parse_args()
    print(f"timm/{args.model}, random init; {args.classes} classes; backbone parameters only (heads excluded)\n")
    print("| model.finetune | trains | of (backbone + adapters) | share |")
    print("| --- | ---: | ---: | ---: |")
    for mode in args.modes:
        trainable, total, argument = count(args.model, mode, args.classes, {})
        name = mode if ":" in mode or not FINETUNE_MODES.get(mode).argument else f"{mode} (:{argument})"
        print(f"| {name} | {trainable:,} | {total:,} | {100 * trainable / total:.3f}% |")


if __name__ == "__main__":
    main()
