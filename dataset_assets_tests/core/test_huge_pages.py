"""Local shards are read through 2 MiB pages where Linux can map them so: just written, or read cold.

What is asserted is the kernel's own account of a map (`FilePmdMapped` in /proc/self/smaps). Each
test first checks, on a control file and without our code, that this kernel and file system can map
a file with huge pages that way, and is skipped where they cannot.
"""
from __future__ import annotations

import mmap
import os
import random
import re
from pathlib import Path

import pytest

from dataset_assets.core.aligned_writes import CHUNK_BYTES
from dataset_assets.core.shards import ShardWriter, iter_tar_samples, map_shard


def _huge_mapped_bytes(path: Path) -> int:
    """How many bytes of the live maps of `path` the kernel maps with 2 MiB page entries."""
    total = 0
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", Path("/proc/self/smaps").read_text()):
        if block.split("\n", 1)[0].endswith(str(path)):
            found = re.search(r"FilePmdMapped:\s+(\d+) kB", block)
            total += 0 if found is None else int(found.group(1)) * 1024
    return total


def _read_through_map(path: Path, huge_pages: bool) -> int:
    """Map `path` read-only, touch every page, and return `_huge_mapped_bytes` while it is mapped."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ) as mapping:
        if huge_pages:
            mapping.madvise(mmap.MADV_HUGEPAGE)
        with memoryview(mapping) as view:
            sum(view[::mmap.PAGESIZE])
        return _huge_mapped_bytes(path)


def _evict(path: Path) -> None:
    with open(path, "rb+") as file:
        os.fsync(file.fileno())
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _write_shard(folder: Path) -> Path:
    rng = random.Random(2)
    with ShardWriter(folder, max_samples=10_000) as writer:
        for number in range(2000):
            writer.write(f"k{number:05d}", {"bin": rng.randbytes(rng.randrange(100, 9000))})
    shard = next(folder.glob("*.tar"))
    assert shard.stat().st_size > 4 * CHUNK_BYTES
    return shard


def test_a_shard_just_written_is_mapped_with_huge_pages(tmp_path: Path) -> None:
    """A file system that makes a 2 MiB folio of a 2 MiB write (ext4 from Linux 6.16, for one) keeps a
    shard `ShardWriter` wrote in folios a map takes whole. Through a 1 MiB `BufferedWriter` it did not."""
    control = tmp_path / "control.bin"
    with open(control, "wb", buffering=0) as file:
        file.write(os.urandom(8 << 20))
    if _read_through_map(control, huge_pages=False) == 0:
        pytest.skip("this kernel or file system makes no huge folio of a large write")
    shard = _write_shard(tmp_path / "set")

    mapping = map_shard(shard)
    assert mapping is not None
    with mapping, memoryview(mapping) as view:
        sum(view[::mmap.PAGESIZE])
        assert _huge_mapped_bytes(shard) >= CHUNK_BYTES


def test_a_shard_read_cold_is_read_ahead_into_huge_pages(tmp_path: Path) -> None:
    """A shard not in the page cache (evicted here; in training, usually) is read ahead in 2 MiB folios
    because the reader's map asks for huge pages: without the request, readahead makes small folios."""
    control = tmp_path / "control.bin"
    control.write_bytes(os.urandom(8 << 20))
    _evict(control)
    if _read_through_map(control, huge_pages=True) == 0:
        pytest.skip("this kernel reads no file ahead into huge folios for a map that asks")
    shard = _write_shard(tmp_path / "set")
    _evict(shard)

    samples = iter_tar_samples(shard)
    first = next(samples)

    assert first[0] == "k00000"
    assert _huge_mapped_bytes(shard) >= CHUNK_BYTES
    assert sum(1 for _ in samples) == 1999
