"""Date-versioned asset datasets: prepare annotations, pack reproducible tarballs, extract safely.

A version (`YYYY_MM_DD`) holds `annotations.json.gz` (every object's annotation merged), an
`assets.tar` of the `assets/` tree (OS junk and per-object metadata excluded), and optional
feature files. Packing is reproducible: sorted members, mtime 0, uid/gid 0, fixed modes, so the
same tree always gives the same bytes; a member manifest with sha256 is written beside the tar.
Extraction refuses members that would escape, links and devices, and archives over a size limit.
"""
from __future__ import annotations

import copy
import fnmatch
import gzip
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from dataset_assets.core.errors import DatasetAssetsError, InvalidInputError, UnsafeArchiveError
from dataset_assets.core.shards import check_member
from dataset_assets.core.storage import atomic_file, atomic_folder, digest_file

VERSION_PATTERN = re.compile(r"^(\d{4})_(\d{2})_(\d{2})$")
OBJECT_ANNOTATION = "annotations.json"
ANNOTATIONS_FILE = "annotations.json.gz"
ASSETS_TAR = "assets.tar"
DEFAULT_EXCLUDES: tuple[str, ...] = (
    "annotations.json.gz", "thor_metadata.json", ".DS_Store", "._*", ".Spotlight-V100", ".Trashes",
    ".fseventsd", ".VolumeIcon.icns", ".apdisk", ".TemporaryItems", "*.lock",
)
DEFAULT_MAX_EXTRACT_BYTES = 64 << 30
DEFAULT_MAX_EXTRACT_MEMBERS = 5_000_000


class AnnotationError(InvalidInputError):
    """A per-object annotation file is malformed."""


def check_version(value: object, source: str, field: str) -> str:
    """A version is a real calendar date written `YYYY_MM_DD`."""
    match = VERSION_PATTERN.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidInputError(source, field, value, "must be a date version like 2023_07_28")
    try:
        date(*(int(part) for part in match.groups()))
    except ValueError as error:
        raise InvalidInputError(source, field, value, f"is not a real date ({error})") from error
    return value


def is_excluded(relative: str, excludes: Sequence[str]) -> bool:
    """True when any path component of `relative` matches an exclude pattern."""
    return any(fnmatch.fnmatchcase(part, pattern) for part in relative.split("/") for pattern in excludes)


def _validated_annotation(path: Path, uid: str) -> dict[str, Any]:
    source = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise AnnotationError(source, "<root>", f"line {error.lineno} column {error.colno}",
                              f"is not valid JSON: {error.msg}") from error
    if not isinstance(data, dict):
        raise AnnotationError(source, "<root>", data, "must be an object")
    if data.get("uid", uid) != uid:
        raise AnnotationError(source, "uid", data["uid"], f"must equal the object folder name {uid!r}")
    category = data.get("category")
    if not isinstance(category, str) or not category.strip():
        raise AnnotationError(source, "category", category, "must be a non-empty string")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise AnnotationError(source, "description", description, "must be a string")
    scale = data.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise AnnotationError(source, "scale", scale, "must be a positive number")
    return {**data, "uid": uid}


def prepare_annotations(save_dir: Path) -> Path:
    """Merge `assets/<uid>/annotations.json` into `save_dir/annotations.json.gz` (sorted, gzip mtime 0)."""
    assets = save_dir / "assets"
    if not assets.is_dir():
        raise DatasetAssetsError(f"{assets}: assets folder does not exist")
    merged: dict[str, dict[str, Any]] = {}
    for folder in sorted(path for path in assets.iterdir() if path.is_dir()):
        annotation = folder / OBJECT_ANNOTATION
        if not annotation.is_file():
            raise AnnotationError(str(folder), OBJECT_ANNOTATION, None, "is missing for this object")
        merged[folder.name] = _validated_annotation(annotation, folder.name)
    if not merged:
        raise DatasetAssetsError(f"{assets}: no object folders to annotate")
    payload = json.dumps(merged, sort_keys=True, separators=(",", ":")).encode()
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as compressed:
        compressed.write(payload)
    target = save_dir / ANNOTATIONS_FILE
    with atomic_file(target) as part:
        part.write_bytes(buffer.getvalue())
    return target


