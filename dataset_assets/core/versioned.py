"""Date-versioned asset datasets: components, download by version, prepare, pack, extract safely.

A version (`YYYY_MM_DD`) holds `annotations.json.gz` (every object's annotation merged), an
`assets.tar` of the `assets/` tree (OS junk and per-object metadata excluded), optional
`features.tar` and base data (`holodeck/<version>.tar` upstream). Locally a version lives in its
own folder `<root>/<dataset>/<version>/` (default root `~/.dataset_assets`), mirroring the seed:
`annotations.json.gz`, `assets.tar` + `assets/`, `features.tar` + `features/`, `holodeck.tar` +
`holodeck/`. Downloads go through `core.transfer` (resumable, verified, an existing file is kept)
and are checked against the catalog's sha256 pins. Packing is reproducible: sorted members,
mtime 0, uid/gid 0, fixed modes, so the same tree always gives the same bytes; a member manifest
with sha256 is written beside the tar. Only regular files are packed (symlinks and special files are
refused; folders with no file to pack are named in a warning, as extraction would not recreate them).
Extraction refuses members that would escape, links and devices, and archives past the size and member
limits (`ExtractLimits`, raised per dataset in the catalog), and publishes the extracted folder atomically.
"""
from __future__ import annotations

import copy
import fnmatch
import gzip
import hashlib
import io
import json
import logging
import lzma
import re
import tarfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from stat import S_ISBLK, S_ISCHR, S_ISDIR, S_ISFIFO, S_ISLNK, S_ISREG, S_ISSOCK
from typing import Any, TypeGuard

import httpx

from dataset_assets.core.errors import DatasetAssetsError, InvalidInputError, UnsafeArchiveError
from dataset_assets.core.manifest import ManifestEntry
from dataset_assets.core.paths import escape_reason
from dataset_assets.core.shards import check_member
from dataset_assets.core.storage import atomic_file, atomic_folder, digest_file, write_bytes_atomic
from dataset_assets.core.transfer import ChecksumMismatch, FileResult, TransferSettings, download_entries
from dataset_assets.core.urls import url_below

logger = logging.getLogger(__name__)

VERSION_PATTERN = re.compile(r"^([0-9]{4})_([0-9]{2})_([0-9]{2})\Z")
OBJECT_ANNOTATION = "annotations.json"
ANNOTATIONS_FILE = "annotations.json.gz"
ASSETS_TAR = "assets.tar"
FEATURES_TAR = "features.tar"
DEFAULT_CACHE_ROOT = "~/.dataset_assets"
DEFAULT_EXCLUDES: tuple[str, ...] = (
    "annotations.json.gz", "thor_metadata.json", ".DS_Store", "._*", ".Spotlight-V100", ".Trashes",
    ".fseventsd", ".VolumeIcon.icns", ".apdisk", ".TemporaryItems", "*.lock",
)
DEFAULT_MAX_EXTRACT_BYTES = 64 << 30
DEFAULT_MAX_EXTRACT_MEMBERS = 5_000_000
# Parsed JSON takes several times its text in memory: past this, an annotations file is refused
# before it is parsed, so a small gzip that expands without end cannot exhaust memory.
DEFAULT_MAX_ANNOTATION_BYTES = 2 << 30


class AnnotationError(InvalidInputError):
    """A per-object annotation file is malformed."""


class AssetsMismatchError(DatasetAssetsError):
    """`annotations.json.gz` describes other objects than `assets.tar` holds."""


class UnreadableArchiveError(DatasetAssetsError):
    """A tarball is truncated, corrupt or no tar at all (unlike a readable one with an unsafe member)."""


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


@dataclass(frozen=True)
class ComponentKind:
    """One kind of component: its default path below the base URL (`{version}` is replaced), its file in
    the version folder and, for tarballs, the folder it is extracted to; `published` ones are uploaded."""

    name: str
    default_path: str
    filename: str
    folder: str | None = None
    published: bool = True


