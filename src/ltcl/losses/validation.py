"""Input checks of the losses' public functions, and helpers shared by the equations.

The public functional API (``ltcl.losses.functional``, ``gpaco_loss``, ``ldam_loss``, ``balanced_contrastive_loss``)
validates everything it is given, including values, which costs host synchronisations on an accelerator. The loss
modules of the training path check what costs no synchronisation: shapes and dtypes (tensor metadata), and the
range of the labels only while they are on the CPU (see :func:`check_labels`); on an accelerator the labels' values
are the datasets' business, which validate them where they enter the pipeline.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """float32 for half precision inputs (similarities and log-sum-exp need it), else the input's dtype."""
    return torch.promote_types(tensor.dtype, torch.float32)


def check_labels(
    labels: Tensor, rows: int, num_classes: int | None, name: str = "labels", *, sync: bool = True
) -> None:
    """Checks class-index labels: a 1-D ``torch.int64`` tensor of ``rows`` entries with values in
    [0, num_classes) (only ``>= 0`` when ``num_classes`` is None).

    Type, shape and dtype come from the tensor's metadata and never wait for the device. The range has to read the
    values: on the CPU they are read straight from memory (numpy, not a torch op: nothing to wait for, and nothing
    that a host-synchronisation count sees); elsewhere only with ``sync=True`` (the functional API), a host
    synchronisation. The loss modules pass ``sync=False``, so that the training step never waits for the device:
    labels on an accelerator get their dtype and shape checked, their values were checked by the dataset.

    Raises:
        ValueError: one sentence naming ``name``, what was expected and what was given.
    """
    if not isinstance(labels, Tensor) or labels.dim() != 1:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"{name} must be a 1-D tensor of class indices, got {shape}.")
    if labels.dtype != torch.int64:
        raise ValueError(f"{name} must hold integer class indices of dtype torch.int64, got {labels.dtype}.")
    if labels.shape[0] != rows:
        raise ValueError(
            f"{name} must have shape ({rows},): it has {labels.shape[0]} entries but there are {rows} rows of inputs."
        )
    if labels.numel() == 0:
        return
    if labels.device.type == "cpu" and type(labels) is Tensor and not torch.compiler.is_compiling():
        values = labels.numpy()
        low, high = int(values.min()), int(values.max())
    elif sync:
        low, high = (int(v) for v in torch.aminmax(labels))
    else:
        return
    if low < 0:
        raise ValueError(f"{name} must be >= 0, got {low}.")
    if num_classes is not None and high >= num_classes:
        raise ValueError(f"{name} must be < the number of classes {num_classes}, got {high}.")


def check_features(features: Tensor, name: str = "features", finite: bool = True) -> None:
    if not isinstance(features, Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"{name} must be a 2-D tensor (N, D), got {shape}.")
    if not features.dtype.is_floating_point:
        raise ValueError(f"{name} must be floating point, got dtype {features.dtype}.")
    if finite and not bool(torch.isfinite(features).all()):
        raise ValueError(f"{name} contain NaN or inf values.")


def check_finite_result(
    loss: Tensor, features: Tensor, centers: Tensor | None, negative_weights: Tensor | None
) -> None:
    """Finiteness is checked on the (small) result: a NaN or inf in the inputs, or a negative weight (whose log is
    NaN), reaches every anchor's term, so only a non-finite result needs the inputs inspected to name the culprit."""
    if bool(torch.isfinite(loss).all()):
        return
    for name, tensor in (("features", features), ("centers", centers)):
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} contain NaN or inf values.")
    if negative_weights is not None and not bool((torch.isfinite(negative_weights) & (negative_weights >= 0)).all()):
        raise ValueError("negative_weights must be finite and non-negative.")


def check_temperature(temperature: float) -> None:
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}.")


def check_class_counts(class_counts, name: str = "class_counts") -> Tensor:
    """Validates per-class training counts and returns them as a float64 (C,) tensor.

    Raises:
        ValueError: not a non-empty 1-D sequence, or a count that is zero, negative or not finite.
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float64).detach().cpu()
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence (one count per class), got {tuple(counts.shape)}.")
    bad = ~torch.isfinite(counts) | (counts <= 0)
    if bool(bad.any()):
        index = int(bad.nonzero()[0])
        raise ValueError(
            f"{name} must all be positive, but class {index} has {counts[index].item():g} "
            f"(a class without training images cannot be weighted or adjusted)."
        )
    return counts


def anchor_rows(anchors: slice | None, rows: int) -> tuple[int, int]:
    if anchors is None:
        return 0, rows
    start, stop, step = anchors.indices(rows)
    if step != 1 or stop < start:
        raise ValueError(f"anchors must be a contiguous slice of the {rows} rows, got {anchors}.")
    return start, stop


def zero_with_graph(features: Tensor) -> Tensor:
    """A scalar 0 connected to ``features``, so that ``backward()`` works on a batch without positives."""
    return features.sum() * 0.0


def check_logits(logits: Tensor, labels: Tensor, num_classes: int) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a 2-D tensor (N, C), got {shape}.")
    if logits.shape[1] != num_classes:
        raise ValueError(f"logits have {logits.shape[1]} classes but class_counts has {num_classes}.")
    check_labels(labels, logits.shape[0], num_classes)