def load_annotations(path: Path) -> dict[str, dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return json.load(handle)


@dataclass(frozen=True)
class PackedMember:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class PackResult:
    tar_path: Path
    manifest_path: Path
    members: tuple[PackedMember, ...]
    size: int
    sha256: str

    def metadata(self) -> dict[str, object]:
        return {"members": len(self.members), "bytes": self.size, "sha256": self.sha256,
                "path": str(self.tar_path), "manifest": str(self.manifest_path)}


def _files_to_pack(assets_dir: Path, excludes: Sequence[str]) -> Iterator[tuple[str, Path]]:
    for path in sorted(assets_dir.rglob("*")):
        relative = path.relative_to(assets_dir).as_posix()
        if is_excluded(relative, excludes):
            continue
        if path.is_symlink():
            raise UnsafeArchiveError(str(assets_dir), relative, "symlinks are not packed")
        if path.is_file():
            yield f"assets/{relative}", path


def _deterministic_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _HashingReader:
    """A read-only file wrapper hashing what `tarfile` copies out of it, so each file is read once."""

    def __init__(self, handle: io.BufferedReader) -> None:
        self._handle = handle
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self.sha256.update(data)
        return data


def pack_assets(assets_dir: Path, out_tar: Path, excludes: Sequence[str] = DEFAULT_EXCLUDES) -> PackResult:
    """Pack `assets_dir` as `assets/...` into a reproducible tar plus `<tar>.manifest.json`."""
    members: list[PackedMember] = []
    with atomic_file(out_tar) as part:
        with tarfile.open(part, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, path in _files_to_pack(assets_dir, excludes):
                size = path.stat().st_size
                with open(path, "rb") as handle:
                    reader = _HashingReader(handle)
                    tar.addfile(_deterministic_info(name, size), reader)  # type: ignore[arg-type]
                members.append(PackedMember(name, size, reader.sha256.hexdigest()))
        if not members:
            raise DatasetAssetsError(f"{assets_dir}: nothing to pack after excludes")
    tar_digest = digest_file(out_tar)
    manifest_path = out_tar.with_name(out_tar.name + ".manifest.json")
    manifest = {"tar": out_tar.name, "sha256": tar_digest.sha256, "size": tar_digest.size,
                "excludes": list(excludes), "members": [member.__dict__ for member in members]}
    with atomic_file(manifest_path) as part:
        part.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return PackResult(out_tar, manifest_path, tuple(members), tar_digest.size, tar_digest.sha256)


def _checked_members(tar: tarfile.TarFile, archive: str, max_bytes: int, max_members: int
                     ) -> Iterable[tarfile.TarInfo]:
    total, count = 0, 0
    for member in tar:
        count += 1
        if count > max_members:
            raise UnsafeArchiveError(archive, member.name, f"more than {max_members} members")
        if member.isdir():
            # A directory is only a name here: check it with the regular-file rules and skip it.
            as_file = copy.copy(member)
            as_file.type = tarfile.REGTYPE
            check_member(archive, as_file)
            continue
        check_member(archive, member)
        total += member.size
        if total > max_bytes:
            raise UnsafeArchiveError(archive, member.name, f"archive expands past the {max_bytes}-byte limit")
        yield member


def extract_tar_safely(tar_path: Path, dest: Path, max_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
                       max_members: int = DEFAULT_MAX_EXTRACT_MEMBERS) -> list[str]:
    """Extract regular files of `tar_path` into `dest` (swapped in whole) and return their names.

    Every member is checked before anything is published: a bad member leaves `dest` untouched.
    """
    archive = str(tar_path)
    names: list[str] = []
    with atomic_folder(dest) as staging, tarfile.open(tar_path, mode="r:*") as tar:
        for member in _checked_members(tar, archive, max_bytes, max_members):
            tar.extract(member, staging, filter="data")
            names.append(member.name)
    return names


def member_digests(manifest_path: Path) -> Mapping[str, str]:
    """`{member name: sha256}` from a pack manifest."""
    manifest = json.loads(manifest_path.read_text())
    return {member["name"]: member["sha256"] for member in manifest["members"]}
