"""Digests and local files of core/storage.py, against hashlib and the file system."""
from __future__ import annotations

import hashlib
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dataset_assets.core.storage import HASH_BATCH_BYTES, FileDigest, StreamDigest, digest_file


def _chunks(seed: int, total: int) -> list[bytes]:
    """Random bytes cut into chunks of random sizes, some far below and some above a hash batch."""
    rng = random.Random(seed)
    chunks, left = [], total
    while left:
        size = min(left, rng.choice([1, 7, 4096, 65_537, HASH_BATCH_BYTES - 3, HASH_BATCH_BYTES + 5]))
        chunks.append(rng.randbytes(size))
        left -= size
    return chunks


def _expected(chunks: list[bytes]) -> FileDigest:
    data = b"".join(chunks)
    return FileDigest(len(data), hashlib.sha1(data).hexdigest(), hashlib.sha256(data).hexdigest())


def _stream_digest(chunks: list[bytes]) -> FileDigest:
    digest = StreamDigest()
    for chunk in chunks:
        digest.update(chunk)
    return digest.result()


def test_stream_digest_equals_hashlib_over_chunks_crossing_hash_batches() -> None:
    chunks = _chunks(seed=1, total=5 * HASH_BATCH_BYTES + 12_345)

    assert _stream_digest(chunks) == _expected(chunks)


def test_stream_digest_of_nothing_is_the_digest_of_empty_bytes() -> None:
    assert _stream_digest([]) == _expected([])


def test_streams_hashed_at_once_on_the_shared_helpers_keep_their_own_bytes_in_order() -> None:
    streams = [_chunks(seed=seed, total=3 * HASH_BATCH_BYTES + seed) for seed in range(6)]

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(_stream_digest, streams))

    assert results == [_expected(chunks) for chunks in streams]


def test_digest_file_equals_the_stream_digest_of_its_bytes(tmp_path: Path) -> None:
    chunks = _chunks(seed=2, total=2 * HASH_BATCH_BYTES + 99)
    path = tmp_path / "data.bin"
    path.write_bytes(b"".join(chunks))

    assert digest_file(path) == _expected(chunks)
