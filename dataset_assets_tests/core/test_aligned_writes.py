"""`AlignedFile`: the bytes written and the writes the kernel sees (the folios they make: test_huge_pages.py)."""
from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from dataset_assets.core import aligned_writes
from dataset_assets.core.aligned_writes import CHUNK_BYTES, AlignedFile


def _pieces(seed: int) -> list[bytes]:
    """Writes of every awkward size: empty, tiny, exactly a chunk, more than two chunks."""
    rng = random.Random(seed)
    sizes = [0, 1, 511, CHUNK_BYTES, 3, 2 * CHUNK_BYTES + 7, 0] + [rng.randrange(1, 300_000) for _ in range(40)]
    return [rng.randbytes(size) for size in sizes]


def test_the_file_holds_every_write_in_order(tmp_path: Path) -> None:
    pieces = _pieces(0)
    (tmp_path / "f").write_bytes(b"stale bytes that must be truncated" * 100_000)

    with AlignedFile(tmp_path / "f") as file:
        for piece in pieces:
            assert file.write(piece) == len(piece)

    assert (tmp_path / "f").read_bytes() == b"".join(pieces)


def test_every_write_but_the_last_is_a_whole_chunk_at_a_chunk_offset(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spy on `os.write` (the real call still writes): the sizes and offsets of the writes the kernel sees
    cannot be observed from the file itself."""
    seen: list[tuple[int, int]] = []
    real_write = os.write

    def spying_write(fd: int, data: memoryview) -> int:
        seen.append((os.lseek(fd, 0, os.SEEK_CUR), len(data)))
        return real_write(fd, data)

    pieces = _pieces(1)
    monkeypatch.setattr(aligned_writes.os, "write", spying_write)
    with AlignedFile(tmp_path / "f") as file:
        for piece in pieces:
            file.write(piece)

    total = sum(map(len, pieces))
    assert sum(size for _, size in seen) == total
    assert all(offset % CHUNK_BYTES == 0 for offset, _ in seen)
    assert all(size % CHUNK_BYTES == 0 for _, size in seen[:-1])


def test_a_closed_file_refuses_writes_and_closes_once(tmp_path: Path) -> None:
    file = AlignedFile(tmp_path / "f")
    file.write(b"abc")
    file.close()
    file.close()

    with pytest.raises(ValueError, match="closed"):
        file.write(b"more")
    assert (tmp_path / "f").read_bytes() == b"abc"


def test_a_failed_write_raises_its_own_error_and_leaves_the_file_closed() -> None:
    """/dev/full fails every write with ENOSPC, as a full disk does. The error must come out as it is, also
    while its traceback (which holds views of the pending bytes) is alive, and nothing more is written."""
    file = AlignedFile("/dev/full")
    with pytest.raises(OSError) as raised:
        file.write(b"x" * (CHUNK_BYTES + 1))
    assert raised.value.errno == errno.ENOSPC

    file.close()

    assert file.closed
    with pytest.raises(ValueError, match="closed"):
        file.write(b"more")
