"""Terminal progress for downloads: one overall bar plus one bar per file in flight (rich, thread-safe)."""
from __future__ import annotations

import threading
from collections.abc import Mapping
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class RichTransferProgress:
    """A `TransferProgress` drawing on stderr; silent when stderr is not a terminal.

    The overall bar counts bytes held at the destination (fetched, resumed or skipped) against
    the manifest's total, so a rerun starts where the last one stopped.
    """

    def __init__(self, sizes: Mapping[str, int | None], console: Console | None = None) -> None:
        console = console or Console(stderr=True)
        self._sizes = dict(sizes)
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeRemainingColumn(), console=console,
                                  disable=not console.is_terminal)
        self._files_done = 0
        self._overall = self._progress.add_task(self._overall_label(), total=sum(s or 0 for s in sizes.values()))
        self._tasks: dict[str, TaskID] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def _overall_label(self) -> str:
        return f"all files ({self._files_done}/{len(self._sizes)})"

    def __enter__(self) -> RichTransferProgress:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def start(self, key: str, total: int | None, done: int) -> None:
        with self._lock:
            task = self._tasks.get(key)
            if task is None:
                self._tasks[key] = self._progress.add_task(key, total=total, completed=done)
            else:
                self._progress.reset(task, total=total, completed=done)
            self._move_overall(key, done)

    def advance(self, key: str, nbytes: int) -> None:
        with self._lock:
            self._progress.advance(self._tasks[key], nbytes)
            self._move_overall(key, self._held.get(key, 0) + nbytes)

    def finish(self, key: str, status: str) -> None:
        with self._lock:
            task = self._tasks.pop(key, None)
            if task is not None:
                self._progress.remove_task(task)
            if status not in ("failed", "interrupted"):
                self._move_overall(key, self._sizes.get(key) or self._held.get(key, 0))
            self._files_done += 1
            self._progress.update(self._overall, description=self._overall_label())

    def _move_overall(self, key: str, held: int) -> None:
        self._progress.advance(self._overall, held - self._held.get(key, 0))
        self._held[key] = held
