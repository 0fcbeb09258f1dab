"""What every two-stage re-fitter is: a registered class with its own config section and its authors' values.

A re-fitter takes a trained run's network, keeps its backbone frozen and fits a new classifier on top (Kang et al.,
ICLR 2020: "decoupling representation and classifier"). Two kinds:

- trained (``trains = True``: cRT, LWS, DisAlign, MiSLAS): a head trained for a few epochs with its paper's sampler,
  loss and schedule. It provides the trainable ``head`` (features -> logits), the parameter groups, the ``loss``
  and the classifier to save (``export``, a registered ``model.classifier`` kind: an affine re-fit is folded into
  ``linear``); :mod:`ltcl.decouple.stage` runs the epochs, the validation and the checkpoints.
- closed-form (``trains = False``: tau-normalisation, NCM): ``fit(context)`` returns the classifier at once.

Each re-fitter's hyperparameters are a dataclass ``Section`` (``--set decouple.<key>=value``, typed and
range-checked like the training config), with defaults from its authors' configs and, in
``authors_settings``, the values of the authors' config for a dataset where they published one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import yaml
from torch import Tensor, nn

from ltcl.config import Config, ConfigError, from_dict
from ltcl.config.checks import check
from ltcl.data.augment import PRESETS
from ltcl.data.samplers import SAMPLERS
from ltcl.registry import Registry

BatchNormMode = Literal["frozen", "shift"]
# The view a trained re-fit sees: "" the run's first view (its preset and size: the first stage's augmentation),
# a preset name, or "test": the evaluation transform (no augmentation; with frozen BatchNorm the features are then
# computed once and reused every epoch).
VIEW = check(
    lambda v: v in ("", "test", *PRESETS), f"'' (the run's first view), test, or a preset ({', '.join(PRESETS)})"
)
SAMPLER = check(lambda v: v in SAMPLERS, "a registered sampler (`ltcl methods` lists them)")


@dataclass
class RefitSetup:
    """What a re-fitter is built from.

    Attributes:
        class_counts: (C,) training images per class.
        feature_dim: F, the backbone's feature size.
        source_classifier: the first stage's classifier (a frozen copy; a re-fitter may read its weights).
        device: where the head trains.
    """

    class_counts: tuple[int, ...]
    feature_dim: int
    source_classifier: nn.Module
    device: torch.device

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)


class Refitter:
    """Base class of a re-fitter (see the module docstring). Subclasses set the class attributes and register with
    :func:`register_refitter`."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    code: ClassVar[str] = ""  # the authors' code this re-fitter follows (repository and files)
    Section: ClassVar[type]
    classifier: ClassVar[str] = "linear"  # the registered model.classifier kind of the result
    trains: ClassVar[bool] = True
    needs_linear_source: ClassVar[bool] = False  # reads the first stage's linear weights
    stat_names: ClassVar[tuple[str, ...]] = ()  # per-epoch statistics of the head (metrics.csv columns)
    # The authors' values for a dataset: "<data.dataset>" or "<data.dataset>@<imbalance factor>" -> section values.
    authors_settings: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, section: Any, setup: RefitSetup) -> None:
        self.section, self.setup = section, setup

    # ------------------------------------------------------------------------------------------------------
    # Configuration

    @classmethod
    def settings_for(cls, cfg: Config) -> tuple[dict[str, Any], str]:
        """The authors' values for this run's dataset and where they come from (empty: the section's defaults)."""
        factor = cfg.data.imbalance_factor
        exact = f"{cfg.data.dataset}@{int(factor)}" if float(factor).is_integer() else ""
        for key in (exact, cfg.data.dataset):
            if key and key in cls.authors_settings:
                return dict(cls.authors_settings[key]), key
        return {}, ""

    @classmethod
    def resolve_section(cls, cfg: Config, overrides: dict[str, str]) -> tuple[Any, str]:
        """The section of this run: defaults, then the authors' values for its dataset, then ``overrides`` (raw
        ``--set decouple.<key>`` texts); typed and range-checked. Returns the section and a note on the source of
        its values.

        Raises:
            ConfigError: an unknown key or a value of the wrong type or range (one sentence naming the key).
        """
        values = {f.name: getattr(cls.Section(), f.name) for f in dataclasses.fields(cls.Section)}
        authors, key = cls.settings_for(cfg)
        values |= authors
        for name, raw in overrides.items():
            values[name] = _parse(raw)
        section = from_dict(values, cls.Section, "decouple.")
        cls.check_section(section, cfg)
        note = f"the authors' values for {key}" if key else "the authors' defaults"
        return section, note

    @classmethod
    def check_section(cls, section: Any, cfg: Config) -> None:
        """Refuses settings this re-fitter cannot run with (ConfigError naming the key)."""

    @classmethod
    def result_config(cls, cfg: Config, section: Any) -> Config:
        """The config saved with the re-fitted model: the run's, with this re-fitter's classifier and, for a trained
        re-fit, its schedule as ``optim``, its sampler and batch size as ``data``."""
        model = dataclasses.replace(cfg.model, classifier=cls.classifier)
        if not cls.trains:
            optim = dataclasses.replace(cfg.optim, epochs=1, warmup_epochs=0)
            return dataclasses.replace(cfg, model=model, optim=optim)
        s = section
        optim = dataclasses.replace(
            cfg.optim,
            epochs=s.epochs,
            lr=s.lr,
            momentum=s.momentum,
            weight_decay=s.weight_decay,
            nesterov=False,
            warmup_epochs=0,
            schedule="cosine",
        )
        data = dataclasses.replace(cfg.data, sampler=s.sampler, batch_size=s.batch_size)
        return dataclasses.replace(cfg, model=model, optim=optim, data=data)

    def describe(self) -> str:
        """The run header's line: the re-fitter and its values."""
        values = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(self.section).items())
        return f"{self.name} ({self.paper}): {values}"

    # ------------------------------------------------------------------------------------------------------
    # Trained re-fitters

    head: nn.Module

    def param_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """(parameters, learning-rate factor) of each group the optimiser trains."""
        return [([p for p in self.head.parameters() if p.requires_grad], 1.0)]

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def statistics(self) -> dict[str, float]:
        """The head's own quantities after an epoch (``stat_names``), for metrics.csv and the epoch line."""
        return {}

    def export(self) -> nn.Module:
        """The classifier to evaluate and save: a module of the registered kind ``classifier``."""
        return self.head

    # ------------------------------------------------------------------------------------------------------
    # Closed-form re-fitters

    def fit(self, context: Any) -> tuple[nn.Module, dict[str, Any]]:
        """The classifier and what to record of the fit (results.json ``decouple``); see
        :class:`ltcl.decouple.context.RefitContext` for what ``context`` offers."""
        raise NotImplementedError


