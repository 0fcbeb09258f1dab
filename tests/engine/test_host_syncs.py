"""The training step does not wait for the device: at most one host synchronisation per step.

A synchronisation is an op whose result the host must read before it can go on: ``aten._local_scalar_dense``
(behind ``item()``, ``bool()``, ``int()``, ``float()`` of a tensor), ``nonzero`` and boolean-mask indexing (the
output size depends on the values), ``bincount`` (sizes its output from the maximum), ``unique``. On the CPU they
cost nothing, on a GPU each one stalls the pipeline; counting them on the CPU keeps them from creeping back.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ltcl.config import load_config
from ltcl.engine import loop
from ltcl.engine.trainer import train
from tests.engine.test_training import DIGITS

SYNC_OPS = {"_local_scalar_dense", "nonzero", "bincount", "unique", "_unique2", "unique_dim", "masked_select", "item"}


class CountSyncs(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        mask_index = name == "index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else []) or []
        )
        if name in SYNC_OPS or mask_index:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


# Fine-tuning's optimisation: AdamW over four groups, two micro-batches, clipping and the moving average add no wait.
FINE_TUNING = ["optim.name=adamw", "optim.backbone_lr_scale=0.1", "optim.accumulate_steps=2",
               "optim.clip_grad_norm=1.0", "train.ema_decay=0.9", "loss.label_smoothing=0.1"]  # fmt: skip


@pytest.mark.parametrize("objective, extra", [("bs+acl", []), ("bs+scl", []), ("bs", []), ("bs", FINE_TUNING)], ids=str)
def test_device_augmented_training_waits_for_the_host_at_most_once_per_step(tmp_path, monkeypatch, objective, extra):
    counted = []

    def counting_epoch(state, loader, monitor):
        before = state.global_step
        with CountSyncs() as mode:  # the loader's augmentation, forward, loss, backward, SGD and the monitor
            finished = original(state, loader, monitor)
        counted.append((state.global_step - before, list(mode.calls)))
        return finished

    original = loop.train_one_epoch
    monkeypatch.setattr("ltcl.engine.trainer.train_one_epoch", counting_epoch)
    cfg = load_config(
        DIGITS,
        [
            "data.augment_on=device",
            "model.backbone=resnet8",
            "data.batch_size=32",
            "optim.epochs=2",
            "train.max_steps_per_epoch=4",
            "train.progress=false",
            "train.tensorboard=false",
            f"loss.objective={objective}",
            "train.sync_every=1000",
            f"train.output_dir={tmp_path}",
            *extra,
        ],
    )
    train(cfg)
    steps = sum(n for n, _ in counted)
    calls = [c for _, cs in counted for c in cs]
    assert steps == 8
    # The one wait that stays: selecting the contrastive views, whose number varies from batch to batch.
    expected = 0 if objective == "bs" else 1
    assert len(calls) <= expected * steps, calls
