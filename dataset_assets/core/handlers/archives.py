"""Safe reading of artifact archives and images: nothing escapes, nothing explodes, nothing is unpickled.

Zip members follow the rules `core.shards.check_member` applies to tar members (regular files
only, relative names without '..'; directories are skipped), and encrypted members and names
held twice are refused.
Against decompression bombs, a member's declared size is capped (`MAX_DOCUMENT_BYTES` for any
member, a caller-given limit per read), reads stop one byte past the cap, and members over 1 MiB
may not compress better than `MAX_RATIO`:1. Gzip streams are read under the same cap. Images are
decoded by Pillow restricted to raster formats (never EPS, which runs Ghostscript) under a pixel
limit (preprocessing's `MAX_IMAGE_PIXELS`), converted to the dataset's mode and re-encoded as PNG.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import stat
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import numpy
from PIL import Image

from dataset_assets.core.handlers.base import ArtifactError, Record
from dataset_assets.core.paths import escape_reason
from dataset_assets.core.preprocess import MAX_IMAGE_PIXELS

MAX_IMAGE_BYTES = 64 << 20
MAX_DOCUMENT_BYTES = 1 << 30
MAX_RATIO = 200
RATIO_FLOOR_BYTES = 1 << 20
IMAGE_FORMATS = ("JPEG", "PNG", "PPM", "BMP", "GIF", "TIFF", "WEBP")
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError)


def check_zip_member(artifact: str, info: zipfile.ZipInfo) -> None:
    """Raise `ArtifactError` unless `info` is a plain (or directory) entry with a safe relative name."""
    name = info.filename
    reason = escape_reason(name)
    if reason is not None:
        raise ArtifactError(artifact, name, reason)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ArtifactError(artifact, name, "symlink members are not allowed")
    # No file type at all (permission bits only, as `ZipFile.writestr(name, ...)` writes) is a regular file.
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise ArtifactError(artifact, name, "device or special file members are not allowed")
    if info.flag_bits & 0x1:
        raise ArtifactError(artifact, name, "encrypted members are not allowed")
    if info.file_size > MAX_DOCUMENT_BYTES:
        raise ArtifactError(artifact, name, f"declares {info.file_size} bytes, over the {MAX_DOCUMENT_BYTES} limit")
    if info.file_size > RATIO_FLOOR_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise ArtifactError(artifact, name, f"expands {info.compress_size} to {info.file_size} bytes "
                                            f"(over {MAX_RATIO}:1): refusing a decompression bomb")


class SafeZip:
    """A zip artifact opened for reading members by name, every member checked on open."""

    def __init__(self, path: Path, artifact: str) -> None:
        self.artifact = artifact
        try:
            self._zip = zipfile.ZipFile(path)
        except _READ_ERRORS as error:
            raise ArtifactError(artifact, None, f"{path.name} is not a readable zip archive "
                                                f"(truncated or corrupt: {error})") from None
        self._members: dict[str, zipfile.ZipInfo] = {}
        try:
            for info in self._zip.infolist():
                check_zip_member(artifact, info)
                if info.is_dir():
                    continue
                if info.filename in self._members:
                    raise ArtifactError(artifact, info.filename, "appears more than once in the archive, "
                                                                 "so which one is meant is ambiguous")
                self._members[info.filename] = info
        except ArtifactError:
            self._zip.close()
            raise

    def names(self) -> list[str]:
        return list(self._members)

    def read(self, name: str, limit: int = MAX_IMAGE_BYTES) -> bytes:
        info = self._members.get(name)
        if info is None:
            raise ArtifactError(self.artifact, name, "is missing from the archive")
        if info.file_size > limit:
            raise ArtifactError(self.artifact, name, f"declares {info.file_size} bytes, over the {limit} limit")
        try:
            with self._zip.open(info) as handle:
                data = handle.read(limit + 1)
        except _READ_ERRORS as error:
            raise ArtifactError(self.artifact, name, f"cannot be read: the archive is truncated or corrupt "
                                                     f"({type(error).__name__}: {error})") from None
        if len(data) > limit:
            raise ArtifactError(self.artifact, name, f"decompresses past the {limit}-byte limit")
        return data

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> SafeZip:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def read_gzip(path: Path, artifact: str, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
    """The decompressed bytes of a gzip file, refusing more than `limit` of them."""
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as error:
        raise ArtifactError(artifact, None, f"{path.name} is not a readable gzip stream "
                                            f"(truncated or corrupt: {error})") from None
    if len(data) > limit:
        raise ArtifactError(artifact, None, f"{path.name} decompresses past the {limit}-byte limit")
    return data


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def png_from_array(pixels: numpy.ndarray) -> bytes:
    """PNG bytes of an 8-bit greyscale (H, W) or RGB (H, W, 3) array."""
    return encode_png(Image.fromarray(numpy.ascontiguousarray(pixels, dtype=numpy.uint8)))


def png_from_encoded(data: bytes, mode: str, artifact: str, member: str) -> bytes:
    """Decode an encoded image (JPEG, PNG, ...), convert it to `mode` and re-encode it as PNG."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ArtifactError(artifact, member,
                                    f"is {image.width}x{image.height} pixels, over {MAX_IMAGE_PIXELS}")
            image.load()
            return encode_png(image.convert(mode))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        problem = f"does not decode as an image ({type(error).__name__}: {error})"
        raise ArtifactError(artifact, member, problem) from None


def zip_images(paths: Mapping[str, Path], records: Sequence[Record], mode: str) -> Iterator[bytes]:
    """PNG bytes of each record's image, read from member `record.member` of zip `record.artifact`."""
    with contextlib.ExitStack() as stack:
        archives: dict[str, SafeZip] = {}
        for record in records:
            if record.artifact not in archives:
                archives[record.artifact] = stack.enter_context(SafeZip(paths[record.artifact], record.artifact))
            data = archives[record.artifact].read(record.member)
            yield png_from_encoded(data, mode, record.artifact, record.member)
