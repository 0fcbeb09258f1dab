"""The command line as the tests run it: ``ltcl ARGS`` in this process by default, in a fresh one on request.

In this process the call goes through the same ``ltcl.cli.main`` as the installed script (argument parsing, the
one-sentence errors, the exit status), minus the two to three seconds that a fresh interpreter spends importing
torch and torchvision. A test takes a fresh process where the process itself is under test: a signal sent to it
(``env`` with ltcl's test-signal variable), plugins that must be found again from the run's record rather than from
this process's registry, a traceback on stderr, or any other environment of its own (``env`` always means a fresh
process).
"""

import io
import os
import subprocess
import sys
from contextlib import chdir, redirect_stderr, redirect_stdout
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_ltcl(*args, cwd=REPO, env=None, check=True, fresh_process=False) -> subprocess.CompletedProcess:
    """Runs ``ltcl ARGS`` in ``cwd`` and returns its exit status, stdout and stderr as a CompletedProcess.

    With ``check``, a non-zero exit status fails the test with both streams."""
    if fresh_process or env is not None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        command = [sys.executable, "-m", "ltcl.cli", *args]
        proc = subprocess.run(command, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=600)
    else:
        proc = _in_this_process(list(args), cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"ltcl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _in_this_process(args: list[str], cwd) -> subprocess.CompletedProcess:
    from ltcl.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with chdir(cwd), redirect_stdout(stdout), redirect_stderr(stderr):
        try:
            status = main(args)
        except SystemExit as exit_:  # argparse's usage errors and --help
            status = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
    return subprocess.CompletedProcess(["ltcl", *args], status, stdout.getvalue(), stderr.getvalue())
