"""WebDataset shard writing (deterministic, indexed, optionally zstd-blocked) and safe shard reading.

Shards are POSIX tars whose members are `<key>.<ext>`, grouped per sample, members of a sample
sorted by extension, with mtime 0, uid/gid 0 and mode 0644, so the same samples always produce
the same bytes (byte-identical to `tarfile` in PAX format). `ShardWriter` records where every
member's data lands, which becomes the shard set's `_index.json` (see `core.index`).

With `Compression`, every `block_samples` consecutive samples of a shard are written as one
plain tar (same member headers, ending in two zero blocks), compressed as a single zstd frame
(content size and checksum included) and stored as the member `zstd-block-NNNNNN.tar.zst`.
`zstd -d` + `tar t` lists such a block; our readers expand blocks transparently, plain
`webdataset` sees one opaque member per block. `block_samples=1` compresses each sample alone.
A block is closed early rather than outgrow the 1 GiB readers decompress (`MAX_BLOCK_BYTES`),
and a sample that alone would is refused.

Reading refuses any member that is not a plain file with a relative, non-escaping name
(symlinks, hard links, devices, `..`, absolute). Two loops share the header parse and the
refusals: `iter_tar_members` over a stream (http, s3, a pipe), and `_buffer_samples` over a tar
in memory (a decompressed block) or a local shard mapped with `map_shard`, which can hand out
members as zero-copy views. `_buffer_samples` walks plain, intact members in compiled code
(`_tarwalk.c`) and hands every other header to the same Python parser. Every reader names and
skips members exactly as webdataset does (`split_member_name`), so a foreign tar reads the same to both.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import io
import itertools
import json
import mmap
import os
import re
import shutil
import stat
import struct
import tarfile
import threading
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NamedTuple

import zstandard

from dataset_assets.core import storage
from dataset_assets.core._tarwalk import SampleWalker
from dataset_assets.core.aligned_writes import AlignedFile
from dataset_assets.core.errors import DatasetAssetsError, UnsafeArchiveError
from dataset_assets.core.index import (
    INDEX_FILE,
    Block,
    IndexEntry,
    Member,
    ShardIndex,
    ShardInfo,
    member_span,
    read_index,
    slice_members,
    write_index,
)
from dataset_assets.core.paths import escape_reason
from dataset_assets.core.redaction import get_logger

logger = get_logger(__name__)
Sample = Mapping[str, bytes]
MemberData = bytes | memoryview
Buffer = bytes | bytearray | memoryview | mmap.mmap
# name, key, extension, data offset, size, next header's offset, is a zstd block (see `_member_at`)
_SlowMember = tuple[str, str, str, int, int, int, bool]
BLOCKSIZE = tarfile.BLOCKSIZE
RECORDSIZE = tarfile.RECORDSIZE
BLOCK_PREFIX = "zstd-block-"
BLOCK_NAME = re.compile(r"zstd-block-\d{6,}\.tar\.zst")  # 6 digits, more from the millionth block on
MAX_BLOCK_BYTES = 1 << 30
MAX_STREAMED_MEMBER_BYTES = 1 << 30
SKIP_READ_BYTES = 1 << 20
SMALL_MEMBER_BYTES = 1 << 16
SPAN_READ_BYTES = 1 << 16
# Member names webdataset skips, as metadata, without a word: `__name__`, and anything below `__name__/`.
WEBDATASET_METADATA = re.compile(r"__[^/]*__($|/)")
# webdataset's `base_plus_ext`: the key runs to the first dot after the last slash, and needs a character
# other than a dot just before it; a name that does not match is skipped.
WEBDATASET_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
# Fields webdataset (and `core.loading`) add to every sample beside its members.
SAMPLE_FIELDS = frozenset({"__key__", "__url__", "__local_path__"})
_ZERO_BLOCK = b"\0" * BLOCKSIZE
_END_OF_ARCHIVE = 2 * _ZERO_BLOCK
# Headers that describe the member after them. A GNU long link name is read past like the others, so
# that the link member it belongs to is refused under its own name.
_EXTENDED_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
# name, size, checksum, type flag and prefix of a ustar header (mode, ids, mtime, link name, magic,
# version, owner names and device numbers are skipped: a safe plain file does not need them).
_HEADER_FIELDS = struct.Struct("100s24x12s12x8sc188x155s")


@dataclass(frozen=True)
class Compression:
    """zstd compression of blocks of `block_samples` consecutive samples at `level`."""

    level: int = 3
    block_samples: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.level <= 22:
            raise ValueError(f"zstd level must be between 1 and 22, got {self.level}")
        if self.block_samples < 1:
            raise ValueError(f"block_samples must be >= 1, got {self.block_samples}")


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _header(name: str, size: int) -> bytes:
    return _tar_info(name, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padded(size: int) -> int:
    """A member's size rounded up to whole tar blocks."""
    return size + (-size % BLOCKSIZE)


