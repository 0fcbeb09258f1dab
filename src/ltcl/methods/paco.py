"""``paco``: parametric contrastive learning (Cui et al., ICCV 2021) with its momentum key encoder and MoCo queue.

One step, as the authors' PaCo/LT/moco/builder.py (``MoCo._train``) and losses.py run it:

- the query is view 1 of each image through the network being trained: its projection ``q`` and its classifier
  logits (the classifier's rows are PaCo's learnable class centres, see :mod:`ltcl.losses.paco`);
- the key is view 2 through the key encoder, a copy of the network made when the run starts (:meth:`PaCo.bind`),
  never trained by SGD: after every optimiser step its parameters move to ``m * key + (1 - m) * query``
  (:meth:`PaCo.after_step`); under torchrun its batch-norm sees a shuffled global batch (MoCo's ShuffleBN);
- the loss contrasts the queries with the other queries, the keys of the (global) batch and a queue of the keys of
  earlier batches, with their labels (:class:`ltcl.losses.paco.PaCoLoss`); after the step the global batch's keys
  and labels replace the oldest in the queue.

What ltcl does differently from the authors' code, and why:

- The engine runs the network on every view the config gives (it knows nothing of a method's views), so view 2
  (and any further view) also goes through the query network: its outputs are not used by the loss, but it costs
  a forward pass and, where view 1 and view 2 have the same size and so share one forward batch, the query
  network's batch-norm statistics mix the two views (the authors' query encoder sees view 1 only). Forwarding only
  the views a method uses needs an engine change (a method attribute naming its views), not made here.
- Under torchrun the contrast set is the global batch (queries gathered with gradient, keys of every process), so
  the loss is that of one process on the global batch; the authors contrast each GPU's queries with that GPU's
  queries and keys only (and the shared queue). One process, as in their CIFAR runs: the same.
- The queue starts empty and a slot enters the loss once it holds a key; the authors' queue starts as Gaussian
  noise with random labels that take part until the queue has turned over once (its ``queue_fill`` statistic here).
- The queue is a ring buffer of any size; the authors require the queue size to be a multiple of the global batch.
- The key encoder's momentum update runs after each optimiser step instead of before the next key computation:
  the same sequence of key encoders (the authors' first update, before any SGD step, changes nothing).
- ShuffleBN's permutation is a hash of the step number (the same on every process, no broadcast, and the same after
  a resume) instead of rank 0's ``randperm`` broadcast to the others.
- The key encoder also averages the classifier (the authors keep an averaged ``linear_k`` they never use) and the
  whole network is copied; only its projections are used.

Statistics: ``queue_fill`` (the fraction of the queue holding keys when the loss was computed) and ``positives``
(the mean number of sample positives of a query: other queries, keys and queued keys of its class).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ltcl.config import ConfigError
from ltcl.config.checks import AT_LEAST_1, MOMENTUM, NON_NEGATIVE
from ltcl.dist import distributed_world, gather_equal_rows
from ltcl.losses.paco import PaCoLoss
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.registry import register_objective

QUERY_VIEW, KEY_VIEW = 0, 1  # 0-based: the query is view 1, the key view 2 (paco_cifar.py lines 461-466)


@dataclass
class PaCoSection:
    """``loss.paco``. Defaults: the authors' CIFAR-100-LT recipe, dvlab-research/Parametric-Contrastive-Learning,
    PaCo/LT/sh/CIFAR100_train_imb0.01.sh and the defaults of PaCo/LT/paco_cifar.py. The temperature of the sample
    similarities is ``loss.temperature`` (the script's ``--moco-t``); ``loss.alpha`` is not used."""

    alpha: float = field(default=0.01, metadata=NON_NEGATIVE)  # weight of each sample positive: sh line 19
    beta: float = field(default=1.0, metadata=NON_NEGATIVE)  # weight of the own-centre positive: sh line 20
    gamma: float = field(default=1.0, metadata=NON_NEGATIVE)  # weight of the sample terms of the denominator: line 21
    queue_size: int = field(default=1024, metadata=AT_LEAST_1)  # keys in the queue, --moco-k: sh line 26
    momentum: float = field(default=0.999, metadata=MOMENTUM)  # key encoder EMA, --moco-m: paco_cifar.py line 98
    shuffle_bn: bool = True  # under torchrun, keys from a shuffled global batch: moco/builder.py lines 211-218


@register_objective
class PaCo(Objective):
    """PaCo: the query view through the network, the key view through a momentum encoder, a queue of labelled keys
    (module docstring); ``loss.temperature`` is the temperature of the sample similarities."""

    name = "paco"
    role = "objective"
    paper = "Cui et al., Parametric Contrastive Learning, ICCV 2021"
    balanced_logits = True  # see docs/conventions.md, "Evaluation report"
    Section = PaCoSection
    needs_projections = True
    network_views = 1  # the query encoder sees view 1 only (its BatchNorm statistics too); view 2 goes to the keys

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.views.num_views < 2:
            raise ConfigError(
                "loss.objective paco needs two views per image, the query (view 1) and the key (view 2): set "
                f"views.num_views to 2 or more (it is {cfg.views.num_views})."
            )
        s = cfg.loss.sections.get("paco", {})
        if s.get("alpha", 0.01) == 0 and s.get("beta", 1.0) == 0:
            raise ConfigError("loss.paco.alpha and loss.paco.beta must not both be 0 (no query would have a positive).")

    def __init__(self, setup: ObjectiveSetup) -> None:
        super().__init__(setup)
        s = self.section
        if setup.projection_dim <= 0:
            raise ValueError("paco needs the projection size (projection_dim) to build its queue.")
        self.loss = PaCoLoss(
            setup.class_counts,
            alpha=s.alpha,
            beta=s.beta,
            gamma=s.gamma,
            temperature=setup.loss.temperature,
            gather_distributed=setup.gather_distributed,
        )
        self.momentum = float(s.momentum)
        size = int(s.queue_size)
        self.register_buffer("queue", torch.zeros(size, setup.projection_dim))
        self.register_buffer("queue_labels", torch.zeros(size, dtype=torch.int64))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.int64))  # the next slot to write
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.int64))  # slots 0 .. filled-1 hold keys
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))  # optimiser steps seen (ShuffleBN's seed)
        self.key_encoder: nn.Module | None = None
        self._pending: tuple[Tensor, Tensor] | None = None  # this step's keys and labels, queued in after_step
        self.stat_names = ("queue_fill", "positives")

    # ------------------------------------------------------------------------------------------------------------
    # The key encoder

    def bind(self, model: nn.Module) -> None:
        """Makes the key encoder: a copy of ``model`` (same weights, buffers, device) that no optimiser sees."""
        encoder = copy.deepcopy(model)
        for p in encoder.parameters():
            p.requires_grad_(False)
        encoder.train(self.training)
        self.key_encoder = encoder

    @torch.no_grad()
    def _momentum_update(self, model: nn.Module) -> None:
        keys = list(self.key_encoder.parameters())
        queries = [p.detach() for p in model.parameters()]
        if len(keys) != len(queries):
            raise RuntimeError("paco's key encoder no longer matches the network it was copied from (bind).")
        torch._foreach_mul_(keys, self.momentum)
        torch._foreach_add_(keys, queries, alpha=1.0 - self.momentum)

    @torch.no_grad()
    def _keys(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The keys of ``images`` (this process's key views) and their labels: this process's rows, or the global
        batch's in rank order under ``gather_distributed`` (with ShuffleBN when ``shuffle_bn``)."""
        encode = lambda x: self.key_encoder(x, with_projection=True).projections  # noqa: E731
        rank, world = distributed_world()
        if not self.setup.gather_distributed or world == 1:
            return encode(images), labels
        all_labels = gather_equal_rows(labels)
        if not self.section.shuffle_bn:
            return gather_equal_rows(encode(images)), all_labels
        # ShuffleBN: every process encodes a random share of the global batch, so that the key encoder's batch
        # statistics are not those of the process's own queries; the keys go back to rank order.
        all_images = gather_equal_rows(images)
        order = shared_permutation(all_images.shape[0], self.steps)
        mine = order.view(world, -1)[rank]
        shuffled = gather_equal_rows(encode(all_images.index_select(0, mine)))
        keys = torch.empty_like(shuffled).index_copy_(0, order, shuffled)
        return keys, all_labels

    # ------------------------------------------------------------------------------------------------------------
    # The step

    def forward(self, step: StepRecord) -> LossOutput:
        if self.key_encoder is None:
            raise RuntimeError("paco's key encoder is made by bind(model), which must be called before training.")
        rows = step.view_rows(QUERY_VIEW, QUERY_VIEW + 1)
        labels = step.labels[rows]
        keys, key_labels = self._keys(step.view_images(KEY_VIEW), labels)
        keys = keys.to(self.queue.dtype)  # float32 (the queue's) also under autocast
        size = self.queue.shape[0]
        filled = torch.arange(size, device=self.queue.device) < self.queue_filled
        memory = torch.cat([keys, self.queue])
        memory_labels = torch.cat([key_labels, self.queue_labels])
        memory_mask = torch.cat([torch.ones_like(key_labels, dtype=torch.bool), filled])
        terms = self.loss(step.projections[rows], labels, step.logits[rows], memory, memory_labels, memory_mask)
        self._pending = (keys.detach(), key_labels)
        stats = {
            "queue_fill": self.queue_filled.to(torch.float64) / size,
            "positives": terms.positives.to(torch.float64).mean(),
        }
        return LossOutput(terms.loss, stats)

    @torch.no_grad()
    def after_step(self, step: StepRecord) -> None:
        """Queues the step's keys (the global batch's under torchrun) and moves the key encoder towards the
        network."""
        if self._pending is not None:
            self._enqueue(*self._pending)
            self._pending = None
        if self.key_encoder is not None:
            self._momentum_update(step.model)
        self.steps.add_(1)

    @torch.no_grad()
    def _enqueue(self, keys: Tensor, labels: Tensor) -> None:
        size = self.queue.shape[0]
        if keys.shape[0] > size:  # a batch larger than the queue: only its last keys stay
            keys, labels = keys[-size:], labels[-size:]
        n = keys.shape[0]
        slots = (self.queue_ptr + torch.arange(n, device=self.queue.device)) % size
        self.queue.index_copy_(0, slots, keys.to(self.queue.dtype))
        self.queue_labels.index_copy_(0, slots, labels)
        self.queue_ptr.copy_((self.queue_ptr + n) % size)
        self.queue_filled.add_(n).clamp_(max=size)

    def describe(self) -> str:
        s = self.section
        shuffle = ", ShuffleBN under torchrun" if s.shuffle_bn else ""
        return (
            f"paco (alpha {s.alpha}, beta {s.beta}, gamma {s.gamma}, tau {self.setup.loss.temperature}; query view 1, "
            f"key view 2 through a momentum encoder, m {s.momentum}{shuffle}; queue {s.queue_size} labelled keys)"
        )


def shared_permutation(n: int, seed: Tensor) -> Tensor:
    """A pseudo-random permutation of ``0 .. n-1`` that is a function of ``seed`` (an int64 tensor) alone: every
    process computes the same one on its device, without a broadcast or a host synchronisation."""
    index = torch.arange(n, device=seed.device, dtype=torch.int64)
    mask = (1 << 31) - 1
    h = (index * 2654435761 + (seed & mask) * 40503 + 12345) & mask
    for _ in range(3):  # integer mixing (xorshift-multiply); every product stays below 2^63
        h = ((h ^ (h >> 15)) * 2246822519) & mask
        h = ((h ^ (h >> 13)) * 3266489917) & mask
    return torch.argsort(h * n + index)  # ties broken by the index: a permutation
