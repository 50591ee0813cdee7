"""Safe artifact reading: unsafe zip members, decompression bombs, non-images and limits are refused."""
from __future__ import annotations

import gzip
import io
import warnings
import zipfile
from pathlib import Path

import numpy
import pytest
from PIL import Image

from dataset_assets.core.handlers import archives
from dataset_assets.core.handlers.archives import SafeZip, png_from_encoded, read_gzip
from dataset_assets.core.handlers.base import ArtifactError
from dataset_assets.core.preprocess import MAX_IMAGE_PIXELS


def zip_with(path: Path, name: str, data: bytes, mode: int = 0o100644, flags: int = 0) -> Path:
    info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
    info.external_attr = mode << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(info, data)
    if flags:
        # Set the flag bit in the central directory entry, as an encrypting tool would.
        raw = bytearray(path.read_bytes())
        central = raw.rfind(b"PK\x01\x02")
        raw[central + 8] |= flags
        path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize(
    ("name", "mode", "flags", "problem"),
    [
        ("../escape.jpg", 0o100644, 0, "'..' would escape the folder"),
        ("/etc/passwd", 0o100644, 0, "absolute paths are not allowed"),
        ("C:/windows.jpg", 0o100644, 0, "absolute paths are not allowed"),
        ("images/link.jpg", 0o120777, 0, "symlink members are not allowed"),
        ("images/fifo", 0o010644, 0, "device or special file members are not allowed"),
        ("images/secret.jpg", 0o100644, 0x1, "encrypted members are not allowed"),
    ],
)
def test_unsafe_zip_members_are_refused_on_open(tmp_path: Path, name: str, mode: int, flags: int,
                                                problem: str) -> None:
    path = zip_with(tmp_path / "a.zip", name, b"target", mode, flags)
    with pytest.raises(ArtifactError) as raised:
        SafeZip(path, "archive")
    assert str(raised.value) == f"artifact 'archive', member '{name}': {problem}"


def test_a_zip_that_zipfile_cannot_open_is_named_with_the_reason(tmp_path: Path) -> None:
    path = zip_with(tmp_path / "a.zip", "images/a.jpg", b"target")
    raw = bytearray(path.read_bytes())
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 6] = 147  # "version needed to extract" 14.7: zipfile raises NotImplementedError
    path.write_bytes(bytes(raw))

    with pytest.raises(ArtifactError, match=r"artifact 'archive': a\.zip is not a readable zip archive "
                                            r"\(truncated or corrupt: zip file version 14\.7\)"):
        SafeZip(path, "archive")


def test_a_member_whose_local_header_name_is_not_utf8_is_named_with_the_reason(tmp_path: Path) -> None:
    path = zip_with(tmp_path / "a.zip", "images/a.jpg", b"target")
    raw = bytearray(path.read_bytes())
    raw[7] |= 0x08  # local header flag 0x800: the name is UTF-8 ...
    raw[30] = 0x8B  # ... which its first byte is not
    path.write_bytes(bytes(raw))

    with SafeZip(path, "archive") as archive, pytest.raises(
            ArtifactError, match=r"member 'images/a\.jpg': cannot be read: the archive is truncated or corrupt "
                                 r"\(UnicodeDecodeError"):
        archive.read("images/a.jpg")


def test_a_member_name_the_archive_holds_twice_is_refused_on_open(tmp_path: Path) -> None:
    path = tmp_path / "a.zip"
    info = zipfile.ZipInfo("train.csv", (1980, 1, 1, 0, 0, 0))
    info.external_attr = 0o100644 << 16
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as archive:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name, and writes it
        archive.writestr(info, b"image_id,healthy\nTrain_0,1\n")
        archive.writestr(info, b"image_id,healthy\nTrain_0,0\n")
    with pytest.raises(ArtifactError) as raised:
        SafeZip(path, "archive")
    assert str(raised.value) == ("artifact 'archive', member 'train.csv': appears more than once in the archive, "
                                 "so which one is meant is ambiguous")


def test_a_zip_bomb_member_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    path = zip_with(tmp_path / "bomb.zip", "images/zeros.jpg", bytes(8 << 20))
    with pytest.raises(ArtifactError, match=r"member 'images/zeros.jpg': expands \d+ to 8388608 bytes"):
        SafeZip(path, "archive")


def test_reads_stop_at_the_callers_limit(tmp_path: Path) -> None:
    path = zip_with(tmp_path / "a.zip", "labels.csv", b"x" * 5000)
    with SafeZip(path, "archive") as archive:
        assert archive.read("labels.csv", limit=5000) == b"x" * 5000
        with pytest.raises(ArtifactError, match="declares 5000 bytes, over the 4999 limit"):
            archive.read("labels.csv", limit=4999)
        with pytest.raises(ArtifactError, match="member 'other.csv': is missing from the archive"):
            archive.read("other.csv")


def test_gzip_streams_are_read_under_a_limit(tmp_path: Path) -> None:
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(bytes(4096)))
    assert read_gzip(path, "labels") == bytes(4096)
    with pytest.raises(ArtifactError, match="labels.gz decompresses past the 4095-byte limit"):
        read_gzip(path, "labels", limit=4095)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ArtifactError, match="artifact 'labels': labels.gz is not a readable gzip stream"):
        read_gzip(path, "labels")


def test_images_decode_only_from_raster_formats_under_a_pixel_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ArtifactError, match="member 'images/a.eps': does not decode as an image"):
        png_from_encoded(eps, "RGB", "archive", "images/a.eps")
    monkeypatch.setattr(archives, "MAX_IMAGE_PIXELS", 10)
    png = archives.png_from_array(numpy.zeros((4, 4), dtype=numpy.uint8))
    with pytest.raises(ArtifactError, match="member 'big.png': is 4x4 pixels, over 10"):
        png_from_encoded(png, "L", "archive", "big.png")


def test_an_artifact_image_past_the_pixel_limit_preprocessing_and_loading_apply_is_refused() -> None:
    """One limit for every decoder of untrusted images: a 8200x8200 PNG (~70 kB, 67 Mpx) is refused by the
    handlers at the very limit preprocessing and the loaders refuse it at, defined once."""
    buffer = io.BytesIO()
    Image.new("L", (8200, 8200)).save(buffer, format="PNG", compress_level=1)

    with pytest.raises(ArtifactError, match=rf"member 'big.png': is 8200x8200 pixels, over {MAX_IMAGE_PIXELS}$"):
        png_from_encoded(buffer.getvalue(), "L", "archive", "big.png")
    assert archives.MAX_IMAGE_PIXELS is MAX_IMAGE_PIXELS
