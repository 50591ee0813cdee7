"""WebDataset shard writing and safe shard reading.

Shards are POSIX tars whose members are `<key>.<ext>`, grouped per sample, members of a sample
sorted by extension, with mtime 0, uid/gid 0 and mode 0644, so the same samples always produce
the same bytes. Reading goes through `iter_tar_samples`, which refuses any member that is not a
plain file with a relative, non-escaping name.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType

from dataset_assets.core.errors import DatasetAssetsError, UnsafeArchiveError

Sample = Mapping[str, bytes]


@dataclass(frozen=True)
class ShardInfo:
    """One written shard: its file name (relative to its folder), sample count, size and sha256."""

    name: str
    samples: int
    bytes: int
    sha256: str


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def check_sample_key(key: str) -> None:
    """A sample key becomes a tar member prefix, so it must not contain dots or escape."""
    if not key or "." in key or key.startswith("/") or "\\" in key:
        raise DatasetAssetsError(f"invalid sample key {key!r}: must be non-empty, relative, without dots")


class _HashingFile(io.RawIOBase):
    """A write-only file wrapper that counts and sha256-hashes what passes through."""

    def __init__(self, handle: io.BufferedWriter) -> None:
        self._handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._handle.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


class ShardWriter:
    """Write samples into `folder/<pattern % n>` shards, rolling by sample count or bytes.

    The caller owns atomicity of the shard *set* (write into a staging folder from
    `storage.atomic_folder`); this class guarantees each shard's bytes are deterministic.
    """

    def __init__(
        self,
        folder: Path,
        pattern: str = "shards-{index:04d}.tar",
        max_samples: int = 1000,
        max_bytes: int | None = None,
    ) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        self.folder = folder
        self.pattern = pattern
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.shards: list[ShardInfo] = []
        self._tar: tarfile.TarFile | None = None
        self._file: io.BufferedWriter | None = None
        self._hashing: _HashingFile | None = None
        self._samples_in_shard = 0
        self._name = ""

    def _open_next(self) -> None:
        self._name = self.pattern.format(index=len(self.shards))
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file = open(self.folder / self._name, "wb")
        self._hashing = _HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._hashing, mode="w", format=tarfile.PAX_FORMAT)
        self._samples_in_shard = 0

    def _close_current(self) -> None:
        if self._tar is None or self._file is None or self._hashing is None:
            return
        self._tar.close()
        self._file.close()
        self.shards.append(
            ShardInfo(self._name, self._samples_in_shard, self._hashing.size, self._hashing.sha256.hexdigest())
        )
        self._tar = self._file = self._hashing = None

    def write(self, key: str, sample: Sample) -> None:
        check_sample_key(key)
        if not sample:
            raise DatasetAssetsError(f"sample {key!r} has no members")
        if self._tar is not None and (
            self._samples_in_shard >= self.max_samples
            or (self.max_bytes is not None and self._hashing is not None and self._hashing.size >= self.max_bytes)
        ):
            self._close_current()
        if self._tar is None:
            self._open_next()
        assert self._tar is not None
        for extension in sorted(sample):
            data = sample[extension]
            self._tar.addfile(_tar_info(f"{key}.{extension}", len(data)), io.BytesIO(data))
        self._samples_in_shard += 1

    def close(self) -> list[ShardInfo]:
        self._close_current()
        return list(self.shards)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        elif self._tar is not None and self._file is not None:
            self._file.close()


def check_member(archive: str, member: tarfile.TarInfo) -> None:
    """Raise `UnsafeArchiveError` unless `member` is a regular file with a safe relative name."""
    name = member.name
    path = PurePosixPath(name)
    if not member.isreg():
        kind = "symlink" if member.issym() else "hard link" if member.islnk() else "device or special file"
        if member.isdir():
            kind = "directory"
        raise UnsafeArchiveError(archive, name, f"{kind} members are not allowed")
    if path.is_absolute() or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(archive, name, "absolute paths are not allowed")
    if ".." in path.parts:
        raise UnsafeArchiveError(archive, name, "'..' would escape the archive folder")


def split_member_name(name: str) -> tuple[str, str]:
    """`a/b/key.jpg` -> (`a/b/key`, `jpg`); `key.seg.npy` -> (`key`, `seg.npy`) as webdataset does."""
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not dot:
        return (f"{folder}/{stem}" if folder else stem), ""
    return (f"{folder}/{stem}" if folder else stem), extension


def iter_tar_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield `(key, {extension: bytes})` for each sample of a shard, refusing unsafe members."""
    key: str | None = None
    sample: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                check_member(str(path), member)
                member_key, extension = split_member_name(member.name)
                if key is not None and member_key != key:
                    yield key, sample
                    sample = {}
                key = member_key
                extracted = tar.extractfile(member)
                assert extracted is not None
                sample[extension] = extracted.read()
    except tarfile.TarError as error:
        raise DatasetAssetsError(f"{path}: not a readable tar archive ({error})") from error
    if key is not None:
        yield key, sample


def count_samples(path: Path) -> int:
    """Number of samples in a shard, from member headers only (no payload is read)."""
    keys: set[str] = set()
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            check_member(str(path), member)
            keys.add(split_member_name(member.name)[0])
    return len(keys)