def _reads_back(name: str) -> bool:
    """Whether a tar name holding `name` reads back as `name`: names are written as UTF-8 with lone
    surrogates as the bytes they escape, so `\\udcc3\\udca9` reads back as `é`, and `\\ud800` has no bytes."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape") == name
    except UnicodeEncodeError:
        return False


def check_sample_key(key: str) -> None:
    """A sample key becomes a tar member prefix, so it must not contain dots or escape (or NUL, where
    a tar name ends), and must read back as written."""
    if "." in key or "\0" in key or escape_reason(key) is not None:
        raise DatasetAssetsError(f"invalid sample key {key!r}: must be non-empty, relative, without dots or NUL")
    if not _reads_back(key):
        raise DatasetAssetsError(f"invalid sample key {key!r}: its surrogates would not read back as written")
    if key.endswith("/"):
        raise DatasetAssetsError(f"invalid sample key {key!r}: its last part is empty, which would make hidden "
                                 f"files such as {key + '.json'!r}")
    if key.rpartition("/")[2].startswith(BLOCK_PREFIX):
        raise DatasetAssetsError(f"invalid sample key {key!r}: the prefix {BLOCK_PREFIX!r} names compressed blocks")


def _check_extension(key: str, extension: str) -> None:
    """The member name must read back as written: readers refuse `a\\..` (a backslash separates)."""
    if not extension or "/" in extension or "\0" in extension or extension.startswith(".") \
            or escape_reason(f"{key}.{extension}") is not None or not _reads_back(extension):
        raise DatasetAssetsError(f"sample {key!r}: invalid member extension {extension!r}")
    if extension != extension.lower():
        raise DatasetAssetsError(f"sample {key!r}: member extension {extension!r} has capitals: webdataset reads "
                                 f"it as {extension.lower()!r}")
    if extension in SAMPLE_FIELDS:
        raise DatasetAssetsError(f"sample {key!r}: member extension {extension!r} is the name of a field "
                                 f"webdataset adds to every sample")
    name = f"{key}.{extension}"
    if WEBDATASET_METADATA.match(name):
        raise DatasetAssetsError(f"sample {key!r}: member {name!r} would be lost: webdataset skips it as metadata")


def _member_bytes(key: str, extension: str, data: object) -> MemberData:
    """`data` as bytes or a flat byte view: `len` of a numpy array or a typed memoryview counts items,
    and a member's header must hold its size in bytes."""
    if isinstance(data, bytes):
        return data
    try:
        return memoryview(data).cast("B")  # type: ignore[arg-type]
    except TypeError as error:
        raise DatasetAssetsError(f"sample {key!r}: member {extension!r} is not a contiguous bytes-like object "
                                 f"({error})") from error


class _TarBuilder:
    """Appends deterministic members to a byte sink, recording where each member's data starts."""

    def __init__(self, sink: BinaryIO | AlignedFile, hashing: bool) -> None:
        self.sink = sink
        self.size = 0
        self.sha256 = hashlib.sha256() if hashing else None

    def _put(self, data: MemberData) -> None:
        self.sink.write(data)
        if self.sha256 is not None:
            self.sha256.update(data)
        self.size += len(data)

    def add(self, name: str, data: MemberData) -> int:
        """Write one member; returns the offset of its data."""
        self._put(_header(name, len(data)))
        offset = self.size
        self._put(data)
        self._put(_ZERO_BLOCK[: -len(data) % BLOCKSIZE])
        return offset

    def add_sample(self, key: str, sample: Mapping[str, MemberData]) -> tuple[Member, ...]:
        return tuple((ext, self.add(f"{key}.{ext}", sample[ext]), len(sample[ext])) for ext in sorted(sample))

    def finish(self, record: bool) -> None:
        """End-of-archive blocks, padded to a whole tar record when `record` (as `tarfile` does)."""
        self._put(_END_OF_ARCHIVE)
        if record:
            self._put(b"\0" * (-self.size % RECORDSIZE))


def _check_shard_pattern(pattern: str) -> None:
    """Shard names must differ by number and stay in the set's folder: with a fixed name every shard
    would overwrite the one before, and an append would look for a free number forever."""
    try:
        first, second = pattern.format(index=0), pattern.format(index=1)
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"shard name pattern {pattern!r} must format with an index only ({error!r})") from error
    if first == second:
        raise ValueError(f"shard name pattern {pattern!r} gives every shard the same name: use {{index}}")
    reason = escape_reason(first)
    if reason is not None:
        raise ValueError(f"shard name pattern {pattern!r}: {reason}")


def _sample_tar_bytes(key: str, sample: Mapping[str, MemberData]) -> int:
    """How many bytes `_TarBuilder.add_sample` writes for this sample, headers included."""
    return sum(len(_header(f"{key}.{ext}", len(data))) + _padded(len(data)) for ext, data in sample.items())


