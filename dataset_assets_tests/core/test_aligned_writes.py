"""`AlignedFile`: the bytes written, the writes the kernel sees, and the page-cache folios they make."""
from __future__ import annotations

import mmap
import os
import random
import re
from pathlib import Path

import pytest

from dataset_assets.core import aligned_writes
from dataset_assets.core.aligned_writes import CHUNK_BYTES, AlignedFile
from dataset_assets.core.shards import ShardWriter, map_shard


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


def _huge_mapped_bytes(path: Path) -> int:
    """How much of `path`, mapped read-only and read through, the kernel maps with 2 MiB page entries."""
    mapping = map_shard(path)
    assert mapping is not None
    with mapping, memoryview(mapping) as view:
        sum(view[::mmap.PAGESIZE])
        smaps = Path("/proc/self/smaps").read_text()
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", smaps):
        if block.split("\n", 1)[0].endswith(str(path)):
            found = re.search(r"FilePmdMapped:\s+(\d+) kB", block)
            return 0 if found is None else int(found.group(1)) * 1024
    raise AssertionError(f"{path} is not in /proc/self/smaps")


def test_a_shard_just_written_is_mapped_with_huge_pages_where_the_kernel_can(tmp_path: Path) -> None:
    """Where the file system makes a 2 MiB folio of a 2 MiB write (ext4 from Linux 6.16, for one), which a
    control file written in one 8 MiB write shows, a shard `ShardWriter` wrote is read through huge pages.
    Written through a 1 MiB `BufferedWriter` before, it was not (benchmarks/RESULTS.md "Shards")."""
    control = tmp_path / "control.bin"
    with open(control, "wb", buffering=0) as file:
        file.write(os.urandom(8 << 20))
    if _huge_mapped_bytes(control) == 0:
        pytest.skip("this kernel or file system maps no file read-only with huge pages")
    rng = random.Random(2)
    with ShardWriter(tmp_path / "set", max_samples=10_000) as writer:
        for number in range(2000):
            writer.write(f"k{number:05d}", {"bin": rng.randbytes(rng.randrange(100, 9000))})
    shard = next((tmp_path / "set").glob("*.tar"))

    assert shard.stat().st_size > 4 * CHUNK_BYTES
    assert _huge_mapped_bytes(shard) >= CHUNK_BYTES
