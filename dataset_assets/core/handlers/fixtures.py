"""Building blocks for `Handler.write_fixture`: reproducible zips and small photo-like JPEGs.

Fixture bytes are a function of the seed only (zip entries carry a fixed timestamp, JPEGs are
encoded with fixed settings), so a fixture's sha256 is stable and can be pinned in a test catalog.
"""
from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy
from PIL import Image

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_zip(path: Path, members: Mapping[str, bytes]) -> None:
    """Write `members` (name -> bytes, in order) as a deflated zip with fixed timestamps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16
            archive.writestr(info, data)


def random_jpeg(rng: numpy.random.Generator, width: int, height: int) -> bytes:
    """A smooth random RGB gradient encoded as JPEG (quality 90): small, and decodes identically everywhere."""
    corners = rng.integers(0, 256, size=(2, 2, 3)).astype(numpy.float64)
    y = numpy.linspace(0.0, 1.0, height)[:, None, None]
    x = numpy.linspace(0.0, 1.0, width)[None, :, None]
    top = corners[0, 0] * (1 - x) + corners[0, 1] * x
    bottom = corners[1, 0] * (1 - x) + corners[1, 1] * x
    pixels = (top * (1 - y) + bottom * y).round().astype(numpy.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