COMPONENT_KINDS: Mapping[str, ComponentKind] = {kind.name: kind for kind in (
    ComponentKind("annotations", "{version}/" + ANNOTATIONS_FILE, ANNOTATIONS_FILE),
    ComponentKind("assets", "{version}/" + ASSETS_TAR, ASSETS_TAR, "assets"),
    ComponentKind("features", "{version}/" + FEATURES_TAR, FEATURES_TAR, "features"),
    ComponentKind("base_data", "holodeck/{version}.tar", "holodeck.tar", "holodeck", published=False),
)}
REQUIRED_COMPONENTS = ("annotations", "assets")


@dataclass(frozen=True)
class Component:
    """A catalog component: where each version's file is below the base URL and its pinned sha256 per version."""

    kind: ComponentKind
    path: str
    sha256: Mapping[str, str] = field(default_factory=dict)

    def url(self, base_url: str, version: str) -> str:
        return url_below(base_url, self.path.replace("{version}", version))


@dataclass(frozen=True)
class PublishSpec:
    """Where versions are published: `s3://<bucket>/<prefix>/<dataset>/<version>/`, and how (multipart)."""

    bucket: str
    prefix: str = ""
    part_size_mib: int = 16
    concurrency: int = 8
    endpoint_url: str | None = None


@dataclass(frozen=True)
class ExtractLimits:
    """Caps on each tarball extracted on download: the total bytes of its members and their count.

    They bound what a broken or hostile tarball can write before it is refused; a dataset that is
    legitimately larger raises them (the catalog's `extract` section, or the download flags).
    """

    max_bytes: int = DEFAULT_MAX_EXTRACT_BYTES
    max_members: int = DEFAULT_MAX_EXTRACT_MEMBERS

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_members"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError("extract limits", name, value, "must be an integer of at least 1")


@dataclass(frozen=True)
class VersionedSource:
    """A `kind: versioned` dataset: its base URL, versions (empty: dynamic), components, publish target and
    the limits its tarballs are extracted within."""

    base_url: str
    versions: tuple[str, ...]
    components: Mapping[str, Component]
    publish: PublishSpec | None = None
    extract: ExtractLimits = ExtractLimits()

    @property
    def dynamic(self) -> bool:
        """Versions are not listed in the catalog but discovered where they are published."""
        return not self.versions

    def require_version(self, value: object, source: str, field_name: str) -> str:
        version = check_version(value, source, field_name)
        if self.versions and version not in self.versions:
            raise InvalidInputError(source, field_name, value, f"is not a version of this dataset "
                                                               f"(versions: {', '.join(self.versions)})")
        return version

    def component(self, name: str, source: str, field_name: str) -> Component:
        if name not in self.components:
            raise InvalidInputError(source, field_name, name, f"is not a component of this dataset "
                                                              f"(components: {', '.join(self.components)})")
        return self.components[name]

    def published_pins(self, version: str) -> dict[str, tuple[str, str]]:
        """`{file: (catalog field, sha256)}` of the published files `version` pins."""
        return {component.kind.filename: (f"components.{name}.sha256.{version}", component.sha256[version])
                for name, component in self.components.items()
                if component.kind.published and version in component.sha256}

    def published_files(self) -> list[str]:
        """Files a version publishes, annotations last: its object marks the version complete."""
        kinds = [component.kind for component in self.components.values() if component.kind.published]
        return [kind.filename for kind in sorted(kinds, key=lambda kind: kind.name == "annotations")]


def version_folder(root: str | Path, dataset: str, version: str) -> Path:
    """`<root>/<dataset>/<version>/`: each version in its own folder, so versions never overwrite each other."""
    return Path(root).expanduser().resolve() / dataset / version


