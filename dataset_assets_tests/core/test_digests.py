"""sha1 + sha256 in one pass (`core/_digests.c`) and its hashlib fallback, against hashlib itself."""
from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest

from dataset_assets.core import _digests, storage
from dataset_assets.core.storage import HashlibDigests, StreamDigest

needs_sha_ni = pytest.mark.skipif(not _digests.HAS_SHA_NI, reason="this CPU has no SHA extensions")
IMPLEMENTATIONS = [pytest.param(lambda: _digests.Sha1Sha256(), marks=needs_sha_ni, id="sha-ni"),
                   pytest.param(HashlibDigests, id="hashlib")]
# every length around the 64-byte block and the 56-byte padding boundary, then larger ones
LENGTHS = [*range(0, 200), 447, 448, 449, 4095, 4096, 4097, (1 << 20) + 13]


def expected(data: bytes) -> tuple[str, str]:
    return hashlib.sha1(data).hexdigest(), hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("make", IMPLEMENTATIONS)
def test_both_digests_equal_hashlibs_for_any_length_and_chunking(make: Callable[[], object]) -> None:
    rng = random.Random(7)
    for length in LENGTHS:
        data = rng.randbytes(length)
        digests = make()
        position = 0
        while position < length:
            step = rng.choice([1, 3, 55, 56, 63, 64, 65, 4096, 70_000])
            digests.update(memoryview(data)[position:position + step])  # type: ignore[attr-defined]
            position += step
        assert digests.hexdigests() == expected(data), length  # type: ignore[attr-defined]


@pytest.mark.parametrize("make", IMPLEMENTATIONS)
def test_digests_mid_stream_do_not_disturb_the_rest(make: Callable[[], object]) -> None:
    first, second = b"a" * 100, b"b" * 5000
    digests = make()
    digests.update(first)  # type: ignore[attr-defined]
    assert digests.hexdigests() == expected(first)  # type: ignore[attr-defined]
    digests.update(second)  # type: ignore[attr-defined]
    assert digests.hexdigests() == expected(first + second)  # type: ignore[attr-defined]


@needs_sha_ni
def test_threads_hashing_their_own_streams_at_once_get_their_own_digests() -> None:
    """Large updates release the GIL: streams hashed on several threads at once must not mix."""
    streams = [random.Random(seed).randbytes(3_000_000) for seed in range(4)]
    results: dict[int, tuple[str, str]] = {}

    def work(number: int) -> None:
        digests = _digests.Sha1Sha256()
        for start in range(0, len(streams[number]), 65_536):
            digests.update(streams[number][start:start + 65_536])
        results[number] = digests.hexdigests()

    threads = [threading.Thread(target=work, args=(number,)) for number in range(len(streams))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {number: expected(stream) for number, stream in enumerate(streams)}


@needs_sha_ni
def test_stream_digests_use_the_one_pass_digests_on_a_cpu_that_has_sha_ni() -> None:
    assert storage._Digests is _digests.Sha1Sha256


@pytest.mark.parametrize("make", IMPLEMENTATIONS)
def test_a_stream_digest_hashed_in_batches_equals_hashlibs(make: Callable[[], object],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "_Digests", make)
    digest = StreamDigest()
    data = random.Random(3).randbytes(5 * storage.HASH_BATCH_BYTES + 17)
    for start in range(0, len(data), 100_000):
        digest.update(data[start:start + 100_000])
    result = digest.result()
    assert (result.size, result.sha1, result.sha256) == (len(data), *expected(data))


@needs_sha_ni
def test_update_refuses_what_is_not_bytes() -> None:
    with pytest.raises(TypeError):
        _digests.Sha1Sha256().update("text")  # type: ignore[arg-type]


@needs_sha_ni
@pytest.mark.parametrize("split", [0, 1, 63, 64, 65, 5 * 64 + 7, 300_001])
def test_a_saved_state_goes_on_in_another_process_to_hashlibs_digests(split: int) -> None:
    """The state crosses a process boundary as bytes, as an upload record carries it (`core.s3_resume`)."""
    data = random.Random(split).randbytes(400_000)
    first = StreamDigest()
    first.update(data[:split])
    state = first.state()
    assert state is not None
    script = ("import sys; from dataset_assets.core.storage import StreamDigest; "
              "digest = StreamDigest.resumed(bytes.fromhex(sys.argv[1])); digest.update(sys.stdin.buffer.read()); "
              "result = digest.result(); print(result.size, result.sha1, result.sha256)")
    finished = subprocess.run([sys.executable, "-c", script, state.hex()], input=data[split:], capture_output=True,
                              check=True)
    assert finished.stdout.decode().split() == [str(len(data)), *expected(data)]


@needs_sha_ni
@pytest.mark.parametrize(("state", "problem"), [
    (b"", "at least 60 bytes, got 0"),
    (bytes(52) + (70).to_bytes(8, "big") + bytes(5), "of 70 bytes absorbed has 66 bytes, got 65"),
    (bytes(52) + (64).to_bytes(8, "big") + bytes(1), "of 64 bytes absorbed has 60 bytes, got 61"),
])
def test_a_state_of_the_wrong_length_for_its_byte_count_is_refused(state: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        StreamDigest.resumed(state)


def test_without_sha_ni_no_state_is_saved_or_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "_Digests", HashlibDigests)
    monkeypatch.setattr(storage, "STATE_SAVABLE", False)
    digest = StreamDigest()
    digest.update(b"abc")
    assert digest.state() is None
    with pytest.raises(ValueError, match="hashlib, whose state cannot be restored"):
        StreamDigest.resumed(bytes(60))
