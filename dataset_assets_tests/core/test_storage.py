"""Digests and atomic local writes of core/storage.py, against hashlib, the file system and killed writers."""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dataset_assets.core.storage import (
    HASH_BATCH_BYTES,
    FileDigest,
    LocalDestination,
    StreamDigest,
    atomic_file,
    atomic_folder,
    digest_file,
    remove_abandoned_work,
    write_bytes_atomic,
)


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


WRITER = """
import sys, time
from pathlib import Path
from dataset_assets.core.storage import atomic_file, atomic_folder
final = Path(sys.argv[2])
if sys.argv[1] == "folder":
    with atomic_folder(final) as staging:
        (staging / "half.bin").write_bytes(b"half")
        print("ready", flush=True)
        time.sleep(60)
else:
    with atomic_file(final) as part:
        part.write_bytes(b"half")
        print("ready", flush=True)
        time.sleep(60)
"""


def _killed_mid_write(kind: str, final: Path) -> list[Path]:
    """Run a writer in a child process, SIGKILL it mid-write, return the hidden work it left."""
    child = subprocess.Popen([sys.executable, "-c", WRITER, kind, str(final)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
    finally:
        child.kill()
        child.wait()
    return sorted(path for path in final.parent.iterdir() if path.name.startswith(f".{final.name}."))


def test_a_staging_folder_left_by_a_killed_writer_is_removed_by_the_next_publish(tmp_path: Path) -> None:
    final = tmp_path / "shard_set"
    [left] = _killed_mid_write("folder", final)
    assert left.name.endswith(".staging") and (left / "half.bin").exists()

    with atomic_folder(final) as staging:
        (staging / "whole.bin").write_bytes(b"whole")

    assert sorted(path.name for path in tmp_path.iterdir()) == ["shard_set"]
    assert [path.name for path in final.iterdir()] == ["whole.bin"]


def test_a_part_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path: Path) -> None:
    final = tmp_path / "local_all_tars.yaml"
    [left] = _killed_mid_write("file", final)
    assert left.name.endswith(".part") and left.read_bytes() == b"half"

    write_bytes_atomic(final, b"whole")

    assert sorted(path.name for path in tmp_path.iterdir()) == ["local_all_tars.yaml"]
    assert final.read_bytes() == b"whole"


def test_work_of_a_live_writer_is_left_alone(tmp_path: Path) -> None:
    folder, file = tmp_path / "shard_set", tmp_path / "index.json"
    with atomic_folder(folder) as staging, atomic_file(file) as part:
        part.write_bytes(b"in progress")
        (staging / "in_progress.bin").write_bytes(b"x")

        assert remove_abandoned_work(folder) == [] and remove_abandoned_work(file) == []
        write_bytes_atomic(file, b"other writer")
        with atomic_folder(folder) as other:
            (other / "other.bin").write_bytes(b"y")

        assert part.read_bytes() == b"in progress" and (staging / "in_progress.bin").exists()
    assert file.read_bytes() == b"in progress" and [path.name for path in folder.iterdir()] == ["in_progress.bin"]


def test_a_download_sink_whose_last_bytes_hit_a_full_disk_still_releases_the_file(tmp_path: Path) -> None:
    destination = LocalDestination(tmp_path)
    sink = destination.open("seq_000/shards-0000.tar", None)
    (tmp_path / "seq_000" / "shards-0000.tar.part").symlink_to("/dev/full")  # every write: No space left on device
    sink.write(b"x" * 100)  # buffered: the disk-full error comes when the sink flushes them on close
    with pytest.raises(OSError, match="No space left on device"):
        sink.close()

    # The next download of the file (a retry, the next run in this process) takes its lock first.
    checked = threading.Event()
    threading.Thread(target=lambda: (destination.verified("seq_000/shards-0000.tar", None, None), checked.set()),
                     daemon=True).start()
    assert checked.wait(10)


def test_a_download_sink_resumes_its_held_bytes_and_a_restart_truncates_them_before_recording_the_new_version(
        tmp_path: Path) -> None:
    destination = LocalDestination(tmp_path)
    sink = destination.open("seq_000/shards-0000.tar", None)
    sink.restart('"v1"', 6)
    sink.write(b"abc")
    sink.close()

    resumed = destination.open("seq_000/shards-0000.tar", None)
    assert (resumed.held, resumed.validator, resumed.total) == (3, '"v1"', 6)
    resumed.write(b"def")
    assert resumed.digest() == _expected([b"abcdef"])
    resumed.close()

    restarted = destination.open("seq_000/shards-0000.tar", None)
    restarted.restart('"v2"', 3)
    part = tmp_path / "seq_000" / "shards-0000.tar.part"
    assert restarted.held == 0 and part.read_bytes() == b""
    assert json.loads(part.with_name("shards-0000.tar.part.json").read_text())["etag"] == '"v2"'
    restarted.write(b"xyz")
    assert restarted.digest() == _expected([b"xyz"])
    restarted.commit()
    restarted.close()

    assert sorted(path.name for path in (tmp_path / "seq_000").iterdir()) == ["shards-0000.tar"]
    assert (tmp_path / "seq_000" / "shards-0000.tar").read_bytes() == b"xyz"


@pytest.mark.parametrize("restart", [True, False], ids=["restarted", "appended"])
def test_a_download_sink_whose_folder_was_removed_meanwhile_makes_it_again_and_publishes(
        tmp_path: Path, restart: bool) -> None:
    destination = LocalDestination(tmp_path)
    sink = destination.open("seq_000/shards-0000.tar", None)
    shutil.rmtree(tmp_path / "seq_000")
    if restart:
        sink.restart(None, 4)
    sink.write(b"data")
    assert sink.digest() == _expected([b"data"])
    sink.commit()
    sink.close()

    assert (tmp_path / "seq_000" / "shards-0000.tar").read_bytes() == b"data"


def test_a_download_sink_given_no_bytes_publishes_an_empty_file(tmp_path: Path) -> None:
    destination = LocalDestination(tmp_path)
    sink = destination.open("seq_000/empty.bin", None)
    assert sink.digest() == _expected([])
    sink.commit()
    sink.close()

    assert (tmp_path / "seq_000" / "empty.bin").read_bytes() == b""
    assert destination.verified("seq_000/empty.bin", 0, hashlib.sha1(b"").hexdigest()) == _expected([])
