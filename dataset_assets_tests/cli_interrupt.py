"""Run `dataset-assets` as a child process and press Ctrl-C (SIGINT) once it reached a given point."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Interrupted:
    """How the interrupted command ended, and how long it took to after the SIGINT."""

    returncode: int
    stdout: str
    stderr: str
    seconds_to_exit: float


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[str], what: str, timeout: float = 20) -> None:
    """Poll `condition` until true; fail naming `what` if `process` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the command ended (exit {process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.01)


def interrupt_cli(args: list[str], ready: list[tuple[Callable[[], bool], str]]) -> Interrupted:
    """Start `dataset-assets <args>`, wait for each `(condition, what)` of `ready` in turn, then send SIGINT."""
    process = subprocess.Popen([sys.executable, "-m", "dataset_assets.cli", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for condition, what in ready:
            wait_until(condition, process, what)
        interrupted_at = time.monotonic()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=20)
        return Interrupted(process.returncode, stdout, stderr, time.monotonic() - interrupted_at)
    finally:
        process.kill()
        process.wait()
