"""What every training method is: an :class:`Objective` that turns one step's :class:`StepRecord` into a
:class:`LossOutput`, with hooks for what happens between steps and epochs.

A method is one file: a subclass of :class:`Objective` with its name, its role, its paper, its config section
(a dataclass, ``loss.<section>``) and its forward pass, registered with
:func:`ltcl.methods.registry.register_objective`. The engine knows only this interface.

Roles:

- ``objective``: the whole training objective (GPaCo classifies and contrasts in one loss).
- ``classification``: a loss on the logits of every view (``ce``, ``bs``); alone it is the whole objective.
- ``contrastive``: a term on the projections of the contrastive views (``scl``, ``acl``); it joins a
  classification loss as ``cls+con`` (``bs+acl``), Eq. 10: ``cls_weight * classification + alpha * contrastive``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, NamedTuple

from torch import Tensor, nn

from ltcl.config import LossConfig, OptimConfig

ROLES = ("objective", "classification", "contrastive")


@dataclass
class StepRecord:
    """What one training step hands the objective: V views of B images, rows stacked view-major (row ``v * B + b``
    is view v of image b).

    Attributes:
        logits: (V*B, C) classifier scores of every view.
        labels: (V*B,) int64 class of every row.
        projections: (V*B, D) L2-normalised projections, or None when the objective asked for none.
        features: (V*B, F) backbone features, or None unless the objective asked for them (``needs_features``).
        contrastive_mask: (V*B,) bool, the rows that the distribution-aware schedule gives to the contrastive term
            (the first k views of an image, k by its shot group).
        num_views: V.
        batch_size: B, images of this process.
        model: the network being trained (not wrapped for DDP): its ``classifier``, ``projection`` and ``backbone``.
        images: the view groups as the network saw them, one (V_g*B, 3, H_g, W_g) tensor per view size (methods with
            a key encoder run them through it).
        group_views: the views of each group, in the order of ``images``.
        second: the second batch of a method with a ``second_sampler`` (a MultiViewBatch on the device, the same
            views and size), or None.
        run_network: ``run_network(groups, with_projection) -> [NetworkOutput per group]``, the engine's own
            forward (DDP-wrapped under torchrun, so gradients are averaged across processes): a method that runs
            the network itself (``network_views`` 0) calls it, not ``model``, for the images whose gradients train
            the network.

    With ``network_views`` 0 the engine runs no forward: ``logits``, ``projections`` and ``features`` are None,
    ``labels`` is (B,) and ``num_views`` 0.
    """

    logits: Tensor
    labels: Tensor
    projections: Tensor | None
    contrastive_mask: Tensor
    num_views: int
    batch_size: int
    model: nn.Module
    features: Tensor | None = None
    images: list[Tensor] = field(default_factory=list)
    group_views: list[list[int]] = field(default_factory=list)
    second: Any = None
    run_network: Any = None

    @cached_property
    def contrastive_rows(self) -> tuple[Tensor, Tensor]:
        """(projections, labels) of the rows in ``contrastive_mask``: (N_c, D) and (N_c,).

        Computed once per step and shared by every term that uses it: the number of selected rows varies from
        batch to batch, so the selection makes the host wait for the device once.
        """
        if self.projections is None:
            raise RuntimeError("The contrastive rows need projections: the objective must set needs_projections.")
        rows = self.contrastive_mask.nonzero().squeeze(1)
        return self.projections.index_select(0, rows), self.labels.index_select(0, rows)

    def view_rows(self, first: int, stop: int) -> slice:
        """The rows of views ``first .. stop - 1`` (0-based), a contiguous block of the view-major layout."""
        return slice(first * self.batch_size, stop * self.batch_size)

    def view_images(self, view: int) -> Tensor:
        """The (B, 3, H, W) images of view ``view`` (0-based) as the network saw them, cut from their size group:
        what a method that runs a second encoder on one view (a momentum key encoder) feeds it."""
        b = self.batch_size
        for images, views in zip(self.images, self.group_views):
            if view in views:
                j = views.index(view)
                return images[j * b : (j + 1) * b]
        raise ValueError(f"The step holds no images of view {view + 1} (its groups hold views {self.group_views}).")

    def first_views(self, k: int) -> StepRecord:
        """The record restricted to views ``0 .. k - 1`` (logits, labels, projections, features, mask)."""
        rows = self.view_rows(0, min(k, self.num_views))
        cut = lambda t: None if t is None else t[rows]  # noqa: E731
        return dataclasses.replace(
            self,
            logits=self.logits[rows],
            labels=self.labels[rows],
            projections=cut(self.projections),
            features=cut(self.features),
            contrastive_mask=self.contrastive_mask[rows],
            num_views=min(k, self.num_views),
        )


class LossOutput(NamedTuple):
    """An objective's result for one step.

    Attributes:
        loss: scalar to minimise.
        parts: named, detached scalars averaged over the epoch into metrics.csv, TensorBoard and the epoch line
            (``loss_cls``, ``loss_con``, a method's own quantities); the names are the objective's ``stat_names``.
        logits: (B, C) the predictions the train accuracy counts, when the method ran the network itself
            (``network_views`` 0); None: the first view's ``step.logits``.
        correct: 0-d count of the step's correctly classified images, for a method whose predictions answer
            more than the batch's labels (BBN's mixed logits: two images, two labels each); None: the argmax of
            ``logits`` against ``step.labels``.
    """

    loss: Tensor
    parts: dict[str, Tensor]
    logits: Tensor | None = None
    correct: Tensor | None = None


@dataclass(frozen=True)
class ObjectiveSetup:
    """What an objective is built from.

    Attributes:
        class_counts: (C,) training images per class.
        loss: the shared ``loss`` section (objective, alpha, temperature, cls_weight).
        section: this method's typed section (an instance of its ``Section``), or None.
        projection_dim: D, the size of the projections (0: the network has no projection head).
        feature_dim: F, the size of the backbone features and the classifier's input.
        hidden_dim: the hidden width of the projection head (0: a single linear map).
        epochs: the run's length, for schedules inside the objective (deferred re-weighting).
        optim: the run's optimiser section (a method whose state follows the learning rate: TDE's moving average).
        num_views: V, views per image.
        gather_distributed: contrast against the global batch under torch.distributed.
        load_network: the network of a trained ltcl run from its checkpoint path, on the CPU, for a method that
            learns from one (GML's teacher); the engine gives it, so that no method imports the engine.
    """

    class_counts: tuple[int, ...]
    loss: LossConfig = field(default_factory=LossConfig)
    section: Any = None
    projection_dim: int = 0
    feature_dim: int = 0
    hidden_dim: int = 0
    epochs: int = 1
    optim: OptimConfig = field(default_factory=OptimConfig)
    num_views: int = 1
    gather_distributed: bool = False
    load_network: Callable[[str], nn.Module] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)


class Objective(nn.Module):
    """Base class of every training method (see the module docstring).

    Class attributes a method sets:
        name: the registered name (``loss.objective``).
        role: ``objective``, ``classification`` or ``contrastive``.
        paper: the method's paper, e.g. "Ren et al., NeurIPS 2020".
        Section: a dataclass of the method's own hyperparameters (``loss.<section_name>``), or None.
        section_name: the config section's name (default: ``name``).
        needs_projections: the step must compute projections (a contrastive term).
        needs_features: the step must hand over the backbone features.
        classification_views: (contrastive terms) how many leading views the classification loss of ``CLS+CON``
            sees; None for all of them.
        second_sampler: a second batch per step, drawn by this registered sampler, in ``step.second``.
        takes_label_smoothing: the method applies ``loss.label_smoothing`` to its classification term.
        balanced_logits: the evaluation logits estimate the class-conditional score (a balanced loss), so telling
            the model a test prior adds ``log p_test`` only; otherwise ``log p_train`` is taken out first.
        network_views: how many leading views the network is run on (the others are only in ``step.images``,
            so their batch statistics never mix with the trained views'); None for all of them.

    Instances set ``stat_names``: the names of the parts their forward returns.

    Buffers and parameters of an objective are saved in every checkpoint; parameters that require a gradient
    train with the network (and are averaged across processes with it).
    """

    name: ClassVar[str] = ""
    role: ClassVar[str] = "objective"
    paper: ClassVar[str] = ""
    Section: ClassVar[type | None] = None
    section_name: ClassVar[str] = ""
    needs_projections: ClassVar[bool] = False
    needs_features: ClassVar[bool] = False
    # A contrastive term may give the classification loss only the first k views (BCL: view 1); None: all views.
    classification_views: int | None = None
    # The network trains on the first k views only (PaCo: the query view; the others reach the method through
    # step.images, e.g. for a key encoder); None: every view goes through the network; 0: the method runs the
    # network itself (it then returns the logits of its first view in LossOutput.logits, for the train accuracy).
    network_views: int | None = None
    # A second batch per step, drawn by this sampler (BBN's reversed sampler), handed over as step.second.
    second_sampler: ClassVar[str | None] = None
    # The evaluation logits are meant for a uniform label prior (a balanced loss: Balanced Softmax, logit
    # adjustment); False: they carry the training prior (cross-entropy). Shifted-prior evaluation reads it.
    balanced_logits: ClassVar[bool] = False
    # The method reads loss.label_smoothing (ce, bs, la); any other refuses a non-zero value rather than ignore it.
    takes_label_smoothing: ClassVar[bool] = False

    def __init__(self, setup: ObjectiveSetup) -> None:
        super().__init__()
        self.setup = setup
        self.stat_names: tuple[str, ...] = ()

    @property
    def section(self) -> Any:
        return self.setup.section

    def forward(self, step: StepRecord) -> LossOutput:  # pragma: no cover - every method defines it
        raise NotImplementedError(f"{type(self).__name__} must define forward(step) -> LossOutput.")

    def set_epoch(self, epoch: int) -> None:
        """Called before every epoch (0-based), also after a resume: schedules inside the objective."""

    def after_step(self, step: StepRecord) -> None:
        """Called after every optimiser step, without gradients: queue updates, momentum encoders."""

    def bind(self, model: nn.Module) -> None:
        """Called once with the network, after both are built and before the optimiser: a method that needs its
        own copy of the network (a momentum key encoder) makes it here."""

    def sampler_for_epoch(self, epoch: int) -> str | None:
        """The sampler (``data.sampler`` name) the method needs in epoch ``epoch`` (0-based), e.g. a class-balanced
        second stage; None keeps the config's."""
        return None

    def describe(self) -> str:
        """What the run header prints for this method: its name and its section's values."""
        return f"{self.name} ({describe_section(self.section)})" if self.section is not None else self.name

    @classmethod
    def config_section(cls) -> str:
        return cls.section_name or cls.name

    @classmethod
    def adapt_config(cls, cfg: Any) -> Any:
        """``cfg`` with the part of the network that is the method itself put in where the config names its plain
        counterpart (BBN's two-branch twin of the backbone, TDE's causal classifier), so that ``--set
        loss.objective=NAME`` alone trains the method; called before :meth:`check_config`. The header and the saved
        config show the result. The default changes nothing."""
        return cfg

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Refuses settings the method cannot train with (called when the config is resolved, before any data is
        read); raise :class:`ltcl.config.ConfigError` with one sentence naming the key to change."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        upgrade_legacy_keys(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def upgrade_legacy_keys(module: nn.Module, state_dict: dict, prefix: str) -> None:
    """Moves the keys of checkpoints written before the method registry (format 2) to where the methods keep them.

    Before, an objective kept a loss's state one level up (``classification.reweighting``, a top-level
    ``prototype_head.*``) or under another name (``classification.log_prior`` of GPaCo). Each key the module does
    not expect moves to the one expected, still missing key that it equals with one dotted component taken out or
    replaced; a key with no such single match stays, and loading then reports it.
    """
    expected = [prefix + k for k in module.state_dict()]
    missing = [e for e in expected if e not in state_dict]
    for key in [k for k in state_dict if k.startswith(prefix) and k not in expected]:
        matches = [e for e in missing if _one_component_apart(e, key)]
        if len(matches) == 1:
            state_dict[matches[0]] = state_dict.pop(key)
            missing.remove(matches[0])


def _one_component_apart(new: str, old: str) -> bool:
    a, b = new.split("."), old.split(".")
    if len(a) == len(b) + 1:
        return any(a[:i] + a[i + 1 :] == b for i in range(len(a)))
    return len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1


def describe_section(section: Any) -> str:
    """``key value, key value`` of a section dataclass."""
    return ", ".join(f"{f.name} {getattr(section, f.name)}" for f in dataclasses.fields(section))
