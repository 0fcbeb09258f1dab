"""Using a trained checkpoint: rebuild its model, evaluate a split, predict images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from ltcl.config import Config, apply_override, from_dict
from ltcl.data.augment import build_test_transform
from ltcl.data.datasets import build_split, load_image
from ltcl.engine import checkpoint as ckpt
from ltcl.engine.distributed import DistributedContext
from ltcl.engine.evaluate import EvalResult, evaluate
from ltcl.losses.functional import log_prior


@dataclass
class TrainedModel:
    model: torch.nn.Module
    cfg: Config
    class_counts: list[int]
    class_names: list[str]
    device: torch.device
    epoch: int


def load_trained_model(path: str, overrides: Sequence[str] = (), device: str = "auto") -> TrainedModel:
    """Rebuilds the network of a checkpoint (its own config, plus ``--set`` overrides) and loads its weights."""
    from ltcl.engine.trainer import build_model  # the trainer's own model recipe, so that the keys match

    state = ckpt.load_checkpoint(path)
    values = state["config"]
    for text in overrides:
        apply_override(values, text)
    cfg = from_dict(values)
    resolved = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                            ("cpu" if device == "auto" else device))
    ctx = DistributedContext(0, 1, 0, resolved)
    counts = list(state["class_counts"])
    model = build_model(cfg, len(counts), ctx)
    model.load_state_dict(state["model"])
    model.eval()
    return TrainedModel(model, cfg, counts, list(state["class_names"]), resolved, int(state["epoch"]))


def evaluation_split(cfg: Config, split: str):
    """The ``val`` or ``test`` dataset of ``cfg`` with the test transform; a missing split is a ValueError."""
    dataset = build_split(cfg.data, split, build_test_transform(cfg.views))
    if dataset is None:
        raise ValueError(
            f"Dataset {cfg.data.dataset} has no '{split}' split (set data.{split}_list or use --split test)."
        )
    return dataset


def evaluate_split(trained: TrainedModel, split: str) -> EvalResult:
    """Many / Medium / Few / All of the checkpoint on the configured ``val`` or ``test`` split."""
    cfg = trained.cfg
    dataset = evaluation_split(cfg, split)
    loader = DataLoader(dataset, batch_size=cfg.data.eval_batch_size, num_workers=cfg.data.num_workers)
    return evaluate(trained.model, loader, trained.class_counts, trained.device,
                    many=cfg.data.many_threshold, few=cfg.data.few_threshold)


@torch.no_grad()
def predict_images(trained: TrainedModel, paths: Sequence[str], top_k: int = 5,
                   logit_adjust_tau: float = 0.0) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for each image file.

    Args:
        logit_adjust_tau: post-hoc logit adjustment (Menon et al.): subtract ``tau * log prior`` from the logits
            before the softmax; 0 leaves them as trained.
    """
    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}.")
    transform = build_test_transform(trained.cfg.views)
    images = torch.stack([transform(load_image(p)) for p in paths]).to(trained.device)
    logits = trained.model(images, with_projection=False).logits.float()
    if logit_adjust_tau:
        logits = logits - logit_adjust_tau * log_prior(trained.class_counts, device=logits.device)
    probabilities = logits.softmax(dim=1)
    k = min(top_k, probabilities.shape[1])
    values, indices = probabilities.topk(k, dim=1)
    return [[(trained.class_names[j], float(p)) for p, j in zip(vs.tolist(), js.tolist())]
            for vs, js in zip(values, indices)]