class ShardWriter:
    """Write samples into `folder/<pattern>` shards, rolling by sample count or bytes.

    The caller owns atomicity of the shard *set* (write into a staging folder from
    `storage.atomic_folder`); this class guarantees each shard's bytes are deterministic and
    records the set's `index` (shard numbers in it start at 0 whatever `start` is).
    """

    def __init__(
        self,
        folder: Path,
        pattern: str = "shards-{index:04d}.tar",
        max_samples: int = 1000,
        max_bytes: int | None = None,
        compression: Compression | None = None,
        start: int = 0,
    ) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        _check_shard_pattern(pattern)
        self.folder = folder
        self.pattern = pattern
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.compression = compression
        self.start = start
        self.shards: list[ShardInfo] = []
        self._entries: list[IndexEntry] = []
        self._blocks: list[Block] = []
        self._pending: list[tuple[str, Mapping[str, MemberData]]] = []
        self._pending_bytes = 0
        self._pending_tar_bytes = 0
        self._keys: set[str] = set()
        self._file: AlignedFile | None = None
        self._tar: _TarBuilder | None = None
        self._samples_in_shard = 0
        self._name = ""

    @property
    def index(self) -> ShardIndex:
        """The index of every shard closed so far."""
        return ShardIndex(tuple(self.shards), tuple(self._entries), tuple(self._blocks))

    def _open_next(self) -> None:
        self._name = self.pattern.format(index=self.start + len(self.shards))
        path = self.folder / self._name
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = AlignedFile(path)
        self._tar = _TarBuilder(self._file, hashing=True)
        self._samples_in_shard = 0

    def _flush_block(self) -> None:
        if not self._pending or self._tar is None or self.compression is None:
            return
        raw = io.BytesIO()
        block_tar = _TarBuilder(raw, hashing=False)
        located = [(key, block_tar.add_sample(key, sample)) for key, sample in self._pending]
        block_tar.finish(record=False)
        compressor = zstandard.ZstdCompressor(level=self.compression.level, write_checksum=True)
        data = compressor.compress(raw.getvalue())
        block = len(self._blocks)
        offset = self._tar.add(f"{BLOCK_PREFIX}{block:06d}.tar.zst", data)
        self._blocks.append(Block(len(self.shards), offset, len(data)))
        self._entries += [IndexEntry(key, len(self.shards), members, block) for key, members in located]
        self._pending, self._pending_bytes, self._pending_tar_bytes = [], 0, 0

    def _close_current(self) -> None:
        if self._tar is None or self._file is None:
            return
        self._flush_block()
        self._tar.finish(record=True)
        self._file.close()
        assert self._tar.sha256 is not None
        compression = "zstd" if self.compression is not None else None
        self.shards.append(
            ShardInfo(self._name, self._samples_in_shard, self._tar.size, self._tar.sha256.hexdigest(), compression)
        )
        self._tar = self._file = None

    def _full(self) -> bool:
        if self._tar is None:
            return False
        size = self._tar.size + self._pending_bytes
        return self._samples_in_shard >= self.max_samples or (self.max_bytes is not None and size >= self.max_bytes)

    def write(self, key: str, sample: Sample) -> None:
        check_sample_key(key)
        if key in self._keys:  # readers would merge it into (or yield it beside) the first: one key, one row
            raise DatasetAssetsError(f"{self.folder}: sample key {key!r} was already written")
        if not sample:
            raise DatasetAssetsError(f"sample {key!r} has no members")
        for extension in sample:
            _check_extension(key, extension)
        members = {extension: _member_bytes(key, extension, data) for extension, data in sample.items()}
        tar_bytes = 0 if self.compression is None else self._block_room(key, members)
        with self._naming_write_errors():
            if self._full():
                self._close_current()
            if self._tar is None:
                self._open_next()
            assert self._tar is not None
            if self.compression is None:
                self._entries.append(IndexEntry(key, len(self.shards), self._tar.add_sample(key, members)))
            else:
                if self._pending_tar_bytes + tar_bytes + len(_END_OF_ARCHIVE) > MAX_BLOCK_BYTES:
                    self._flush_block()
                self._pending.append((key, members))
                self._pending_tar_bytes += tar_bytes
                self._pending_bytes += sum(len(data) + 2 * BLOCKSIZE for data in members.values())
                if len(self._pending) >= self.compression.block_samples:
                    self._flush_block()
        self._keys.add(key)
        self._samples_in_shard += 1

    def _block_room(self, key: str, sample: Mapping[str, MemberData]) -> int:
        """The bytes `sample` takes in a block's tar, refused past what readers decompress (`MAX_BLOCK_BYTES`)."""
        tar_bytes = _sample_tar_bytes(key, sample)
        if tar_bytes + len(_END_OF_ARCHIVE) > MAX_BLOCK_BYTES:
            raise DatasetAssetsError(f"sample {key!r}: its {tar_bytes} bytes of tar do not fit in a zstd block "
                                     f"(at most {MAX_BLOCK_BYTES}); write it without compression")
        return tar_bytes

    def close(self) -> list[ShardInfo]:
        with self._naming_write_errors():
            self._close_current()
        return list(self.shards)

    @contextlib.contextmanager
    def _naming_write_errors(self) -> Iterator[None]:
        """An OSError while writing (a full disk, say) names the shard being written."""
        try:
            yield
        except OSError as error:
            raise DatasetAssetsError(
                f"{self.folder / self._name}: cannot write shard ({error.strerror or error})") from error

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        elif self._file is not None:
            with contextlib.suppress(OSError):  # flushing may fail again (a full disk): keep the first error
                self._file.close()


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on a shard set, so concurrent appends cannot lose each other's rows."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".index.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _first_free_number(folder: Path, pattern: str, index: ShardIndex) -> int:
    taken = {shard.name for shard in index.shards}
    number = len(index.shards)
    while pattern.format(index=number) in taken or (folder / pattern.format(index=number)).exists():
        number += 1
    return number


APPEND_JOURNAL = ".append-journal.json"


def _current_index(folder: Path) -> ShardIndex:
    return read_index(folder) if (folder / INDEX_FILE).exists() else ShardIndex()


def _recover_interrupted_append(folder: Path, index: ShardIndex) -> None:
    """Undo what an append killed mid-way left in `folder`; call with the set's lock held.

    Appends hold that lock from start to end, so a staging folder found under it is a dead
    append's. A journal names the shards an append was renaming in: those the index does not
    list never reached it (the append died before writing the index) and are removed, so they
    neither stay as strays beside the set nor hold numbers a new shard would take.
    """
    for staging in folder.glob(".append-*.staging"):
        logger.warning("%s: removing %s, left by an append that was interrupted", folder, staging.name)
        shutil.rmtree(staging, ignore_errors=True)
    journal = folder / APPEND_JOURNAL
    if not journal.exists():
        return
    try:
        names = json.loads(journal.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetAssetsError(f"{journal}: not valid JSON ({error})") from error
    if not isinstance(names, list) or not all(isinstance(name, str) and escape_reason(name) is None for name in names):
        raise DatasetAssetsError(f"{journal}: expected a list of relative shard names, got {names!r}")
    indexed = {shard.name for shard in index.shards}
    for name in names:
        if name not in indexed and (folder / name).exists():
            logger.warning("%s: removing %s, renamed in by an append that died before indexing it", folder, name)
            (folder / name).unlink()
    journal.unlink()
    storage.fsync_path(folder)


def _duplicate_key(folder: Path, index: ShardIndex, key: str, shard: int | None) -> DatasetAssetsError:
    """The error for appending `key` again: held by the set's shard `shard`, or None if earlier in this append."""
    where = ("it comes twice in the samples being appended" if shard is None
             else f"the shard set already holds it, in {index.shards[shard].name}")
    return DatasetAssetsError(f"{folder}: cannot append sample {key!r}: {where}")


def append_shards(
    folder: Path,
    samples: Iterable[tuple[str, Sample]],
    pattern: str = "shards-{index:04d}.tar",
    max_samples: int = 1000,
    max_bytes: int | None = None,
    compression: Compression | None = None,
) -> ShardIndex:
    """Add `samples` as new shards of the set in `folder` and extend its `_index.json`.

    Existing shards are never opened for writing. New shards are built in a staging folder,
    renamed in, and only then is the extended index swapped in, so a reader of the index never
    sees a shard that is not complete. A key already in the index (or twice in `samples`) is refused.
    The shards being renamed in are named in a journal first, so that the next append removes
    them if this one is killed before its index is written (`_recover_interrupted_append`).
    """
    _check_shard_pattern(pattern)
    with _locked(folder):
        existing = _current_index(folder)
        _recover_interrupted_append(folder, existing)
        known: dict[str, int | None] = {entry.key: entry.shard for entry in existing.entries}
        staging = folder / f".append-{uuid.uuid4().hex[:8]}.staging"
        try:
            start = _first_free_number(folder, pattern, existing)
            with ShardWriter(staging, pattern, max_samples, max_bytes, compression, start) as writer:
                for key, sample in samples:
                    if key in known:
                        raise _duplicate_key(folder, existing, key, known[key])
                    known[key] = None
                    writer.write(key, sample)
            combined = existing.extend(writer.index)
            present = [shard.name for shard in writer.shards if (folder / shard.name).exists()]
            if present:  # _first_free_number skips files for the first new shard only
                raise DatasetAssetsError(f"{folder}: new shards would overwrite {', '.join(present)}, "
                                         f"which exist but are not in the index; move them away first")
            for shard in writer.shards:
                storage.fsync_path(staging / shard.name)
            storage.write_bytes_atomic(folder / APPEND_JOURNAL, json.dumps([s.name for s in writer.shards]).encode())
            try:
                for shard in writer.shards:
                    (folder / shard.name).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staging / shard.name, folder / shard.name)
                write_index(folder, combined)
            except BaseException:
                _recover_interrupted_append(folder, _current_index(folder))
                raise
            (folder / APPEND_JOURNAL).unlink()
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return combined