REFITTERS: Registry[type[Refitter]] = Registry("two-stage re-fitter", "ltcl decouple --method")


def register_refitter(cls: type[Refitter]) -> type[Refitter]:
    """Registers a re-fitter under its ``name`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Refitter)) or not dataclasses.is_dataclass(cls.Section):
        raise ValueError(f"register_refitter expects a Refitter subclass with a dataclass Section, got {cls!r}.")
    return REFITTERS.register(cls.name, cls)


def epoch_cosine(lr: float, epoch: int, epochs: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based), constant within the epoch: ``lr (1 + cos(pi e / E)) / 2``.

    The authors' second stages all step their cosine once per epoch from the full rate (classifier-balancing's
    ``CosineAnnealingLR`` with ``eta_min`` 0 stepped at each epoch's start, as PyTorch 0.4 counted it; MiSLAS's
    ``adjust_learning_rate``; cvpods' epoch-wise ``WarmupCosineLR``).
    """
    return 0.5 * lr * (1.0 + math.cos(math.pi * epoch / epochs))


def linear_weights(classifier: nn.Module, method: str) -> tuple[Tensor, Tensor]:
    """(C, F) weight and (C,) bias of a first-stage linear classifier, detached copies.

    Raises:
        ConfigError: the classifier is not an affine map (a cosine classifier: its logits are not ``W f + b``).
    """
    weight, bias = getattr(classifier, "weight", None), getattr(classifier, "bias", None)
    if not isinstance(classifier, nn.Linear) or weight is None:
        raise ConfigError(
            f"ltcl decouple --method {method} re-scales the first stage's linear classifier, and this run's is "
            f"{type(classifier).__name__} (model.classifier): use --method crt or ncm, which fit a new one."
        )
    b = bias.detach().clone() if bias is not None else torch.zeros_like(weight[:, 0])
    return weight.detach().clone(), b


def scaled_linear(weight: Tensor, bias: Tensor, scales: Tensor) -> nn.Module:
    """A ``linear`` classifier whose logits are ``scales * (W f + b)``: rows of W and b multiplied by the scales."""
    from ltcl.models import LinearClassifier

    head = LinearClassifier(weight.shape[1], weight.shape[0]).to(weight)
    with torch.no_grad():
        head.weight.copy_(scales[:, None] * weight)
        head.bias.copy_(scales * bias)
    return head


def _parse(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