def is_excluded(relative: str, excludes: Sequence[str]) -> bool:
    """True when an exclude pattern matches a path component of `relative` or, for a pattern with a `/`
    (no component can match it), the whole of `relative`."""
    parts = relative.split("/")
    return any(fnmatch.fnmatchcase(relative, pattern) if "/" in pattern
               else any(fnmatch.fnmatchcase(part, pattern) for part in parts) for pattern in excludes)


def _validated_annotation(path: Path, uid: str) -> dict[str, Any]:
    source = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise AnnotationError(source, "<root>", f"byte {error.start}", f"is not UTF-8 text ({error.reason})") from error
    except json.JSONDecodeError as error:
        raise AnnotationError(source, "<root>", f"line {error.lineno} column {error.colno}",
                              f"is not valid JSON: {error.msg}") from error
    except RecursionError:  # valid JSON nested deeper than the parser recurses
        raise AnnotationError(source, "<root>", None, "is not valid JSON: nested too deeply") from None
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
    """Merge `assets/<uid>/annotations.json` into `save_dir/annotations.json.gz` (sorted, gzip mtime 0).

    Folders `pack_assets` leaves out by default (OS junk such as `.Trashes`) are not objects.
    """
    assets = save_dir / "assets"
    if not assets.is_dir():
        raise DatasetAssetsError(f"{assets}: assets folder does not exist")
    merged: dict[str, dict[str, Any]] = {}
    objects = (path for path in assets.iterdir() if path.is_dir() and not is_excluded(path.name, DEFAULT_EXCLUDES))
    for folder in sorted(objects):
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


def _gunzip(path: Path, max_bytes: int) -> bytearray:
    """The decompressed bytes of `path`, refused as soon as they pass `max_bytes`."""
    text = bytearray()
    with gzip.open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            text += chunk
            if len(text) > max_bytes:
                raise AnnotationError(str(path), "<root>", path.name,
                                      f"decompresses past the {max_bytes}-byte limit for annotations")
    return text