_KINDS = {
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hard link",
    tarfile.DIRTYPE: "directory",
    tarfile.GNUTYPE_SPARSE: "sparse file",
}
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


def _unsafe_reason(name: str, kind: bytes) -> str | None:
    """Why a member of this name and type flag may not be read, or None when it is a safe plain file."""
    if kind == tarfile.REGTYPE and name and ".." not in name and "\\" not in name and name[0] != "/" \
            and name[1:2] != ":":
        return None  # the usual member, settled by the cheapest tests; the rest decide the others
    if kind not in _FILE_TYPES or (kind == tarfile.AREGTYPE and name.endswith("/")):
        described = "directory" if kind == tarfile.AREGTYPE else _KINDS.get(kind, "device or special file")
        return f"{described} members are not allowed"
    return escape_reason(name)


def check_member(archive: str, member: tarfile.TarInfo) -> None:
    """Raise `UnsafeArchiveError` unless `member` is a regular file with a safe relative name and
    a size >= 0 (`tarfile` reads `-1750` in a size field as -1000, which would offset size limits)."""
    reason = _unsafe_reason(member.name, member.type)
    if reason is None and member.size < 0:
        reason = f"negative size {member.size}"
    if reason is not None:
        raise UnsafeArchiveError(archive, member.name, reason)


