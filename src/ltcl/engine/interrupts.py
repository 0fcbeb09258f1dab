"""Ctrl-C and pre-emption lose nothing: SIGINT and SIGTERM let the current step finish, then the run saves.

:class:`InterruptGuard` turns the first SIGINT or SIGTERM into a request that the training loop reads after
every step (under torchrun, at every synchronisation point, so that all processes stop at the same step); the
trainer then writes ``checkpoint_last.pt`` at that batch and raises :class:`Interrupted`, which the command line
turns into exit status 130 (SIGINT) or 143 (SIGTERM). A second Ctrl-C stops at once.
"""

from __future__ import annotations

import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)
TEST_SIGNAL_AT_STEP = "LTCL_TEST_SIGNAL_AT_STEP"  # tests only: "7:INT" sends SIGINT to this process after step 7


class Interrupted(Exception):
    """The run stopped on a signal after saving; ``exit_status`` is 128 + the signal number."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_status = 128 + signum


class InterruptGuard:
    """Context manager: while active, SIGINT and SIGTERM set :attr:`signum` instead of stopping the process.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the save
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None


def signal_for_tests() -> tuple[int, signal.Signals] | None:
    """(step, signal) from ``LTCL_TEST_SIGNAL_AT_STEP`` ("7:INT", "5:KILL"), or None."""
    text = os.environ.get(TEST_SIGNAL_AT_STEP, "")
    if not text:
        return None
    step, _, name = text.partition(":")
    return int(step), signal.Signals[f"SIG{name or 'KILL'}"]
