"""An exponential moving average of the model's trainable parameters (``train.ema_decay``, timm's ModelEma).

After every optimisation step ``ema = decay * ema + (1 - decay) * parameter`` for every parameter that trains,
on the device and without reading anything back. Frozen parameters equal their average, and buffers (BatchNorm's
running statistics) are not averaged: the averaged model uses the live model's, i.e. they are copied (timm's
ModelEmaV3 averages buffers too; a copy keeps statistics that match the current weights' activations only
approximately either way, and costs no memory). So only the trainable tensors are stored, which for a fine-tuned
foundation model with a frozen or LoRA backbone is a small fraction of it.

The average is of the unwrapped model (``TrainState.model``, never the DDP or compiled wrapper), and the same on
every process (their updates are identical). It starts from the weights before the first step. A method's own
trainable modules (BCL's prototype head) are training-only and not averaged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class ModelEma:
    """The moving average of ``model``'s trainable parameters.

    Args:
        model: the unwrapped network.
        decay: in [0, 1); the weight of the old average.

    Attributes:
        averages: parameter name -> tensor, each the shape, dtype and device of its parameter.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}.")
        self.decay = float(decay)
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        live = dict(model.named_parameters())
        self._live = [live[n] for n in self.names]
        self.averages: dict[str, Tensor] = {n: live[n].detach().clone() for n in self.names}

    @torch.no_grad()
    def update(self) -> None:
        """``ema += (1 - decay) * (parameter - ema)`` for every averaged tensor, in one fused call per dtype
        (no host synchronisation)."""
        averages = list(self.averages.values())
        live = [p.detach() for p in self._live]
        torch._foreach_lerp_(averages, live, 1.0 - self.decay)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Inside the block ``model`` holds the averaged parameters (and its own buffers); its trained ones come back
        after it, exactly (they are swapped, not recomputed)."""
        live = dict(model.named_parameters())
        with torch.no_grad():
            for name in self.names:
                live[name].data, self.averages[name] = self.averages[name], live[name].data
        try:
            yield
        finally:
            with torch.no_grad():
                for name in self.names:
                    live[name].data, self.averages[name] = self.averages[name], live[name].data

    def state_dict(self) -> dict:
        """The averages on the CPU, by parameter name, and the decay."""
        return {"decay": self.decay, "averages": {n: t.detach().cpu() for n, t in self.averages.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Continues from :meth:`state_dict`'s averages (every averaged name must be there)."""
        saved = state["averages"]
        missing = [n for n in self.names if n not in saved]
        if missing:
            raise ValueError(f"The saved moving average lacks {len(missing)} parameters, first {missing[0]}.")
        with torch.no_grad():
            for name in self.names:
                self.averages[name].copy_(saved[name])


def with_averages(model_state: dict[str, Tensor], ema_state: dict | None) -> dict[str, Tensor]:
    """A checkpoint's model state dict with its moving averages in place of the trained parameters (the weights
    a run with ``train.ema_decay`` evaluates); ``model_state`` itself when the checkpoint has no average."""
    if not ema_state:
        return model_state
    return {**model_state, **ema_state["averages"]}