def load_annotations(path: Path, max_bytes: int = DEFAULT_MAX_ANNOTATION_BYTES) -> dict[str, dict[str, Any]]:
    """The merged `{uid: annotation}` of an `annotations.json.gz`; anything else fails naming the file."""
    try:
        data = json.loads(_gunzip(path, max_bytes).decode("utf-8"))
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AnnotationError(str(path), "<root>", path.name, f"is not gzip-compressed JSON ({error})") from error
    except RecursionError:  # valid JSON nested deeper than the parser recurses
        raise AnnotationError(str(path), "<root>", path.name,
                              "is not gzip-compressed JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise AnnotationError(str(path), "<root>", type(data).__name__, "must map object uids to annotations")
    for uid, annotation in data.items():
        if not isinstance(annotation, dict):
            raise AnnotationError(str(path), uid, annotation, "must be an annotation object")
    return data


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
    empty_folders: tuple[str, ...] = ()

    def metadata(self) -> dict[str, object]:
        return {"members": len(self.members), "bytes": self.size, "sha256": self.sha256,
                "path": str(self.tar_path), "manifest": str(self.manifest_path)}


def _special_kind(mode: int) -> str:
    return ("FIFO" if S_ISFIFO(mode) else "socket" if S_ISSOCK(mode) else "character device" if S_ISCHR(mode)
            else "block device" if S_ISBLK(mode) else "special file")


def _tree_to_pack(assets_dir: Path, excludes: Sequence[str], root: str
                  ) -> tuple[list[tuple[str, Path]], tuple[str, ...]]:
    """The `(member name, path)` of each file to pack, and the folders with no file to pack below them.

    The whole tree is checked before the tar is opened: the extractor takes regular files only, so a
    symlink or special file is refused rather than left out of the version without a word.
    """
    files: list[tuple[str, Path]] = []
    folders: list[str] = []
    for path in sorted(assets_dir.rglob("*")):
        relative = path.relative_to(assets_dir).as_posix()
        if is_excluded(relative, excludes):
            continue
        mode = path.lstat().st_mode
        if S_ISLNK(mode):
            raise UnsafeArchiveError(str(assets_dir), relative, "symlinks are not packed")
        if S_ISDIR(mode):
            folders.append(relative)
            continue
        if not S_ISREG(mode):
            raise UnsafeArchiveError(str(assets_dir), relative, f"is a {_special_kind(mode)}; only regular "
                                                                "files can be packed (the extractor refuses others)")
        _check_packable(assets_dir, relative)
        files.append((f"{root}/{relative}", path))
    holding = {parent.as_posix() for _, path in files for parent in path.relative_to(assets_dir).parents}
    return files, tuple(folder for folder in folders if folder not in holding)


def _warn_empty_folders(assets_dir: Path, out_tar: Path, folders: Sequence[str]) -> None:
    if folders:
        logger.warning("%s: %d folder(s) with no file to pack are left out of %s (extracting recreates only "
                       "folders that hold files): %s", assets_dir, len(folders), out_tar, ", ".join(folders))


def _check_packable(assets_dir: Path, relative: str) -> None:
    """Refuse a name the safe extractor refuses below the top-level folder (`d:x` reads as a drive,
    `a\\..` as a parent): packed, it would make the whole version undownloadable."""
    reason = escape_reason(relative)
    if reason is not None:
        raise UnsafeArchiveError(str(assets_dir), relative, f"would be refused on download: {reason}")


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


def pack_manifest_path(tar_path: Path) -> Path:
    """`<tar>.manifest.json`, where `pack_assets` lists the tar's members and the excludes it applied."""
    return tar_path.with_name(tar_path.name + ".manifest.json")


def pack_assets(assets_dir: Path, out_tar: Path, excludes: Sequence[str] = DEFAULT_EXCLUDES,
                root: str = "assets") -> PackResult:
    """Pack `assets_dir` as `<root>/...` into a reproducible tar plus `<tar>.manifest.json`.

    Regular files only: a symlink or special file fails naming it, and folders with no file to pack
    (which extracting would not recreate) are logged as a warning and listed in the result.
    """
    if not assets_dir.is_dir():
        raise DatasetAssetsError(f"{assets_dir}: folder to pack does not exist")
    files, empty_folders = _tree_to_pack(assets_dir, excludes, root)
    members: list[PackedMember] = []
    with atomic_file(out_tar) as part:
        with tarfile.open(part, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, path in files:
                size = path.stat().st_size
                with open(path, "rb") as handle:
                    reader = _HashingReader(handle)
                    tar.addfile(_deterministic_info(name, size), reader)  # type: ignore[arg-type]
                members.append(PackedMember(name, size, reader.sha256.hexdigest()))
        if not members:
            raise DatasetAssetsError(f"{assets_dir}: nothing to pack after excludes")
    tar_digest = digest_file(out_tar)
    manifest_path = pack_manifest_path(out_tar)
    manifest = {"tar": out_tar.name, "sha256": tar_digest.sha256, "size": tar_digest.size,
                "excludes": list(excludes), "members": [member.__dict__ for member in members]}
    with atomic_file(manifest_path) as part:
        part.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    _warn_empty_folders(assets_dir, out_tar, empty_folders)
    return PackResult(out_tar, manifest_path, tuple(members), tar_digest.size, tar_digest.sha256, empty_folders)


def _raise_hint(field: str) -> str:
    """Where a user raises the `ExtractLimits` field `field`: the catalog, or the download flag."""
    flag = f"--max-extract-{field.removeprefix('max_')}"
    return f"(raise extract.{field} in the catalog, or {flag}, for a larger archive)"


def _checked_members(tar: tarfile.TarFile, archive: str, max_bytes: int, max_members: int
                     ) -> Iterable[tarfile.TarInfo]:
    total, count = 0, 0
    for member in tar:
        count += 1
        if count > max_members:
            raise UnsafeArchiveError(archive, member.name, f"more than {max_members} members "
                                                           f"{_raise_hint('max_members')}")
        if member.isdir():
            # A directory is only a name here: check it with the regular-file rules and skip it.
            as_file = copy.copy(member)
            as_file.type = tarfile.REGTYPE
            check_member(archive, as_file)
            continue
        check_member(archive, member)
        total += member.size
        if total > max_bytes:
            raise UnsafeArchiveError(archive, member.name, f"archive expands past the {max_bytes}-byte limit "
                                                           f"{_raise_hint('max_bytes')}")
        yield member


def _below_root(archive: str, member: tarfile.TarInfo, root: str | None) -> tuple[str, tarfile.TarInfo]:
    """The member renamed relative to its top-level folder, which must be `root` (once known).

    Leading `./` is no folder: `tar -C <version> -cf assets.tar ./assets` names members `./assets/...`.
    """
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    top, _, rest = name.partition("/")
    if not top or not rest:
        raise UnsafeArchiveError(archive, member.name, "is not inside a top-level folder "
                                                       "(a component tarball holds exactly one folder)")
    if root is not None and top != root:
        raise UnsafeArchiveError(archive, member.name, f"lies outside the top-level folder {root!r} "
                                                       "(a component tarball holds exactly one folder)")
    reason = escape_reason(rest)  # the whole name passed, but `a/C:x` or `a//x` leave `C:x` or `/x`
    if reason is not None:
        raise UnsafeArchiveError(archive, member.name, f"below its top-level folder: {reason}")
    return top, member.replace(name=rest, deep=False)


def extract_tar_safely(tar_path: Path, dest: Path, max_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
                       max_members: int = DEFAULT_MAX_EXTRACT_MEMBERS, strip_root: bool = False) -> list[str]:
    """Extract regular files of `tar_path` into `dest` (swapped in whole) and return their names.

    Every member is checked before anything is published: a bad member leaves `dest` untouched.
    With `strip_root`, every member must lie in one top-level folder (as in the seed's tarballs),
    whose contents become `dest`; the names returned are then relative to `dest`.
    """
    archive = str(tar_path)
    names: list[str] = []
    root: str | None = None
    try:
        with atomic_folder(dest) as staging, tarfile.open(tar_path, mode="r:*") as tar:
            for member in _checked_members(tar, archive, max_bytes, max_members):
                name = member.name
                if strip_root:
                    root, member = _below_root(archive, member, root)
                try:
                    tar.extract(member, staging, filter="data")
                except OSError as error:  # a file where a folder must go, a full disk: name the member
                    raise DatasetAssetsError(f"{archive}: cannot extract member {name!r} "
                                             f"({error.strerror or error})") from error
                names.append(member.name)
            _check_end_of_archive(tar, archive)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as error:
        raise UnreadableArchiveError(f"{archive}: not a readable tar archive ({error})") from error
    return names


def _check_end_of_archive(tar: tarfile.TarFile, archive: str) -> None:
    """`tarfile` ends the member list quietly at a truncated or corrupt header past the first;
    a whole archive has its end-of-archive block (512 zero bytes) where the list ends."""
    assert tar.fileobj is not None
    tar.fileobj.seek(tar.offset)
    if tar.fileobj.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
        raise UnreadableArchiveError(f"{archive}: not a readable tar archive (truncated or corrupt at byte "
                                     f"{tar.offset}: no end-of-archive block after the last whole member)")


def _packed_objects(manifest_path: Path) -> tuple[set[str], list[str]]:
    """The object folders (`<root>/<uid>/...`) a pack manifest lists, and the excludes that pack applied."""
    try:
        manifest = json.loads(manifest_path.read_text())
        names = [str(member["name"]) for member in manifest["members"]]
        excludes = [str(pattern) for pattern in manifest["excludes"]]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise DatasetAssetsError(f"{manifest_path}: not a manifest `pack` wrote ({error!r}): run `pack` "
                                 "again") from error
    return {parts[1] for parts in (name.split("/") for name in names) if len(parts) > 2}, excludes


def _listed(uids: list[str], shown: int) -> str:
    """The first `shown` uids and how many more, or "none"."""
    more = f" and {len(uids) - shown} more" if len(uids) > shown else ""
    return ", ".join(uids[:shown]) + more if uids else "none"


def check_annotations_match_assets(save_dir: Path, shown: int = 5) -> None:
    """Refuse a version whose `annotations.json.gz` and packed `assets.tar` hold different objects.

    The objects in the tar are read from the manifest `pack_assets` wrote beside it. As in
    `prepare_annotations` and `pack_assets`, an annotated object whose `annotations.json` pack left out
    by pattern, and a packed folder prepare skips, are no objects of the other side. A version without a
    pack manifest (downloaded, not packed here) or without annotations is not compared.
    """
    annotations, manifest_path = save_dir / ANNOTATIONS_FILE, pack_manifest_path(save_dir / ASSETS_TAR)
    if not annotations.is_file() or not manifest_path.is_file():
        return
    packed, excludes = _packed_objects(manifest_path)
    annotated = set(load_annotations(annotations))
    only_annotated = sorted(uid for uid in annotated - packed
                            if not is_excluded(f"{uid}/{OBJECT_ANNOTATION}", excludes))
    only_packed = sorted(uid for uid in packed - annotated if not is_excluded(uid, DEFAULT_EXCLUDES))
    if only_annotated or only_packed:
        raise AssetsMismatchError(
            f"{annotations} and {manifest_path} list different objects (only in {ANNOTATIONS_FILE}: "
            f"{_listed(only_annotated, shown)}; only in {ASSETS_TAR}: {_listed(only_packed, shown)}): "
            f"run `prepare` again after adding or removing object folders (or `pack`, if {ANNOTATIONS_FILE} is "
            "right); nothing was published")


@dataclass(frozen=True)
class ComponentResult:
    """One component of one version, verified on disk; `status` is downloaded, resumed or skipped (kept)."""

    name: str
    path: Path
    status: str
    size: int
    sha256: str
    folder: Path | None = None
    members: int | None = None
    objects: int | None = None

    def metadata(self) -> dict[str, object]:
        optional = {"folder": self.folder and str(self.folder), "members": self.members, "objects": self.objects}
        return {"status": self.status, "bytes": self.size, "sha256": self.sha256, "path": str(self.path),
                **{key: value for key, value in optional.items() if value is not None}}


def _drop_mismatched(path: Path, expected: str | None) -> None:
    """A kept file that does not match its pin is fetched again rather than trusted."""
    if expected is not None and path.is_file() and digest_file(path).sha256 != expected:
        path.unlink()


def _listing(folder: Path, names: Iterable[str]) -> dict[str, list[int]]:
    """`{name: [size, mtime_ns]}` of the files just extracted into `folder`."""
    return {name: [stat.st_size, stat.st_mtime_ns] for name in names for stat in [(folder / name).stat()]}


def _tree_change(folder: Path, listing: Mapping[str, list[int]]) -> str | None:
    """Why the files extracted into `folder` no longer are as extracted (one removed or rewritten), or None.

    Sizes and modification times only: a cheap check on every run, not a re-hash of the tree.
    """
    for name, (size, mtime_ns) in listing.items():
        try:
            stat = (folder / name).stat()
        except OSError:
            return f"{name} is missing"
        if not S_ISREG(stat.st_mode) or [stat.st_size, stat.st_mtime_ns] != [size, mtime_ns]:
            return f"{name} was changed"
    return None


def _read_marker(marker: Path) -> dict[str, Any]:
    """An extraction marker's record; empty if it cannot be read (the folder is then extracted again)."""
    try:
        recorded = json.loads(marker.read_bytes())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _is_listing(value: object) -> TypeGuard[dict[str, list[int]]]:
    return isinstance(value, dict) and all(
        isinstance(entry, list) and len(entry) == 2 and all(type(number) is int for number in entry)
        for entry in value.values())


def _extract_once(tar_path: Path, folder: Path, sha256: str, limits: ExtractLimits) -> int:
    """Extract `tar_path` into `folder` unless its marker says this very tarball was and every file it
    extracted is still as extracted; the member count.

    A folder without a marker was not extracted here (it may be the tree the tarball was packed from,
    with files pack leaves out): it is never replaced. The marker is written before the swap, so a run
    killed after it still owns the folder.
    """
    marker = folder.with_name(f".{folder.name}.extracted.json")
    if folder.is_dir() and marker.is_file():
        recorded = _read_marker(marker)
        listing = recorded.get("files") if recorded.get("sha256") == sha256 else None
        if _is_listing(listing) and isinstance(recorded.get("members"), int):
            change = _tree_change(folder, listing)
            if change is None:
                return recorded["members"]
            logger.warning("%s: %s since %s was extracted; extracting again", folder, change, tar_path.name)
    elif folder.exists():
        raise DatasetAssetsError(f"{folder}: exists but was not extracted from {tar_path.name} here "
                                 f"(no {marker.name}); it may be the tree {tar_path.name} was packed from, "
                                 "which extracting would replace: move it away and run again")
    write_bytes_atomic(marker, json.dumps({"sha256": sha256}).encode())
    names = extract_tar_safely(tar_path, folder, limits.max_bytes, limits.max_members, strip_root=True)
    record = {"sha256": sha256, "members": len(names), "files": _listing(folder, names)}
    write_bytes_atomic(marker, json.dumps(record).encode())
    return len(names)


def _verified(component: Component, version: str, folder: Path, result: FileResult, limits: ExtractLimits
              ) -> ComponentResult:
    kind = component.kind
    path = folder / kind.filename
    expected = component.sha256.get(version)
    if expected is not None and result.sha256 != expected:
        path.unlink(missing_ok=True)
        raise ChecksumMismatch(f"{path}: sha256 {result.sha256} differs from the catalog's pin "
                               f"components.{kind.name}.sha256.{version} ({expected}); the file was deleted")
    extracted = folder / kind.folder if kind.folder else None
    try:
        objects = len(load_annotations(path)) if kind.name == "annotations" else None
        members = _extract_once(path, extracted, result.sha256, limits) if extracted else None
    except (AnnotationError, UnreadableArchiveError) as error:  # kept, it would fail every run without a fetch
        path.unlink(missing_ok=True)
        raise DatasetAssetsError(f"{error}; the file was deleted, so the next run fetches it again") from error
    return ComponentResult(kind.name, path, result.status, result.size, result.sha256, extracted, members, objects)


def download_components(dataset: str, source: VersionedSource, version: str, root: str | Path,
                        names: Sequence[str], settings: TransferSettings = TransferSettings(),
                        client: httpx.Client | None = None) -> list[ComponentResult]:
    """Download components `names` of one version into `<root>/<dataset>/<version>/`, concurrently.

    Each file is verified (sha256 pin if the catalog has one), annotations are parsed, tarballs
    extracted safely beside them within `source.extract` (again only when the tarball changed). Kept
    files are not fetched, so a tarball refused for a limit is extracted once the limit is raised.
    """
    source.require_version(version, dataset, "version")
    components = [source.component(name, dataset, "components") for name in dict.fromkeys(names)]
    folder = version_folder(root, dataset, version)
    for component in components:
        _drop_mismatched(folder / component.kind.filename, component.sha256.get(version))
    entries = [ManifestEntry(dataset, version, component.kind.filename, component.url(source.base_url, version))
               for component in components]
    report = download_entries(entries, {dataset: folder.parent}, settings, client=client)
    results = {result.relative_path: result for result in report.results}
    return [_verified(component, version, folder, results[f"{version}/{component.kind.filename}"], source.extract)
            for component in components]
