"""Storage primitives: atomic publish of files and folders, digests, and transfer destinations.

A reader must never see a half-written file at its final path: everything is written to a
sibling `*.part` path, flushed and fsynced, then renamed into place (rename is atomic within a
filesystem). Folders are published by building a sibling staging folder and swapping it in.

Two processes may publish the same path at once (two runs of one partition): each such path
has an exclusive `flock` on a hidden `.<name>.lock` beside it, held while a download writes its
`.part` and while a folder is swapped. The kernel drops the lock when its holder dies, so a
`kill -9` never leaves a stale lock; the lock file is removed by whoever releases it. A download
waits for a lock with its transfer's stop event, so stopping the transfer ends the wait.

Downloads write through one small interface, `Destination` -> `FileSink`, so the transfer engine
does not care where bytes land: `LocalDestination` (a folder; the `.part` file and its sidecar
survive interruptions and are resumed) here, `S3Destination` (multipart upload) in `core.s3`.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from dataset_assets.core import _digests
from dataset_assets.core.errors import DatasetAssetsError
from dataset_assets.core.redaction import get_logger

logger = get_logger(__name__)
CHUNK_BYTES = 1 << 20
HASH_BATCH_BYTES = 1 << 20
LOCK_POLL_SECONDS = 0.05
_hashers_lock = threading.Lock()
_hashers: tuple[int, ThreadPoolExecutor] | None = None


@dataclass(frozen=True)
class FileDigest:
    size: int
    sha1: str
    sha256: str


def _hash_pool() -> ThreadPoolExecutor:
    """This process's hashing helper threads; a forked child makes its own (threads do not survive fork)."""
    global _hashers
    with _hashers_lock:
        if _hashers is None or _hashers[0] != os.getpid():
            _hashers = (os.getpid(), ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="digest"))
        return _hashers[1]


class HashlibDigests:
    """sha1 and sha256 by hashlib, one after the other: for CPUs without the SHA extensions."""

    def __init__(self) -> None:
        self._sha1, self._sha256 = hashlib.sha1(), hashlib.sha256()

    def update(self, data: bytes) -> None:
        self._sha1.update(data)
        self._sha256.update(data)

    def hexdigests(self) -> tuple[str, str]:
        return self._sha1.hexdigest(), self._sha256.hexdigest()


# Both digests in one pass where the CPU can (`_digests.c`: 0.70 CPU-s per GiB against hashlib's 1.17).
_Digests = _digests.Sha1Sha256 if _digests.HAS_SHA_NI else HashlibDigests
# Whether a stream's hashing state can be saved for another process (`StreamDigest.state`): hashlib's cannot.
STATE_SAVABLE = _Digests is not HashlibDigests


class StreamDigest:
    """Size, sha1 and sha256 of a byte stream, fed chunk by chunk, hashed off the caller's thread.

    Chunks are batched to `HASH_BATCH_BYTES`; one helper thread hashes a batch into both digests
    (the GIL is released) while the caller receives and writes the next one. One helper per
    stream, not one per digest: on two cores, a receiving thread and two hashing threads share them
    three ways, and the receiver, the critical path, gets two thirds of a core (benchmarks/RESULTS.md
    "Downloads").
    """

    def __init__(self) -> None:
        self._digests, self.size = _Digests(), 0
        self._batch: list[bytes] = []
        self._batched = 0
        self._pending: Future[None] | None = None

    def update(self, chunk: bytes) -> None:
        self._batch.append(chunk)
        self._batched += len(chunk)
        self.size += len(chunk)
        if self._batched >= HASH_BATCH_BYTES:
            batch, self._batch, self._batched = self._batch, [], 0
            self._wait()
            self._pending = _hash_pool().submit(self._hash, batch)

    def _hash(self, batch: list[bytes]) -> None:
        for chunk in batch:
            self._digests.update(chunk)

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def _absorb_all(self) -> None:
        self._wait()
        self._hash(self._batch)
        self._batch, self._batched = [], 0

    def result(self) -> FileDigest:
        self._absorb_all()
        sha1, sha256 = self._digests.hexdigests()
        return FileDigest(size=self.size, sha1=sha1, sha256=sha256)

    def state(self) -> bytes | None:
        """The hashing state after every byte so far, from which `resumed` goes on; None where it cannot be
        saved (`STATE_SAVABLE`)."""
        if not STATE_SAVABLE:
            return None
        self._absorb_all()
        return self._digests.state()  # type: ignore[union-attr]

    @classmethod
    def resumed(cls, state: bytes) -> StreamDigest:
        """The digest of a stream whose first bytes another `StreamDigest` hashed into `state`.

        Raises ValueError if `state` cannot be such bytes, or no state can be restored here (`STATE_SAVABLE`).
        """
        if not STATE_SAVABLE:
            raise ValueError("this CPU hashes with hashlib, whose state cannot be restored")
        digest = cls()
        digest._digests = _digests.Sha1Sha256(state)
        digest.size = digest._digests.length
        return digest


