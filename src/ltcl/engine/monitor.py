"""What happens between two training steps: progress, reading the device statistics, step checkpoints, interrupts.

The step itself never waits for the device. Every ``train.sync_every`` steps, before every checkpoint and at the
end of every epoch, :meth:`StepMonitor.sync` reads the running loss sums and the non-finite flag in one transfer;
a non-finite loss then stops the run with :class:`NonFiniteLoss` before anything is saved, so a checkpoint on
disk always holds a model whose losses were finite.
"""

from __future__ import annotations

import os
import sys

import torch
from tqdm import tqdm

from ltcl.dist import all_reduce_sum
from ltcl.engine.checkpoint import Checkpointer
from ltcl.engine.interrupts import Interrupted, InterruptGuard, signal_for_tests
from ltcl.engine.state import TrainState
from ltcl.schedule import learning_rate

READABLE = {"loss": "loss", "loss_cls": "classification loss", "loss_con": "contrastive loss"}


class NonFiniteLoss(Exception):
    """Training produced a NaN or inf loss; the message names the epoch, step, learning rate and part."""


class StepMonitor:
    """Called by the loop after every step (see :func:`ltcl.engine.loop.train_one_epoch`).

    Args:
        state: the run's state.
        checkpointer: writes ``checkpoint_last.pt``.
        guard: the active :class:`InterruptGuard`.
        show_bar: draw a progress bar (rank 0 on a terminal).
    """

    def __init__(self, state: TrainState, checkpointer: Checkpointer, guard: InterruptGuard, show_bar: bool) -> None:
        self.state, self.checkpointer, self.guard = state, checkpointer, guard
        self.show_bar = show_bar
        self.bar: tqdm | None = None
        self.test_signal = signal_for_tests()

    def start_epoch(self) -> None:
        state = self.state
        if self.show_bar:
            self.bar = tqdm(
                total=state.steps_per_epoch,
                initial=state.batch,
                leave=False,
                dynamic_ncols=True,
                desc=f"epoch {state.epoch + 1}/{state.cfg.optim.epochs}",
            )

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def after_step(self, state: TrainState) -> bool:
        """Returns False to stop the epoch (an interrupt was saved; the trainer raises :class:`Interrupted`)."""
        train = state.cfg.train
        if self.bar is not None:
            self.bar.update(1)
        if self.test_signal and state.global_step == self.test_signal[0]:
            os.kill(os.getpid(), self.test_signal[1])
        at_sync = state.global_step % train.sync_every == 0
        if at_sync:
            self.sync()
        if self._interrupt_requested(at_sync):
            self.save_last()
            return False
        every = train.checkpoint_every_steps
        if every and state.batch % every == 0 and state.batch < state.steps_per_epoch:
            self.save_last()
        return True

    def _interrupt_requested(self, at_sync: bool) -> bool:
        if not self.state.ctx.enabled:
            return self.guard.requested  # a Python attribute: free to read after every step
        if not at_sync:  # processes must agree on the step: they vote at synchronisation points only
            return False
        vote = torch.tensor([float(self.guard.requested)], device=self.state.ctx.device)
        return bool(all_reduce_sum(vote) > 0)

    def save_last(self) -> None:
        self.sync(weights=True)
        self.checkpointer.save_last(self.state)

    def sync(self, weights: bool = False) -> None:
        """Reads the device statistics (one transfer); raises NonFiniteLoss when a loss was not finite, or, with
        ``weights``, when a parameter or buffer is (a finite loss can still give an update that overflows, and
        BatchNorm statistics can overflow with finite weights)."""
        state = self.state
        flag = state.nonfinite
        progress = state.progress.sums
        values = torch.cat([progress[[0, -1]], flag.first_step.double()[None], flag.parts.double()])
        if state.ctx.enabled:  # every process stops at the same point, whichever saw the non-finite loss
            values = torch.cat([values, all_reduce_sum((flag.first_step > 0).double()[None])])
        loss_sum, images, first_bad, *parts = values.tolist()
        if first_bad:
            raise NonFiniteLoss(self._nonfinite_message(int(first_bad), parts[: flag.parts.numel()]))
        if state.ctx.enabled and parts[-1]:
            raise NonFiniteLoss(
                f"A loss became non-finite on another process by global step {state.global_step}; "
                "that process names the step, and the run stopped without saving."
            )
        tensors = [t for t in state.model.state_dict().values() if t.is_floating_point()] if weights else []
        if tensors and not bool(torch.stack([t.isfinite().all() for t in tensors]).all()):
            lr = learning_rate(state.cfg.optim, state.global_step - 1, state.steps_per_epoch)
            raise NonFiniteLoss(
                f"The model's weights or statistics became non-finite in epoch {state.epoch + 1} (by global step "
                f"{state.global_step}, learning rate {lr:.4g}) although every loss was finite; the run stopped "
                "without saving. Hint: lower optim.lr or use optim.warmup_epochs."
            )
        if self.bar is not None and images:
            lr = learning_rate(state.cfg.optim, state.global_step - 1, state.steps_per_epoch)
            self.bar.set_postfix(loss=f"{loss_sum / images:.3f}", lr=f"{lr:.4g}")

    def interrupted(self) -> Interrupted:
        state, signum = self.state, self.guard.signum or 2
        name = {2: "SIGINT", 15: "SIGTERM"}.get(signum, f"signal {signum}")
        return Interrupted(
            signum,
            f"{name}: stopped after step {state.global_step} (epoch {state.epoch + 1}, batch "
            f"{state.batch} of {state.steps_per_epoch}) and saved {self.checkpointer.run_dir.LAST}; "
            f"continue with --resume {self.checkpointer.run_dir.last_checkpoint}",
        )

    def _nonfinite_message(self, step: int, parts: list[float]) -> str:
        state = self.state
        epoch, batch = (step - 1) // state.steps_per_epoch + 1, (step - 1) % state.steps_per_epoch + 1
        lr = learning_rate(state.cfg.optim, step - 1, state.steps_per_epoch)
        names = ("loss", *state.objective.stat_names)
        bad = [READABLE.get(name, name) for name, flag in zip(names, parts) if flag]
        which = " and ".join(bad[1:] if len(bad) > 1 else bad)  # the parts that failed, or the total alone
        return (
            f"The {which} ({state.cfg.loss.objective}) became non-finite at epoch {epoch}, step {batch} (global "
            f"step {step}, learning "
            f"rate {lr:.4g}); the run stopped without saving, and checkpoint_last.pt (if any) is the last good "
            "state. Hint: lower optim.lr, use optim.warmup_epochs, or try train.amp=none."
        )


def show_progress_bar(cfg_progress: bool, is_main: bool) -> bool:
    """A bar only on a terminal: in a log file tqdm's carriage-return frames are noise."""
    return cfg_progress and is_main and sys.stderr.isatty()
