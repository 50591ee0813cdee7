"""Local storage primitives: atomic publish of files and folders, and file digests.

A reader must never see a half-written file at its final path: everything is written to a
sibling `*.part` path, flushed and fsynced, then renamed into place (rename is atomic within a
filesystem). Folders are published by building a sibling staging folder and swapping it in.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class FileDigest:
    size: int
    sha1: str
    sha256: str


def digest_file(path: Path) -> FileDigest:
    """Size, sha1 and sha256 of a file, read once in 1 MiB chunks."""
    sha1, sha256, size = hashlib.sha1(), hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            sha1.update(chunk)
            sha256.update(chunk)
            size += len(chunk)
    return FileDigest(size=size, sha1=sha1.hexdigest(), sha256=sha256.hexdigest())


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder fsync persists the renames inside it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_file(part: Path, final: Path) -> None:
    """fsync `part` and atomically rename it to `final`."""
    fsync_path(part)
    os.replace(part, final)
    fsync_path(final.parent)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a `.part` path beside `final`; publish it on success, delete it on failure."""
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        yield part
        publish_file(part, final)
    finally:
        part.unlink(missing_ok=True)


def write_bytes_atomic(final: Path, data: bytes) -> None:
    with atomic_file(final) as part:
        part.write_bytes(data)


@contextlib.contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a staging folder beside `final`; on success swap it in place of `final`.

    The old folder (if any) is renamed aside before the new one is renamed in, so `final` is
    at every instant either the complete old folder, absent for one rename, or the complete new one.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    staging = final.with_name(f".{final.name}.{token}.staging")
    retired = final.with_name(f".{final.name}.{token}.retired")
    staging.mkdir()
    try:
        yield staging
        for child in staging.rglob("*"):
            if child.is_file():
                fsync_path(child)
        if final.exists():
            os.replace(final, retired)
        os.replace(staging, final)
        fsync_path(final.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