def digest_file(path: Path, digest: StreamDigest | None = None) -> FileDigest:
    """Size, sha1 and sha256 of a file, read once in 1 MiB chunks (into `digest` if given)."""
    digest = digest or StreamDigest()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.result()


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder fsync persists the renames inside it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_file(part: Path, final: Path, synced: bool = False) -> None:
    """fsync `part` (unless `synced`: its writer did, through the handle it wrote with) and atomically
    rename it to `final`."""
    if not synced:
        fsync_path(part)
    os.replace(part, final)
    fsync_path(final.parent)


def lock_path(final: Path) -> Path:
    """The hidden lock file guarding `final` (a file or a folder) against concurrent publishers."""
    return final.with_name(f".{final.name}.lock")


class LockWaitCancelled(DatasetAssetsError):
    """The stop event was set while waiting for another process to release a file's lock; nothing was touched."""


def _flock_now(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _wait_for_flock(fd: int, final: Path, stop: threading.Event | None) -> None:
    """Take `fd`'s exclusive flock. A blocking flock cannot be interrupted, so with `stop` poll instead,
    and raise `LockWaitCancelled` once `stop` is set."""
    if _flock_now(fd):
        return
    logger.info("%s is being written by another process; waiting for it", final)
    if stop is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    while not stop.wait(LOCK_POLL_SECONDS):
        if _flock_now(fd):
            return
    raise LockWaitCancelled(f"{final}: stopped while waiting for another process to finish writing it")


def acquire_lock(final: Path, stop: threading.Event | None = None) -> int:
    """Block until this process holds the exclusive lock of `final` (or `stop` is set); return the lock's fd.

    A releaser unlinks the lock file before closing it, so after acquiring, the lock still
    counts only if the path names the very file locked; otherwise take the new one.
    """
    path = lock_path(final)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _wait_for_flock(fd, final, stop)
        except BaseException:
            os.close(fd)
            raise
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def release_lock(final: Path, fd: int) -> None:
    lock_path(final).unlink(missing_ok=True)
    os.close(fd)


@contextlib.contextmanager
def locked(final: Path, stop: threading.Event | None = None) -> Iterator[None]:
    """Hold the exclusive lock of `final` for the block (see `acquire_lock`)."""
    fd = acquire_lock(final, stop)
    try:
        yield
    finally:
        release_lock(final, fd)


def _hold(path: Path, flags: int = os.O_RDONLY) -> int:
    """Open `path` (a file or a folder) with `flags` and hold an exclusive flock on it, which marks it
    as being written: the kernel drops the lock when the holder exits, however it exits."""
    fd = os.open(path, flags, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _abandoned(path: Path) -> bool:
    """Whether nobody holds `path`'s flock (see `_hold`); False if it vanished meanwhile."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return _flock_now(fd)
    finally:
        os.close(fd)


def remove_abandoned_work(final: Path) -> list[Path]:
    """Delete the `.part` files, staging and retired folders beside `final` that writers killed
    before they could clean up left behind; return what was removed.

    Call with `final`'s lock held: writers create their part or staging folder and take its flock
    under that lock, so every unlocked one found here belongs to a dead writer, and a retired
    folder only exists while a swap holds the lock.
    """
    work = re.compile(rf"\.{re.escape(final.name)}\.[0-9a-f]{{8}}\.(part|staging|retired)")
    removed = []
    for path in sorted(final.parent.glob(f".{glob.escape(final.name)}.*")):
        match = work.fullmatch(path.name)
        if match is not None and (match.group(1) == "retired" or _abandoned(path)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.info("removed %d abandoned partial writes of %s: %s", len(removed), final,
                    ", ".join(path.name for path in removed))
    return removed


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a `.part` path beside `final`; publish it on success, delete it on failure.

    Parts that killed writers left beside `final` are removed first (`remove_abandoned_work`).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.part")
    with locked(final):
        remove_abandoned_work(final)
        owner = _hold(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        yield part
        publish_file(part, final)
    finally:
        part.unlink(missing_ok=True)
        os.close(owner)


def write_bytes_atomic(final: Path, data: bytes, private: bool = False) -> None:
    """Write `data` to `final` atomically; `private` makes it owner-only before any byte is in it."""
    with atomic_file(final) as part:
        if private:
            os.chmod(part, 0o600)
        part.write_bytes(data)


@contextlib.contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a staging folder beside `final`; on success swap it in place of `final`.

    The old folder (if any) is renamed aside before the new one is renamed in, so `final` is
    at every instant either the complete old folder, absent for one rename, or the complete new one.
    The swap holds `final`'s lock: two runs publishing the same folder at once both succeed, last wins.
    Staging folders that killed writers left beside `final` are removed first (`remove_abandoned_work`).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    staging = final.with_name(f".{final.name}.{token}.staging")
    retired = final.with_name(f".{final.name}.{token}.retired")
    with locked(final):
        remove_abandoned_work(final)
        staging.mkdir()
        owner = _hold(staging)
    try:
        yield staging
        for child in staging.rglob("*"):
            if child.is_file():
                fsync_path(child)
        with locked(final):
            if final.exists():
                os.replace(final, retired)
            os.replace(staging, final)
            fsync_path(final.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
        os.close(owner)


class StorageError(DatasetAssetsError):
    """A destination refused or lost bytes; the message names the object and the operation."""


class FileSink(Protocol):
    """Where one file's bytes go, possibly across several HTTP attempts.

    `held` bytes (the resume offset) were fetched under `validator` (the server's ETag, or its
    Last-Modified date when it sent no ETag) when the server announced `total` bytes; `restart`
    drops them. `commit` publishes what was written, atomically; `close` releases the sink,
    keeping held bytes for a later run where it can: a local part always, an S3 upload (which is
    billed while it waits) only when `resumable` says the transfer stopped rather than failed.
    `published` is the final file, verified, if another run published it while `open` waited
    for the file (a check before `open` may have come just before that run's rename).
    """

    held: int
    validator: str | None
    total: int | None

    def restart(self, validator: str | None, total: int | None) -> None: ...

    def write(self, chunk: bytes) -> None: ...

    def digest(self) -> FileDigest: ...

    def commit(self) -> None: ...

    def close(self, resumable: bool = False) -> None: ...

    def published(self, size: int | None, sha1: str | None) -> FileDigest | None: ...


class Destination(Protocol):
    """A place files land, addressed by `<sequence>/<filename>` relative paths.

    Where `verified` or `open` wait for another process, setting `stop` ends the wait with `LockWaitCancelled`.
    `open` is given the file's `size` when it is known (an S3 sink then looks for an upload to continue only
    for a file that may need more than one part).
    `drop_leftovers` removes what runs killed while writing a file left for it, once the file is published and
    verified (uploaded by this run or found so); failing to fails nothing.
    """

    def describe(self, relative_path: str = "") -> str: ...

    def verified(self, relative_path: str, size: int | None, sha1: str | None,
                 stop: threading.Event | None = None) -> FileDigest | None: ...

    def open(self, relative_path: str, sha1: str | None, stop: threading.Event | None = None,
             size: int | None = None) -> FileSink: ...

    def drop_leftovers(self, relative_path: str) -> None: ...


def matches(digest: FileDigest, size: int | None, sha1: str | None) -> bool:
    """Whether `digest` agrees with whichever of the expected size and sha1 are known."""
    return (size is None or digest.size == size) and (sha1 is None or digest.sha1 == sha1)


def _sidecar_state(validator: str | None, total: int | None) -> dict[str, object]:
    """The sidecar's JSON: a quoted validator is an ETag (`"x"`, `W/"x"`), any other a Last-Modified
    date, as If-Range tells them apart (RFC 9110 13.1.5)."""
    is_etag = validator is not None and validator.startswith(('"', 'W/"'))
    return {"etag": validator if is_etag else None, "last_modified": None if is_etag else validator, "total": total}


class _LocalSink:
    """`<file>.part` plus `<file>.part.json` ({"etag", "last_modified", "total"}) beside the final path.

    The sink holds the file's lock from opening to `close`, so a second process downloading the
    same file waits instead of appending its bytes to the same `.part`.
    """

    def __init__(self, final: Path, stop: threading.Event | None = None) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        self._lock: int | None = acquire_lock(final, stop)
        self._final = final
        self._part = final.with_name(final.name + ".part")
        self._sidecar = final.with_name(final.name + ".part.json")
        self._digest = StreamDigest()
        self._handle: BinaryIO | None = None
        try:
            state = self._read_sidecar()
            validator = state.get("etag") or state.get("last_modified")
            total = state.get("total")
            self.validator: str | None = validator if isinstance(validator, str) else None
            self.total: int | None = total if isinstance(total, int) else None
            self.held = self._held_bytes()
        except BaseException:
            self.close()
            raise

    def _held_bytes(self) -> int:
        """How many bytes the `.part` holds (hashed into the sink's digest); 0 without a part."""
        try:
            return digest_file(self._part, self._digest).size
        except FileNotFoundError:
            return 0

    def _open_part(self, mode: str) -> BinaryIO:
        """The `.part` opened with `mode`; its folder, there when the sink opened, is made again if removed since."""
        try:
            return open(self._part, mode)
        except FileNotFoundError:
            self._final.parent.mkdir(parents=True, exist_ok=True)
            return open(self._part, mode)

    def _read_sidecar(self) -> dict[str, object]:
        try:
            state = json.loads(self._sidecar.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):  # not JSON, or not even text (garbled by a crash)
            return {}
        return state if isinstance(state, dict) else {}

    def restart(self, validator: str | None, total: int | None) -> None:
        self._close_handle()
        # Truncate before recording the new validator: a crash in between leaves an empty part.
        self._handle = self._open_part("wb")
        self._sidecar.write_text(json.dumps(_sidecar_state(validator, total)))
        self.validator, self.total, self.held = validator, total, 0
        self._digest = StreamDigest()

    def write(self, chunk: bytes) -> None:
        if self._handle is None:
            self._handle = self._open_part("ab")
        self._handle.write(chunk)
        self._digest.update(chunk)
        self.held += len(chunk)

    def digest(self) -> FileDigest:
        if self._handle is not None:
            self._handle.flush()
        return self._digest.result()

    def commit(self) -> None:
        if self._handle is None:  # all bytes held from an earlier run, or none at all (an empty part is made)
            self._handle = open(self._part, "ab")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._close_handle()
        # Sidecar first: a crash before the rename leaves a complete part that is verified again.
        self._sidecar.unlink(missing_ok=True)
        publish_file(self._part, self._final, synced=True)

    def published(self, size: int | None, sha1: str | None) -> FileDigest | None:
        return _verified_file(self._final, size, sha1)

    def close(self, resumable: bool = False) -> None:
        """Release the part, kept for a later run however the transfer ended (`resumable` is for sinks whose
        held bytes cost)."""
        # Closing flushes the last buffered bytes, which can fail (disk full): the lock goes all the same.
        try:
            self._close_handle()
        finally:
            if self._lock is not None:
                release_lock(self._final, self._lock)
                self._lock = None

    def _close_handle(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()


def _verified_file(final: Path, size: int | None, sha1: str | None) -> FileDigest | None:
    """The digest of `final` if it exists and matches `size` and `sha1`; the caller holds its lock."""
    if not final.is_file() or (size is not None and final.stat().st_size != size):
        return None
    digest = digest_file(final)
    return digest if matches(digest, size, sha1) else None


class LocalDestination:
    """Files under `root/<sequence>/<filename>`, resumable through their `.part` files."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self, relative_path: str = "") -> str:
        return str(self.root / relative_path) if relative_path else str(self.root)

    def verified(self, relative_path: str, size: int | None, sha1: str | None,
                 stop: threading.Event | None = None) -> FileDigest | None:
        """The digest of a final file that matches the expected size and sha1, else None.

        Waits while another process downloads the file, so a second run reuses what the first publishes.
        """
        final = self.root / relative_path
        if not final.parent.is_dir():
            return None
        with locked(final, stop):
            return _verified_file(final, size, sha1)

    def open(self, relative_path: str, sha1: str | None, stop: threading.Event | None = None,
             size: int | None = None) -> FileSink:
        return _LocalSink(self.root / relative_path, stop)

    def drop_leftovers(self, relative_path: str) -> None:
        """Nothing: a killed download leaves its `.part` bytes for the next run to resume, and publishing the file
        renames them."""
