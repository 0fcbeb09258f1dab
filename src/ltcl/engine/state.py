"""What a training step needs and what a checkpoint holds, in one object."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ltcl.config import Config
from ltcl.dist import all_reduce_sum, distributed_world
from ltcl.engine.distributed import DistributedContext


@dataclass
class EpochProgress:
    """Running sums of the current epoch, kept on the training device and saved with every checkpoint, so that
    an epoch interrupted and resumed still gets one metrics row that covers all its batches.

    Attributes:
        sums: (5,) float64: loss * images, classification loss * images, contrastive loss * images, correct
            first-view predictions, images.
        conflicts: (2, C) int64: SCL's conflicting and all positive pairs per class (train.monitor_conflicts).
        seconds: training time of the epoch so far.
    """

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
    def empty(cls, num_classes: int, device: torch.device) -> EpochProgress:
        return cls(
            torch.zeros(5, dtype=torch.float64, device=device),
            torch.zeros(2, num_classes, dtype=torch.int64, device=device),
        )

    def state_dict(self) -> dict:
        """Sums over all processes (every process calls this at the same step; rank 0 writes them)."""
        return {
            "sums": all_reduce_sum(self.sums.clone()).cpu(),
            "conflicts": all_reduce_sum(self.conflicts.clone()).cpu(),
            "seconds": self.elapsed(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Rank 0 continues from the saved global sums, the other processes from zero, so that the epoch's
        final all-reduce counts every batch once."""
        rank, _ = distributed_world()
        self.sums.copy_(state["sums"] if rank == 0 else torch.zeros_like(state["sums"]))
        self.conflicts.copy_(state["conflicts"] if rank == 0 else torch.zeros_like(state["conflicts"]))
        self.seconds = float(state["seconds"])


@dataclass
class NonFiniteFlag:
    """Device-side record of the first step whose loss was not finite; read by the host only now and then.

    Attributes:
        first_step: () int64, the global step (1-based) of the first non-finite loss, 0 while all were finite.
        parts: (2,) bool, which part was non-finite at that step: classification, contrastive.
        step: () int64 step counter on the device (so marking a step costs no host-to-device copy).
    """

    first_step: Tensor
    parts: Tensor
    step: Tensor

    @classmethod
    def create(cls, global_step: int, device: torch.device) -> NonFiniteFlag:
        return cls(
            torch.zeros((), dtype=torch.int64, device=device),
            torch.zeros(2, dtype=torch.bool, device=device),
            torch.full((), global_step, dtype=torch.int64, device=device),
        )

    def record(self, classification: Tensor, contrastive: Tensor | None) -> None:
        """Advances the step counter and marks this step if a part is not finite (no host synchronisation)."""
        self.step.add_(1)
        finite = torch.isfinite(classification)
        bad = torch.stack([~finite, ~torch.isfinite(contrastive) if contrastive is not None else finite & ~finite])
        first = (self.first_step == 0) & bad.any()
        self.first_step.copy_(torch.where(first, self.step, self.first_step))
        self.parts.copy_(torch.where(first, bad, self.parts))


@dataclass
class TrainState:
    """Everything one optimisation step reads or changes.

    The stateful objects (``model``, ``objective``, ``optimizer``, ``scaler``, ``progress``) and the counters are
    exactly what a checkpoint stores, under the same names (see :mod:`ltcl.engine.checkpoint`).

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
