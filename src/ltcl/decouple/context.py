"""The context a re-fitter works in (:class:`RefitContext`): the frozen network, the data of the re-fit, and the
helpers that compute backbone features, score a classifier on them and evaluate the network on a split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ltcl.config import Config
from ltcl.data.augment import build_test_transform
from ltcl.data.build import DataBundle
from ltcl.data.datasets import build_split
from ltcl.engine.distributed import DistributedContext
from ltcl.engine.evaluate import EvalResult, accuracy_from_counts, autocast_context, evaluate_run
from ltcl.engine.recipe import eval_loader, model_views
from ltcl.errors import UserError


class RefitContext:
    """The frozen network and the data of a re-fit, with the helpers a re-fitter uses.

    Attributes:
        cfg: the source run's config (with the accepted --set values); model: its network, every parameter
            frozen, in evaluation mode; data: the training split (one view), validation and test splits;
        device, amp: where and in which precision the backbone runs; run_dir: the re-fit's directory.
    """

    def __init__(
        self, cfg: Config, model: nn.Module, data: DataBundle, device: torch.device, amp: str, run_dir: Path
    ) -> None:
        self.cfg, self.model, self.data, self.device, self.amp = cfg, model, data, device, amp
        self.run_dir = run_dir
        self.ctx = DistributedContext(0, 1, 0, device)
        self.views = model_views(cfg)

    @property
    def class_counts(self) -> list[int]:
        return self.data.train_counts

    def loader(self, dataset) -> Any:
        """Evaluation batches ``(images, labels)`` of ``dataset`` in its order (None for None)."""
        return eval_loader(self.cfg, self.views, dataset, self.ctx)

    @torch.no_grad()
    def features(self, loader) -> tuple[Tensor, Tensor]:
        """(N, F) float32 backbone features, in evaluation mode, and (N,) labels of every batch of ``loader``."""
        self.model.eval()
        feats, labels = [], []
        for images, y in loader:
            feats.append(self.backbone(images.to(self.device, non_blocking=True)))
            labels.append(torch.as_tensor(y).to(self.device))
        return torch.cat(feats), torch.cat(labels)

    def backbone(self, images: Tensor) -> Tensor:
        if self.cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(self.device, self.amp):
            return self.model.backbone(images).float()

    def train_plain(self):
        """The training images with the evaluation transform (no augmentation), in dataset order."""
        dataset = build_split(self.cfg.data, "train", build_test_transform(self.views))
        if list(dataset.class_counts()) != list(self.class_counts):
            raise UserError("The training split read again has other class counts; check data.root.")
        return dataset

    def split(self, name: str):
        return {"val": self.data.val, "test": self.data.test}[name]

    def score(self, classifier: nn.Module, features: Tensor, labels: Tensor) -> EvalResult:
        """Many / Medium / Few / All of ``classifier`` on precomputed features (the evaluation's precision)."""
        classifier.eval()
        with torch.no_grad(), autocast_context(self.device, self.amp):
            logits = classifier(features).float()
        num_classes = len(self.class_counts)
        hits = (logits.argmax(1) == labels).double().cpu()
        correct = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels.cpu(), hits)
        seen = torch.bincount(labels.cpu(), minlength=num_classes).double()
        d = self.cfg.data
        return accuracy_from_counts(correct, seen, self.class_counts, many=d.many_threshold, few=d.few_threshold)

    def evaluate(self, split: str) -> EvalResult | None:
        """The network as it stands (its current classifier) on ``split``, as ``ltcl eval`` scores it."""
        dataset = self.split(split)
        if dataset is None:
            return None
        return evaluate_run(self.cfg, self.model, self.loader(dataset), self.class_counts, self.device, self.amp)
