"""Where each epoch's metrics row goes: ``train.loggers`` (rank 0 only).

A logger is a class with a ``name`` and three methods: ``__init__(context)`` starts it (raise to refuse, with the
reason), ``log_epoch(row)`` records one epoch's row of metrics.csv, ``close()`` ends it. Each built-in logger is one
module of this package and registers itself with :func:`register_logger`; the package imports its modules on first
use, so adding a logger is adding one file (a plugin file may register one the same way).

Built in: ``csv`` (metrics.csv, the run's own record, which report, plots and resume read: always written, listed or
not), ``tensorboard`` (event files in the run directory) and ``wandb`` (Weights & Biases, the optional extra
``pip install 'ltcl[wandb]'``; ``WANDB_MODE=offline`` logs to the run directory without a network).
``train.tensorboard: false``, the older switch, still takes ``tensorboard`` out of the list.

A logger that cannot start, or fails later, is reported in one ``note:`` line on stderr and left out; the run goes on.
A resumed run continues one stream per logger: the session knows its first epoch (``LoggerContext.first_epoch``).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ltcl.config import Config
from ltcl.data.longtail import ACCURACY_COLUMNS
from ltcl.registry import Registry


@dataclass
class LoggerContext:
    """What a logger starts from.

    Attributes:
        run_dir: the run directory.
        cfg: the run's resolved config.
        first_epoch: the first epoch (1-based) this session logs: 1 for a new run, the epoch a resume continues in.
    """

    run_dir: Path
    cfg: Config
    first_epoch: int = 1

    @property
    def resumed(self) -> bool:
        return self.first_epoch > 1


class EpochLogger:
    """The interface of a logger (see the module docstring); ``log_epoch`` and ``close`` do nothing by default."""

    name: ClassVar[str] = ""

    def __init__(self, context: LoggerContext) -> None:
        self.context = context

    def log_epoch(self, row: dict[str, Any]) -> None:
        """One epoch's metrics: ``epoch``, ``step``, ``lr``, ``loss`` and the method's statistics, ``train_acc``,
        ``images_per_s``, ``epoch_seconds`` and, in an evaluated epoch, ``eval_split`` with Many / Medium / Few / All
        (None for a group without classes)."""

    def close(self) -> None:
        """Ends the logger (called once, also when the run stops early)."""


class LoggerUnavailable(Exception):
    """Raised by a logger's ``__init__`` that cannot start; its message is the reason the note gives."""


def epoch_scalars(row: dict[str, Any]) -> dict[str, float]:
    """A metrics row's numbers under the names dashboards show: ``train/<name>`` for the training statistics,
    ``<eval split>/<group>`` for the accuracies; epoch and step are the axes, not scalars; a missing number (a group
    without classes) is left out."""
    scalars = {}
    for key, value in row.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "step"):
            scalars[f"{row['eval_split']}/{key}" if key in ACCURACY_COLUMNS else f"train/{key}"] = value
    return scalars


LOGGERS: Registry[type[EpochLogger]] = Registry("logger", "train.loggers")
ALWAYS = "csv"  # metrics.csv: every run writes it


def register_logger(cls: type[EpochLogger]) -> type[EpochLogger]:
    """Registers a logger class under ``cls.name`` (usable as a class decorator)."""
    LOGGERS.register(cls.name, cls)
    return cls


_loaded = False


def load_builtin_loggers() -> None:
    """Imports every module of this package once: each registers its logger."""
    global _loaded
    if not _loaded:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _loaded = True


def check_logger_names(names: list[str]) -> None:
    """Raises UserError (a ConfigError) for a name no logger is registered under, listing the known ones."""
    from ltcl.config.checks import ConfigError

    load_builtin_loggers()
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(LOGGERS.unknown(name))


def active_loggers(train_cfg) -> list[str]:
    """The loggers a run uses: ``csv`` first, then ``train.loggers`` in order, once each, without ``tensorboard``
    when ``train.tensorboard`` is false."""
    names = [ALWAYS, *train_cfg.loggers]
    if not train_cfg.tensorboard:
        names = [n for n in names if n != "tensorboard"]
    return list(dict.fromkeys(names))


def note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr, flush=True)


def _reason(err: BaseException) -> str:
    message = " ".join(str(err).split())
    if isinstance(err, LoggerUnavailable):
        return message
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


class Loggers:
    """The loggers of one session: each row to each of them; one that fails is noted and dropped. A context manager
    that closes them all."""

    def __init__(self, loggers: list[EpochLogger]) -> None:
        self.loggers = loggers

    def log_epoch(self, row: dict[str, Any]) -> None:
        for logger in list(self.loggers):
            try:
                logger.log_epoch(row)
            except Exception as err:  # a logger must never stop the training it records
                self.loggers.remove(logger)
                note(f"the {logger.name} logger failed at epoch {row.get('epoch')} ({_reason(err)}); the run goes "
                     "on without it.")  # fmt: skip
                _close(logger)
                if logger.name == ALWAYS:
                    raise

    def close(self) -> None:
        loggers, self.loggers = self.loggers, []
        for logger in loggers:
            _close(logger)

    def __enter__(self) -> Loggers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _close(logger: EpochLogger) -> None:
    try:
        logger.close()
    except Exception as err:
        note(f"the {logger.name} logger did not close cleanly ({_reason(err)}).")


def open_loggers(context: LoggerContext, enabled: bool = True) -> Loggers:
    """Starts the run's loggers (:func:`active_loggers`); none when ``enabled`` is false (ranks other than 0). A
    logger that cannot start is one note line; metrics.csv's failing to start is an error (it is the run's record)."""
    if not enabled:
        return Loggers([])
    load_builtin_loggers()
    started = []
    for name in active_loggers(context.cfg.train):
        try:
            started.append(LOGGERS.get(name)(context))
        except Exception as err:
            if name == ALWAYS:
                raise
            note(f"the {name} logger cannot start ({_reason(err)}); the run goes on without it.")
    return Loggers(started)
