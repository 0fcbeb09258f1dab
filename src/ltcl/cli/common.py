"""What every command shares: the --set and --device options, how failures become exit statuses, and the help
formatter that keeps the examples of an epilog line by line.

Exit statuses: 0 done; 2 a mistake the user can fix (bad key, missing file, corrupt image, refused resume),
printed as one sentence (:class:`ltcl.errors.UserError` and missing files; any other exception is a bug in ltcl
and keeps its traceback); 3 a broken model (a non-finite loss during training, NaN weights in a checkpoint);
130 / 143 interrupted by SIGINT / SIGTERM after saving.
"""

from __future__ import annotations

import argparse
import sys

from ltcl.errors import UserError

USER_MISTAKE, BROKEN_MODEL = 2, 3


def add_set_option(
    parser: argparse.ArgumentParser,
    what: str = "the config",
    example: str = "--set optim.lr=0.1 --set views.sizes=32,32,24,24",
) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a value of {what}, e.g. {example} (repeatable; types are checked)",
    )


def add_device_option(parser: argparse.ArgumentParser, config_key: str | None = None) -> None:
    """``--device auto|cpu|cuda``; with ``config_key`` it stands for ``--set config_key=...`` (default: the
    config's value), see :func:`device_override`."""
    parser.add_argument(
        "--device",
        default=None if config_key else "auto",
        choices=["auto", "cpu", "cuda"],
        help=f"where to run (the same as --set {config_key}=...; default: the config's)"
        if config_key
        else "where to run (default auto: CUDA when available)",
    )


def device_override(device: str | None, overrides: list[str], key: str) -> list[str]:
    """``overrides`` with ``key=device`` added when ``--device`` was given; a ``--set key=...`` that says
    otherwise is a UserError."""
    if device is None:
        return overrides
    for text in overrides:
        name, _, value = text.partition("=")
        if name.strip() == key and value.strip() != device:
            raise UserError(f"--device {device} and --set {text.strip()} disagree; give one of them.")
    return [*overrides, f"{key}={device}"]


def run_command(args: argparse.Namespace) -> int:
    """Runs ``args.run(args)`` and maps every expected failure to its exit status with one sentence on stderr."""
    # Imported here, not at the top: `ltcl --help` must not wait for torch.
    from ltcl.engine.evaluate import NonFiniteOutput
    from ltcl.engine.inference import BrokenModel
    from ltcl.engine.interrupts import Interrupted
    from ltcl.engine.monitor import NonFiniteLoss

    name = f"ltcl {args.command}"
    try:
        return args.run(args)
    except (NonFiniteLoss, BrokenModel, NonFiniteOutput) as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return BROKEN_MODEL
    except Interrupted as err:
        print(f"{name}: {err}", file=sys.stderr)
        return err.exit_status
    except (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        if isinstance(err, OSError) and err.filename and str(err.filename) not in message:
            message = f"{message}: {err.filename}"
        print(f"{name}: error: {message}", file=sys.stderr)
        return USER_MISTAKE
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions to the terminal but keeps the examples of an epilog line by line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)
