"""What a training step needs and what a checkpoint holds, in one object."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ltcl.config import Config
from ltcl.dist import all_reduce_sum, distributed_world
from ltcl.engine.distributed import DistributedContext
from ltcl.engine.ema import ModelEma
from ltcl.engine.optim import GroupSpec

# The metrics rows of checkpoints written before the statistics had names (format 2).
LEGACY_PROGRESS_NAMES = ("loss", "loss_cls", "loss_con", "correct", "images")


@dataclass
class EpochProgress:
    """Named running sums of the current epoch, kept on the training device and saved with every checkpoint, so
    that an epoch interrupted and resumed still gets one metrics row that covers all its batches.

    Attributes:
        names: what ``sums`` holds: ``loss``, then the objective's ``stat_names`` (each a sum of value * images),
            then ``correct`` (first-view predictions) and ``images``.
        sums: (len(names),) float64.
        conflicts: (2, C) int64: SCL's conflicting and all positive pairs per class (train.monitor_conflicts).
        seconds: training time of the epoch so far.
    """

    names: tuple[str, ...]
    sums: Tensor
    conflicts: Tensor
    seconds: float = 0.0
    _clock: float | None = None

    def start_clock(self) -> None:
        self._clock = time.perf_counter()

    def stop_clock(self) -> None:
        self.seconds = self.elapsed()
        self._clock = None

    def elapsed(self) -> float:
        """Training seconds of the epoch so far, the running stretch included."""
        return self.seconds + (time.perf_counter() - self._clock if self._clock is not None else 0.0)

    @classmethod
    def empty(cls, stat_names: tuple[str, ...], num_classes: int, device: torch.device) -> EpochProgress:
        """Zero sums for ``loss``, the objective's statistics, ``correct`` and ``images``."""
        names = ("loss", *stat_names, "correct", "images")
        return cls(
            names,
            torch.zeros(len(names), dtype=torch.float64, device=device),
            torch.zeros(2, num_classes, dtype=torch.int64, device=device),
        )

    def add_step(self, values: Tensor, correct: Tensor, images: int) -> None:
        """Adds one step: ``values`` (len(names) - 2,) the loss and statistics (means over the step's images),
        ``correct`` a 0-d count, ``images`` the step's batch size. No host synchronisation."""
        self.sums[:-2] += values.double() * images
        self.sums[-2] += correct
        self.sums[-1] += images

    def means(self, totals: list[float]) -> dict[str, float]:
        """Per-image means of all-reduced ``totals`` (``sums`` of every process), keyed by name."""
        seen = totals[-1] or 1.0
        return {name: value / seen for name, value in zip(self.names[:-2], totals)} | {
            "correct": totals[-2] / seen,
            "images": totals[-1],
        }

    def state_dict(self) -> dict:
        """Sums over all processes (every process calls this at the same step; rank 0 writes them)."""
        return {
            "names": list(self.names),
            "sums": all_reduce_sum(self.sums.clone()).cpu(),
            "conflicts": all_reduce_sum(self.conflicts.clone()).cpu(),
            "seconds": self.elapsed(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Rank 0 continues from the saved global sums, the other processes from zero, so that the epoch's
        final all-reduce counts every batch once. Sums are matched by name (a checkpoint of format 2 holds the five
        of ``LEGACY_PROGRESS_NAMES``); a name the checkpoint lacks starts from zero."""
        rank, _ = distributed_world()
        saved = dict(zip(state.get("names", LEGACY_PROGRESS_NAMES), state["sums"].tolist()))
        values = [saved.get(name, 0.0) if rank == 0 else 0.0 for name in self.names]
        self.sums.copy_(torch.tensor(values, dtype=torch.float64))
        self.conflicts.copy_(state["conflicts"] if rank == 0 else torch.zeros_like(state["conflicts"]))
        self.seconds = float(state["seconds"])


@dataclass
class NonFiniteFlag:
    """Device-side record of the first step whose loss was not finite; read by the host only now and then.

    Attributes:
        first_step: () int64, the global step (1-based) of the first non-finite loss, 0 while all were finite.
        parts: (P,) bool, which of the recorded values (the loss, then the objective's statistics) was non-finite
            at that step.
        step: () int64 step counter on the device (so marking a step costs no host-to-device copy).
    """

    first_step: Tensor
    parts: Tensor
    step: Tensor

    @classmethod
    def create(cls, num_values: int, device: torch.device) -> NonFiniteFlag:
        return cls(
            torch.zeros((), dtype=torch.int64, device=device),
            torch.zeros(num_values, dtype=torch.bool, device=device),
            torch.zeros((), dtype=torch.int64, device=device),
        )

    def start_at(self, global_step: int) -> None:
        """Counts on from ``global_step`` (a resumed run)."""
        self.step.fill_(global_step)

    def record(self, values: Tensor) -> None:
        """Advances the step counter and marks this step if a value is not finite (no host synchronisation)."""
        self.step.add_(1)
        bad = ~torch.isfinite(values)
        first = (self.first_step == 0) & bad.any()
        self.first_step.copy_(torch.where(first, self.step, self.first_step))
        self.parts.copy_(torch.where(first, bad, self.parts))


@dataclass
class TrainState:
    """Everything one optimisation step reads or changes.

    The stateful objects (``model``, ``objective``, ``optimizer``, ``scaler``, ``progress``, ``ema``) and the
    counters are exactly what a checkpoint stores, under the same names (see :mod:`ltcl.engine.checkpoint`).

    Attributes:
        epoch: epochs completed; batch: batches of the next epoch completed; global_step: optimiser steps so far.
        best: {"all": validation All, "epoch": e} of the best checkpoint so far, or None.
    """

    cfg: Config
    ctx: DistributedContext
    model: nn.Module
    forward: nn.Module  # the model as trained: one forward per view group, DDP-wrapped under torchrun
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    progress: EpochProgress
    amp: str  # none | bf16 | fp16, resolved from train.amp
    steps_per_epoch: int
    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    best: dict | None = None
    nonfinite: NonFiniteFlag | None = field(default=None)
    ema: ModelEma | None = None  # the moving average of the weights (train.ema_decay), saved under "ema"
    trainable: list[nn.Parameter] = field(default_factory=list)  # what the optimiser updates (and clipping sees)
    optimizer_groups: list[GroupSpec] = field(default_factory=list)  # what each optimiser group is (run header)
