"""A write-only file that reaches the kernel in whole, aligned 2 MiB writes.

Linux file systems with large folios (ext4 from 6.16, xfs, tmpfs with huge pages) size a page-cache
folio by the write that creates it: a 2 MiB write at a 2 MiB offset can make one 2 MiB folio, which a
later read-only map of the file maps with a single huge-page entry instead of 512 page entries, each
mapped by a page fault. Reading back a shard that was just written through such a map is faster.
Python's `BufferedWriter` passes writes on at whatever offsets its buffer fills, so it cannot do this.
"""
from __future__ import annotations

import os
from types import TracebackType

CHUNK_BYTES = 2 << 20


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


class AlignedFile:
    """Truncates and writes `path`: every write but the last is `CHUNK_BYTES` long at a multiple of it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        self._pending = bytearray()

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.closed:
            raise ValueError("write to a closed AlignedFile")
        self._pending += data
        whole = len(self._pending) - len(self._pending) % CHUNK_BYTES
        if whole:
            self._write_out(whole)
        return len(data)

    def _write_out(self, count: int) -> None:
        try:
            with memoryview(self._pending) as pending:
                _write_all(self._fd, pending[:count])
        except BaseException:
            self._discard()
            raise
        del self._pending[:count]

    def close(self) -> None:
        """Writes what is left and closes; the file is closed even when that last write fails. After a write
        failed (a full disk), the file is closed already and nothing more is written."""
        if self.closed:
            return
        try:
            with memoryview(self._pending) as pending:
                _write_all(self._fd, pending)
        finally:
            self._discard()

    def _discard(self) -> None:
        """Close without writing what is pending. The buffer is let go, not emptied: the traceback of a failed
        write may still hold views of it, and a buffer with views cannot be resized."""
        fd, self._fd = self._fd, -1
        self._pending = bytearray()
        os.close(fd)

    def __enter__(self) -> AlignedFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