def split_member_name(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member as webdataset reads it, or None for a member it skips.

    `a/b/key.jpg` -> (`a/b/key`, `jpg`); `key.Seg.NPY` -> (`key`, `seg.npy`), extensions lowercased;
    `d/.cfg` -> (`d/`, `cfg`). Skipped: metadata (`__name__`, `__name__/...`), a name without a dot
    after its last slash (`README`), and a dot-first one that no dot-free folder precedes (`.hidden`).
    """
    if WEBDATASET_METADATA.match(name):
        return None
    match = WEBDATASET_NAME.match(name)
    return None if match is None else (match.group(1), match.group(2).lower())


class TarMember(NamedTuple):
    """One regular-file member: its name, the offset of its data in the archive, its size and data."""

    name: str
    offset: int
    size: int
    data: MemberData | None


class _Header(NamedTuple):
    name: str
    size: int
    kind: bytes


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes: fewer only at the end of the stream (sockets may return short reads)."""
    data = stream.read(size)
    while data is not None and len(data) < size:
        more = stream.read(size - len(data))
        if not more:
            break
        data += more
    return data or b""


def _read_exact(stream: BinaryIO, size: int, archive: str, what: str) -> bytes:
    data = _read_up_to(stream, size)
    if len(data) < size:
        raise DatasetAssetsError(f"{archive}: truncated tar archive ({what}: {len(data)} of {size} bytes)")
    return data


def _read_then_header(stream: BinaryIO, size: int, archive: str, what: str) -> tuple[bytes, bytes]:
    """`size` bytes and the header block after them, in one read (the header is b"" at the end)."""
    chunk = _read_up_to(stream, size + BLOCKSIZE)
    if len(chunk) < size or len(chunk) not in (size, size + BLOCKSIZE):
        raise DatasetAssetsError(f"{archive}: truncated tar archive ({what})")
    return chunk[:size], chunk[size:]


def _skip(stream: BinaryIO, padded: int, archive: str, what: str) -> None:
    """Step over `padded` bytes: a seek when the stream allows, else reads of at most `SKIP_READ_BYTES`.

    A seek past the end succeeds silently, so the bytes left are checked first, as a read would.
    """
    if stream.seekable():
        position = stream.tell()
        available = stream.seek(0, os.SEEK_END) - position
        if available < padded:
            raise DatasetAssetsError(f"{archive}: truncated tar archive ({what}: {available} of {padded} bytes)")
        stream.seek(position + padded)
        return
    for skipped in range(0, padded, SKIP_READ_BYTES):
        _read_exact(stream, min(SKIP_READ_BYTES, padded - skipped), archive, what)


def _member_data(stream: BinaryIO, size: int, padded: int, read_data: bool, archive: str, what: str
                 ) -> tuple[bytes | None, bytes]:
    """A member's data (None unless `read_data`) and the header block after its padding.

    A member costs one read (small ones, read with their padding and the next header) or two
    (large ones, read straight into their own bytes), so an unbuffered file needs no extra copy.
    A kept member may declare at most `MAX_STREAMED_MEMBER_BYTES`: a read of the size a header
    declares allocates that much up front, so a hostile server could otherwise ask for any amount
    of memory with one header.
    """
    if not read_data:
        _skip(stream, padded, archive, what)
        return None, _read_then_header(stream, 0, archive, "header")[1]
    if size > MAX_STREAMED_MEMBER_BYTES:
        raise DatasetAssetsError(f"{archive}: {what} declares {size} bytes, more than the "
                                 f"{MAX_STREAMED_MEMBER_BYTES} a streamed member may hold")
    if size < SMALL_MEMBER_BYTES:
        chunk, block = _read_then_header(stream, padded, archive, what)
        return chunk[:size], block
    data = _read_exact(stream, size, archive, what)
    return data, _read_then_header(stream, padded - size, archive, what)[1]


def _pax_fields(payload: bytes, archive: str) -> dict[str, str]:
    """Records `"<length> <keyword>=<value>\\n"` of a pax extended header.

    `<length>` counts the whole record; a record whose length is not ASCII digits, does not reach
    past its keyword, runs past the payload or does not end in a newline is refused.
    """
    fields: dict[str, str] = {}
    position = 0
    while position < len(payload) and payload[position] != 0:
        space = payload.find(b" ", position)
        digits = payload[position:space]
        end = position + int(digits) if space > position and digits.isdigit() else -1
        if end <= space + 1 or end > len(payload) or payload[end - 1] != 0x0A:
            raise DatasetAssetsError(f"{archive}: malformed pax header record at byte {position}")
        keyword, _, value = payload[space + 1:end - 1].partition(b"=")
        fields[keyword.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position = end
    return fields


def _pax_size(pax: Mapping[str, str], archive: str, header: _Header) -> int:
    if "size" not in pax:
        return header.size
    value = pax["size"]
    if not (value.isascii() and value.isdigit()):
        raise DatasetAssetsError(f"{archive}: member {header.name!r}: pax size {value!r} is not a number >= 0")
    return int(value)


def _extended(header: _Header, payload: bytes, archive: str, pax: dict[str, str], long_name: str | None
              ) -> tuple[dict[str, str], str | None]:
    """The pax fields and GNU long name that apply to the next member, after extended header `header`.

    A global pax header applies to every member after it: `tarfile` (so webdataset) would rename or
    resize them all by its `path` or `size`, so those (and sparse maps) are refused; the rest (the
    `comment` `git archive` writes) change nothing our readers use and are read past.
    """
    if header.kind == tarfile.XGLTYPE:
        for keyword in _pax_fields(payload, archive):
            if keyword in ("path", "size") or keyword.startswith("GNU.sparse"):
                raise UnsafeArchiveError(archive, header.name, f"a global pax header may not set {keyword!r}")
    elif header.kind == tarfile.XHDTYPE:
        pax = _pax_fields(payload, archive)
        if any(keyword.startswith("GNU.sparse") for keyword in pax):
            raise UnsafeArchiveError(archive, pax.get("path", header.name), "sparse members are not allowed")
    elif header.kind == tarfile.GNUTYPE_LONGNAME:
        long_name = payload.rstrip(b"\0").decode("utf-8", "surrogateescape")
    return pax, long_name


def _octal(field: bytes, what: str) -> int:
    """A numeric header field: octal digits padded with whitespace and ended by a NUL (as tar writes
    them), or GNU base-256 when the top bit of its first byte is set.

    Only the digits 0-7: `int(text, 8)` alone would also take a sign or underscores, and a size
    of `-1000` would send the reader back over the header it just read.
    """
    if field[0] & 0x80:  # GNU base-256, for sizes past 8 GiB
        return tarfile.nti(field)
    text = field.partition(b"\0")[0].strip()
    if text.translate(None, b"01234567"):
        raise ValueError(f"{what} field {text!r} is not an octal number")
    return int(text, 8) if text else 0


def _checksum_matches(block: bytes, checksum_field: bytes, stored: int) -> bool:
    """tar's checksum is the byte sum of the header with its checksum field read as spaces.

    zlib's adler32 yields that sum modulo 65521 at C speed (Python's `sum` costs more than the
    rest of the parse): equal modulo 65521 catches any corruption of fewer than 257 bytes.
    Old tars that summed signed bytes take the slow exact path.
    """
    byte_sum = ((zlib.adler32(block) & 0xFFFF) - (zlib.adler32(checksum_field) & 0xFFFF) + 8 * 32) % 65521
    return byte_sum == stored % 65521 or stored in tarfile.calc_chksums(block)


def _parse_header(block: bytes, archive: str, offset: int) -> _Header:
    """Name, size and type flag of a ustar/pax/GNU header block, its checksum verified.

    Parsed here rather than by `tarfile.TarInfo.frombuf`, which costs ~10x more per member.
    """
    name, size_field, checksum_field, kind, prefix = _HEADER_FIELDS.unpack_from(block)
    try:
        if size_field[11] == 0 and size_field[:11].isdigit() and checksum_field[6:] == b"\0 " \
                and checksum_field[:6].isdigit():  # the fields as tar writes them: int() alone may read them
            size, checksum = int(size_field[:11], 8), int(checksum_field[:6], 8)
        else:
            size, checksum = _octal(size_field, "size"), _octal(checksum_field, "checksum")
    except (ValueError, tarfile.InvalidHeaderError) as error:
        raise DatasetAssetsError(f"{archive}: invalid tar header at byte {offset} ({error})") from error
    if size < 0:
        raise DatasetAssetsError(f"{archive}: invalid tar header at byte {offset} (negative size {size})")
    if not _checksum_matches(block, checksum_field, checksum):
        raise DatasetAssetsError(f"{archive}: invalid tar header at byte {offset} (checksum mismatch)")
    name = name.partition(b"\0")[0]
    if prefix[0] and kind not in tarfile.GNU_TYPES:
        name = prefix.partition(b"\0")[0] + b"/" + name
    return _Header(name.decode("utf-8", "surrogateescape"), size, kind)


def iter_tar_members(stream: BinaryIO, archive: str, read_data: bool = True) -> Iterator[TarMember]:
    """Parse a tar stream member by member, refusing any member that is not a safe plain file.

    Supports ustar, pax (`path`, `size`) and GNU long names; stops at the end-of-archive block.
    With `read_data=False` member data is skipped (seeked over when the stream allows), so only
    headers are read.
    """
    offset = 0
    long_name: str | None = None
    previous: str | None = None
    pax: dict[str, str] = {}
    block = _read_then_header(stream, 0, archive, "header")[1]
    while block and block != _ZERO_BLOCK:
        header = _parse_header(block, archive, offset)
        offset += BLOCKSIZE
        padded = _padded(header.size)
        if header.kind in _EXTENDED_TYPES:
            payload, block = _member_data(stream, padded, padded, True, archive, "extended header")
            offset += padded
            if not block:  # the end of the stream, where the member the header describes should be
                raise _header_cut(archive, previous)
            pax, long_name = _extended(header, (payload or b"")[: header.size], archive, pax, long_name)
            continue
        name, size = header.name, header.size
        if pax or long_name:
            name, size = pax.get("path", long_name or name), _pax_size(pax, archive, header)
        reason = _unsafe_reason(name, header.kind)
        if reason is not None:
            raise UnsafeArchiveError(archive, name, reason)
        padded = _padded(size)
        data, block = _member_data(stream, size, padded, read_data, archive, f"member {name!r}")
        yield TarMember(name, offset, size, data)
        previous = name
        offset += padded
        long_name, pax = None, {}


def is_block(name: str) -> bool:
    """Whether `name` is a zstd block member; the substring test first, as almost no name is one."""
    return BLOCK_PREFIX in name and BLOCK_NAME.fullmatch(name.rpartition("/")[2]) is not None


def decompress_block(data: bytes, where: str) -> bytes:
    """Decompress one zstd block in memory, refusing frames without a size or larger than 1 GiB.

    A block is exactly one frame: bytes after it (another frame, damage) are refused, where zstd's
    default would decompress the first frame and drop them, and with them any samples they hold.
    """
    try:
        size = zstandard.frame_content_size(data)
        if size < 0 or size > MAX_BLOCK_BYTES:
            raise DatasetAssetsError(f"{where}: zstd block declares content size {size}, "
                                     f"outside 0..{MAX_BLOCK_BYTES}")
        return zstandard.ZstdDecompressor().decompress(data, allow_extra_data=False)
    except zstandard.ZstdError as error:
        raise DatasetAssetsError(f"{where}: corrupt zstd block ({error})") from error


def _stream_samples(members: Iterable[tuple[str, bytes]], archive: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group consecutive `(name, data)` members of a stream by key into samples, as `_tarwalk`
    groups a buffer's; a zstd block yields the samples inside it."""
    key: str | None = None
    sample: dict[str, bytes] = {}
    for name, data in members:
        split = split_member_name(name)
        if split is None:
            continue
        if is_block(name):
            if key is not None:
                yield key, sample
            key, sample = None, {}
            yield from _block_samples(archive, False, False, name, data)  # type: ignore[misc]
            continue
        member_key, extension = split
        if member_key != key:
            if key is not None:
                yield key, sample
            key, sample = member_key, {}
        elif extension in sample:
            raise DatasetAssetsError(f"{archive}: sample {member_key!r} has member {extension!r} twice")
        sample[extension] = data
    if key is not None:
        yield key, sample


def _truncated(archive: str, what: str) -> DatasetAssetsError:
    return DatasetAssetsError(f"{archive}: truncated tar archive ({what})")


def _header_cut(archive: str, previous: str | None) -> DatasetAssetsError:
    """A header block cut short or missing; `previous` is the last member's name."""
    return _truncated(archive, "header" if previous is None else f"header after member {previous!r}")


def _member_at(view: memoryview, archive: str, position: int, previous: str | None) -> _SlowMember | None:
    """The member whose first header is at `position` in a tar buffer, read by the Python parser.

    Returns `(name, key, extension, data offset, size, next position, is_block)`, or None at the
    end-of-archive block; refuses unsafe members and damaged or truncated headers. `previous` is
    the last member's name, for errors. A member webdataset skips (`split_member_name`) is read
    past: the member after it is returned. `_tarwalk.SampleWalker` calls it for every header its
    compiled fast path does not take (extended headers, other types, names webdataset may skip or
    lowercase, damage, the end).
    """
    while True:
        member = _named_member_at(view, archive, position, previous)
        if member is None:
            return None
        name, data_start, size, position = member
        split = split_member_name(name)
        if split is not None:
            return name, *split, data_start, size, position, is_block(name)
        previous = name


def _named_member_at(view: memoryview, archive: str, position: int, previous: str | None
                     ) -> tuple[str, int, int, int] | None:
    """`(name, data offset, size, next position)` of the member at `position`, None at the end block."""
    end = len(view)
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        data_start = position + BLOCKSIZE
        if data_start > end:
            raise _header_cut(archive, previous)
        block = bytes(view[position:data_start])
        if block == _ZERO_BLOCK:
            return None
        header = _parse_header(block, archive, position)
        size = header.size
        position = data_start + _padded(size)
        if header.kind not in _EXTENDED_TYPES:
            break
        if position > end:
            raise _truncated(archive, f"extended header: {end - data_start} of {position - data_start} bytes")
        pax, long_name = _extended(header, bytes(view[data_start:data_start + size]), archive, pax, long_name)
    name = header.name
    if pax or long_name:
        name, size = pax.get("path", long_name or name), _pax_size(pax, archive, header)
        position = data_start + _padded(size)
    reason = _unsafe_reason(name, header.kind)
    if reason is not None:
        raise UnsafeArchiveError(archive, name, reason)
    if position > end:
        raise _truncated(archive, f"member {name!r}: {end - data_start} of {position - data_start} bytes")
    return name, data_start, size, position


def _buffer_samples(buffer: Buffer, archive: str, views: bool, in_block: bool = False, tag: str | None = None
                    ) -> SampleWalker:
    """`(key, {extension: data})` of each sample of a tar in memory or mapped, refusing unsafe members;
    `(tag, key, {extension: data})` given a `tag`.

    Member data is a slice of the buffer, copied into its own `bytes` or, with `views`, a zero-copy
    `memoryview`. The header walk and grouping run in compiled code (`_tarwalk`), which hands any
    header but a plain, intact, safely named ustar file to `_member_at`, and each zstd block to
    `_block_samples`: for small members Python's cost per member was nearly all the cost
    (benchmarks/RESULTS.md "Shards"), so no Python frame runs per sample.
    """
    view = memoryview(buffer)
    slow = functools.partial(_member_at, view, archive)
    expand = functools.partial(_block_samples, archive, views, in_block)
    return SampleWalker(view, archive, views, slow, expand, DatasetAssetsError, tag=tag)


def _block_samples(archive: str, views: bool, in_block: bool, name: str, data: bytes | memoryview
                   ) -> Iterator[tuple[str, dict[str, MemberData]]]:
    """The samples of the zstd block member `name` of `archive` (itself inside a block if `in_block`)."""
    if in_block:
        raise UnsafeArchiveError(archive, name, "nested zstd blocks are not allowed")
    where = f"{archive}:{name}"
    return _buffer_samples(decompress_block(bytes(data), where), where, views, in_block=True)


def iter_stream_samples(stream: BinaryIO, archive: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield `(key, {extension: bytes})` per sample of a shard stream, expanding zstd blocks."""
    members = ((member.name, member.data or b"") for member in iter_tar_members(stream, archive))
    return _stream_samples(members, archive)  # type: ignore[arg-type]


def open_shard(path: Path) -> BinaryIO:
    """An unbuffered handle: `iter_tar_members` reads in whole members, a buffer would only add a copy."""
    try:
        return open(path, "rb", buffering=0)
    except OSError as error:
        raise DatasetAssetsError(f"{path}: cannot open shard ({error.strerror})") from error


def map_shard(path: Path) -> mmap.mmap | None:
    """A read-only memory map of a local shard; None for an empty file.

    Reading through a map costs no system call per member, and slicing it copies each member
    once (or never, as a view). Pages are mapped as they are touched, not up front: populating a
    38 MB shard's map (and tearing it down) cost about as much as `cat` reading it, and bought
    nothing when every byte is read, while a reader of views that touches some members only maps
    those (benchmarks/RESULTS.md "Shards"). The map asks for huge pages (Linux's MADV_HUGEPAGE):
    a part of the shard not yet in the page cache is then read ahead in 2 MiB folios, which are
    mapped with one entry each instead of a page fault per 4 KiB; parts already cached in smaller
    folios, as `read()` leaves them, are mapped as they are. The map is unmapped when its last
    slice or view is freed. A mapped file must not shrink while it is read (that raises SIGBUS):
    our writers only ever replace shards by rename, which leaves the mapped file intact.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # no file object: a third of this call's time
        try:
            info = os.fstat(descriptor)
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
            if info.st_size == 0:
                return None
            mapping = mmap.mmap(descriptor, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            os.close(descriptor)
    except OSError as error:
        raise DatasetAssetsError(f"{path}: cannot open shard ({error.strerror})") from error
    if hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):  # a kernel built without transparent huge pages
            mapping.madvise(mmap.MADV_HUGEPAGE)
    return mapping


def iter_tar_samples(path: Path, views: bool = False) -> Iterator[tuple[str, dict[str, MemberData]]]:
    """`(key, {extension: data})` of each sample of a local shard, refusing unsafe members.

    Data is `bytes`, or with `views` a read-only `memoryview` of the mapped shard (zero-copy;
    `bytes(view)`, `numpy.frombuffer`, `torch.frombuffer` and `io.BytesIO` take it).
    """
    return _mapped_samples(path, views)


def iter_shard_samples(shard: str, views: bool = False) -> Iterator[tuple[str, str, dict[str, MemberData]]]:
    """`(shard, key, {extension: data})` of each sample of the local shard `shard`, as `iter_tar_samples`
    reads them. The compiled walk puts `shard` in each item, where a generator adding it would cost a
    Python frame per sample, a tenth of a 4 KiB sample's read (benchmarks/RESULTS.md "Shards")."""
    return _mapped_samples(Path(shard), views, tag=shard)


def _mapped_samples(path: Path, views: bool, tag: str | None = None) -> SampleWalker | Iterator[object]:
    """The samples of the local shard at `path` through its map, tagged with `tag` if given; none if it is empty."""
    mapping = map_shard(path)
    return iter(()) if mapping is None else _buffer_samples(mapping, str(path), views, tag=tag)


def count_samples(path: Path) -> int:
    """Number of samples in a shard, grouped as the readers group them: a run of members of one key, a
    zstd block's samples apart from the members around it. Plain members are counted from headers only."""
    with open_shard(path) as stream:
        return sum(1 for key, _ in itertools.groupby(_sample_keys(stream, path)) if key is not None)


def _sample_keys(stream: BinaryIO, path: Path) -> Iterator[str | None]:
    """The key of each member of a shard, None before and after each zstd block's (a block ends a sample)."""
    for member in iter_tar_members(stream, str(path), read_data=False):
        split = split_member_name(member.name)
        if split is None:
            continue
        if not is_block(member.name):
            yield split[0]
            continue
        data = os.pread(stream.fileno(), member.size, member.offset)
        where = f"{path}:{member.name}"
        yield None
        for item in iter_tar_members(io.BytesIO(decompress_block(data, where)), where, read_data=False):
            split = split_member_name(item.name)
            if split is None:
                continue
            if is_block(item.name):  # as the readers do: they would refuse the shard
                raise UnsafeArchiveError(where, item.name, "nested zstd blocks are not allowed")
            yield split[0]
        yield None


MAX_PREAD_BYTES = 0x7FFFF000  # the most one read returns on Linux


def _pread_whole(fd: int, size: int, offset: int) -> bytes | bytearray:
    """`size` bytes at `offset` of `fd`, fewer only where the file ends.

    Up to what one read returns (2 GiB less 4 KiB on Linux) that is one `os.pread`. A larger member
    takes several reads, each into the rest of one `bytearray`, so it is never held twice.
    """
    if size <= MAX_PREAD_BYTES:
        return os.pread(fd, size, offset)
    buffer = bytearray(size)
    done = 0
    with memoryview(buffer) as view:
        while done < size:
            count = os.preadv(fd, [view[done:]], offset + done)
            if count == 0:
                return buffer[:done]
            done += count
    return buffer


class ShardFiles:
    """Positional reads (`os.pread`) of shard files by number; safe across threads and processes.

    Every thread of every process opens its own handles (at most `max_open`, least recently used
    closed first) and keeps its own small cache of decompressed blocks, so no lock is held while
    reading and a DataLoader worker never shares a handle with its parent. Pickles without handles.
    """

    def __init__(self, paths: Sequence[str], max_open: int = 64, cached_blocks: int = 4) -> None:
        if max_open < 1:  # the handle just opened would be closed before it is read
            raise ValueError(f"max_open must be >= 1, got {max_open}")
        self.paths = list(paths)
        self.max_open = max_open
        self.cached_blocks = cached_blocks
        self._local = threading.local()

    def __getstate__(self) -> dict[str, object]:
        return {"paths": self.paths, "max_open": self.max_open, "cached_blocks": self.cached_blocks}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _caches(self) -> tuple[OrderedDict[int, io.FileIO], OrderedDict[tuple[int, int], bytes]]:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.pid, local.handles, local.blocks = os.getpid(), OrderedDict(), OrderedDict()
        return local.handles, local.blocks

    def _handle(self, shard: int) -> io.FileIO:
        handles, _ = self._caches()
        handle = handles.get(shard)
        if handle is None:
            try:
                handle = handles[shard] = io.FileIO(self.paths[shard], "r")
            except OSError as error:
                raise DatasetAssetsError(f"{self.paths[shard]}: cannot open shard ({error.strerror})") from error
            if len(handles) > self.max_open:
                handles.popitem(last=False)[1].close()
        else:
            handles.move_to_end(shard)
        return handle

    def read(self, shard: int, offset: int, size: int) -> bytes | bytearray:
        """Exactly `size` bytes at `offset` of shard `shard` (a `bytearray` past `MAX_PREAD_BYTES`), or an
        error naming the file."""
        data = _pread_whole(self._handle(shard).fileno(), size, offset)
        if len(data) != size:
            raise DatasetAssetsError(
                f"{self.paths[shard]}: bytes {offset}..{offset + size} are past the end of the file"
            )
        return data

    def read_block(self, shard: int, offset: int, size: int) -> bytes:
        """The decompressed zstd block stored at `offset`, from this thread's cache when recent."""
        _, blocks = self._caches()
        data = blocks.get((shard, offset))
        if data is None:
            where = f"{self.paths[shard]}@{offset}"
            data = blocks[(shard, offset)] = decompress_block(self.read(shard, offset, size), where)
            if len(blocks) > self.cached_blocks:
                blocks.popitem(last=False)
        return data

    def read_members(self, shard: int, members: Sequence[Member], block: Block | None = None
                     ) -> dict[str, bytes | bytearray]:
        """One sample's members: slices of its decompressed block, or of one read covering them all.

        Past `SPAN_READ_BYTES` each member is read on its own instead: a read per member costs less
        than copying large members a second time out of a shared buffer.
        """
        start, end = member_span(members)
        if block is not None:
            data = self.read_block(shard, block.offset, block.size)
            if end > len(data):  # slicing would silently return fewer bytes
                raise DatasetAssetsError(f"{self.paths[shard]}@{block.offset}: bytes {start}..{end} are past the end "
                                         f"of the {len(data)}-byte block")
            return slice_members(data, 0, members)
        if end - start > SPAN_READ_BYTES:
            return {extension: self.read(shard, offset, size) for extension, offset, size in members}
        return slice_members(self.read(shard, start, end - start), start, members)


@dataclass(frozen=True)
class ShardSetCheck:
    """What `verify_shard_set` found: index rows, samples counted in the shard files, and problems."""

    index_rows: int
    samples: int
    problems: tuple[str, ...]


def _verify_shard(folder: Path, index: ShardIndex, number: int, files: ShardFiles) -> tuple[int, list[str]]:
    """(samples found in shard `number`, problems with it and its index entries)."""
    shard = index.shards[number]
    path = folder / shard.name
    if not path.is_file():
        return 0, [f"{path}: listed in the index but missing"]
    digest = storage.digest_file(path)
    problems = [] if (digest.size, digest.sha256) == (shard.bytes, shard.sha256) else [
        f"{path}: {digest.size} bytes, sha256 {digest.sha256[:12]}..., but the index records "
        f"{shard.bytes} bytes, sha256 {shard.sha256[:12]}..."
    ]
    entries = [entry for entry in index.entries if entry.shard == number]
    try:
        samples = list(iter_tar_samples(path))
    except DatasetAssetsError as error:
        return 0, [*problems, str(error)]
    if [key for key, _ in samples] != [entry.key for entry in entries]:
        problems.append(f"{path}: its {len(samples)} sample keys differ from its {len(entries)} index rows")
    for entry, (key, sample) in zip(entries, samples):
        block = None if entry.block is None else index.blocks[entry.block]
        try:
            indexed = files.read_members(number, entry.members, block)
        except DatasetAssetsError as error:
            problems.append(f"sample {entry.key!r}: {error}")
            continue
        if indexed != sample:
            problems.append(f"{path}: sample {key!r}: the bytes at its indexed offsets differ from the tar's members")
    return len(samples), problems


def verify_shard_set(folder: Path) -> ShardSetCheck:
    """Read every shard of the set sequentially and through its index, and compare.

    Problems: a shard missing or whose size/sha256 differ from the index, a `*.tar` in the
    folder that the index does not list (its samples are counted), an unreadable or unsafe tar,
    keys out of step with the index, an entry past the end of its shard, or bytes read at an
    entry's offsets that differ from what sequential tar reading yields.
    """
    index = read_index(folder)
    files = ShardFiles([str(folder / shard.name) for shard in index.shards])
    samples, problems = 0, []
    for number in range(len(index.shards)):
        found, shard_problems = _verify_shard(folder, index, number, files)
        samples += found
        problems += shard_problems
    listed = {folder / shard.name for shard in index.shards}
    for stray in sorted(set(folder.glob("*.tar")) - listed):
        problems.append(f"{stray}: a shard in the set's folder that the index does not list")
        try:
            samples += count_samples(stray)
        except DatasetAssetsError as error:
            problems.append(str(error))
    return ShardSetCheck(len(index), samples, tuple(problems))
