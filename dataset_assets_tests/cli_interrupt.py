"""Run `dataset-assets` as a child process and press Ctrl-C (SIGINT) once it reached a given point (or twice)."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO


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


def _collect(stream: IO[str]) -> tuple[list[str], threading.Thread]:
    """The lines of `stream` as a thread reads them, and that thread."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(stream.readline, "")), daemon=True)
    reader.start()
    return lines, reader


def interrupt_cli(args: list[str], ready: list[tuple[Callable[[], bool], str]], again_after: str | None = None
                  ) -> Interrupted:
    """Start `dataset-assets <args>`, wait for each `(condition, what)` of `ready` in turn, then send SIGINT.

    With `again_after`, send a second SIGINT once the command's stderr shows that text (the first was
    handled); `seconds_to_exit` then counts from the second.
    """
    process = subprocess.Popen([sys.executable, "-m", "dataset_assets.cli", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stderr is not None
    (stdout, stdout_reader), (stderr, stderr_reader) = _collect(process.stdout), _collect(process.stderr)
    try:
        for condition, what in ready:
            wait_until(condition, process, what)
        process.send_signal(signal.SIGINT)
        if again_after is not None:
            wait_until(lambda: any(again_after in line for line in stderr), process, repr(again_after))
            process.send_signal(signal.SIGINT)
        interrupted_at = time.monotonic()
        process.wait(timeout=20)
        seconds = time.monotonic() - interrupted_at
        stdout_reader.join(timeout=20)
        stderr_reader.join(timeout=20)
        return Interrupted(process.returncode, "".join(stdout), "".join(stderr), seconds)
    finally:
        process.kill()
        process.wait()
