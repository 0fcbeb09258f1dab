"""Using a trained checkpoint from any directory: rebuild its model, evaluate a split, classify image files.

The checkpoint carries everything but the evaluation images: the config (with absolute data paths), the class
counts and names, and every weight, so evaluating needs only the split it evaluates and nothing is downloaded.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ltcl.config import Config, from_dict
from ltcl.data.augment import build_test_transform
from ltcl.data.datasets import IMAGE_EXTENSIONS, build_split, load_image
from ltcl.engine.checkpoint import load_checkpoint, non_finite_tensors
from ltcl.engine.distributed import pick_device
from ltcl.engine.ema import with_averages
from ltcl.engine.evaluate import EvalResult, autocast_context, evaluate_run
from ltcl.engine.recipe import build_model, loader_options, model_views
from ltcl.engine.resume import EVAL_MAY_CHANGE, checked_config, from_dict_values, resolved_values
from ltcl.engine.runtime import resolve_amp
from ltcl.errors import UserError
from ltcl.losses.functional import log_prior


class BrokenModel(ValueError):
    """A checkpoint whose weights hold NaN or inf: no accuracy or prediction is reported for it."""


@dataclass
class TrainedModel:
    model: torch.nn.Module
    cfg: Config
    class_counts: list[int]
    class_names: list[str]
    device: torch.device
    epoch: int
    amp: str


def trained_network(path: str) -> torch.nn.Module:
    """The network of a trained run's checkpoint, on the CPU: what the engine gives a method that learns from one
    (ObjectiveSetup.load_network)."""
    return load_trained_model(path, device="cpu").model


def load_trained_model(
    path: str | Path, overrides: Sequence[str] = (), device: str = "auto", local_rank: int = 0
) -> TrainedModel:
    """Rebuilds the network of a checkpoint (its own config) and loads its weights.

    Args:
        overrides: ``--set`` values; only keys that leave the model unchanged are accepted (data paths, loader
            settings, shot-group thresholds), others raise one ValueError naming them.
        device: auto | cpu | cuda.
        local_rank: the GPU of this process under torchrun (``LOCAL_RANK``).

    Raises:
        BrokenModel: the weights hold NaN or inf.
    """
    checkpoint = load_checkpoint(path)
    values = from_dict_values(checkpoint["config"], overrides)  # loads the plugins (at their new place, if given)
    saved = resolved_values(checkpoint["config"], with_plugins=False)
    checked_config(saved, values, EVAL_MAY_CHANGE, f"Evaluating {path} with these --set values")
    cfg = from_dict(values)
    resolved = pick_device(device, local_rank, key="--device")
    counts = list(checkpoint["class_counts"])
    model, _ = build_model(cfg, len(counts), resolved, class_names=checkpoint["class_names"], load_weights=False)
    # A run with train.ema_decay was evaluated, and chose its best checkpoint, on the moving average: so is this.
    weights = with_averages(checkpoint["model"], checkpoint.get("ema"))
    broken = non_finite_tensors(weights)
    if broken:
        raise BrokenModel(
            f"Checkpoint {path} holds NaN or inf weights ({len(broken)} tensors, first "
            f"{broken[0]}): the run diverged, so no accuracy or prediction is reported for it."
        )
    model.load_state_dict(weights)
    model.eval()
    # The training precision, so that evaluating reproduces the run's own numbers (fp16 needs CUDA: auto elsewhere).
    amp, _ = resolve_amp("auto" if cfg.train.amp == "fp16" and resolved.type != "cuda" else cfg.train.amp, resolved)
    return TrainedModel(model, cfg, counts, list(checkpoint["class_names"]), resolved, int(checkpoint["epoch"]), amp)


def evaluation_split(trained: TrainedModel, split: str):
    """The ``val`` or ``test`` dataset of the checkpoint's config with the test transform (only that split is
    read: the class names come from the checkpoint); a missing split is a ValueError."""
    cfg = trained.cfg
    transform = build_test_transform(model_views(cfg))
    dataset = build_split(cfg.data, split, transform, class_names=trained.class_names)
    if dataset is None:
        raise UserError(f"Dataset {cfg.data.dataset} has no '{split}' split here: {missing_split_hint(cfg, split)}.")
    return dataset


def missing_split_hint(cfg: Config, split: str) -> str:
    """How this dataset gets the missing split (each dataset takes its splits from a different place)."""
    other = "test" if split == "val" else "val"
    return f"{split_source(cfg, split)}, or use --split {other}"


def split_source(cfg: Config, split: str) -> str:
    """Where this dataset takes ``split`` from, as an instruction (``set data.val_list to a split list``)."""
    if cfg.data.dataset == "image_folder":
        return f"add a {split}/ folder of class folders under data.root"
    if cfg.data.dataset in ("imagenet_lt", "places_lt", "inat2018"):
        return f"set data.{split}_list to a split list"
    # CIFAR and the digits take validation images from the unused training images; their test set is fixed
    return "set data.val_per_class to N images per class"


class _AdjustedLogits(torch.nn.Module):
    """The model with ``adjustment`` (C,) subtracted from its logits (post-hoc logit adjustment)."""

    def __init__(self, model: torch.nn.Module, adjustment: torch.Tensor) -> None:
        super().__init__()
        self.model, self.num_classes = model, model.num_classes
        self.register_buffer("adjustment", adjustment)

    def forward(self, images: torch.Tensor, **kwargs):
        out = self.model(images, **kwargs)
        return out._replace(logits=out.logits.float() - self.adjustment)


def evaluate_split(trained: TrainedModel, split: str, logit_adjust_tau: float = 0.0) -> EvalResult:
    """Many / Medium / Few / All of the checkpoint on its ``val`` or ``test`` split, with the training precision
    (the training's own evaluation path; ``ltcl eval``'s full report is :mod:`ltcl.evaluation`).

    Args:
        logit_adjust_tau: post-hoc logit adjustment, as :func:`predict_images`: the prediction is the argmax of
            ``logits - tau * log prior`` (the training prior); 0 evaluates the logits as trained.
    """
    cfg = trained.cfg
    loader = DataLoader(
        evaluation_split(trained, split), batch_size=cfg.data.eval_batch_size, **loader_options(cfg, trained.device)
    )
    model = trained.model
    if logit_adjust_tau:
        model = _AdjustedLogits(model, logit_adjust_tau * log_prior(trained.class_counts, device=trained.device))
    return evaluate_run(cfg, model, loader, trained.class_counts, trained.device, trained.amp)


def collect_images(items: Sequence[str]) -> list[Path]:
    """Image files from files, folders (searched recursively, sorted) and quoted glob patterns, in the given order.

    Raises:
        FileNotFoundError: an item matches nothing.
    """
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not found:
                raise FileNotFoundError(f"Folder {path} holds no image files ({', '.join(IMAGE_EXTENSIONS)}).")
            paths += found
        elif path.exists():
            paths.append(path)
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matches:
                raise FileNotFoundError(f"The pattern {item} matches no file.")
            paths += matches
        else:
            paths.append(path)  # reported as unreadable by predict_images, which goes on with the others
    return paths


@torch.no_grad()
def predict_images(
    trained: TrainedModel, paths: Sequence[Path], top_k: int = 5, logit_adjust_tau: float = 0.0, batch_size: int = 0
) -> Iterator[tuple[Path, list[tuple[str, float]] | None, str | None]]:
    """Top-k (class name, probability) of each image file, batch by batch (bounded memory).

    Args:
        logit_adjust_tau: post-hoc logit adjustment (Menon et al.): subtract ``tau * log prior`` from the logits
            before the softmax; 0 leaves them as trained.
        batch_size: images per forward pass (0: the config's ``data.eval_batch_size``).

    Yields:
        (path, top-k list, None) for a readable image; (path, None, reason) for one that cannot be read.
    """
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}.")
    transform = build_test_transform(model_views(trained.cfg))
    size = batch_size or trained.cfg.data.eval_batch_size
    adjustment = logit_adjust_tau * log_prior(trained.class_counts, device=trained.device)
    for begin in range(0, len(paths), size):
        chunk, images, failed = paths[begin : begin + size], [], {}
        for path in chunk:
            try:
                images.append(transform(load_image(path)))
            except (OSError, ValueError) as err:
                failed[path] = str(err)
        top = iter(_top_k(trained, images, adjustment, top_k) if images else [])
        for path in chunk:
            yield (path, None, failed[path]) if path in failed else (path, next(top), None)


def _top_k(trained: TrainedModel, images: list[torch.Tensor], adjustment: torch.Tensor, k: int):
    batch = torch.stack(images).to(trained.device)
    if trained.cfg.train.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    with autocast_context(trained.device, trained.amp):
        logits = trained.model(batch, with_projection=False).logits.float()
    probabilities = (logits - adjustment).softmax(dim=1)
    values, indices = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return [
        [(trained.class_names[j], float(p)) for p, j in zip(vs.tolist(), js.tolist())]
        for vs, js in zip(values, indices)
    ]
