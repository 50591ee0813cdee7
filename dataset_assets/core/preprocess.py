"""Preprocessing configs (frozen, hashed) and the sample transforms they drive.

A `PreprocessConfig` is read from the catalog and validated field by field; its `hash` covers
every field except the name, so it can serve as the Dagster code_version of the shards it makes.
`preprocess_shards` streams raw WebDataset shards through `transform_sample` (crop, resize and
re-encode images; cast `npy` tensors; keep selected members) into new deterministic shards that
are published atomically together with their `_index.json` and a `_lineage.json` recording
config, source (partition, data version, input sha1 and sha256), library versions and creation
time, so "which config produced this shard" is answerable outside Dagster too. Inputs are hashed
before they are read and, given the digests their download verified, refused if they changed
since. Only `_lineage.json` carries the time: shards and index are byte-identical across runs.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import math
import platform
import tokenize
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy
from PIL import Image

from dataset_assets.core import storage
from dataset_assets.core.errors import CatalogError, DatasetAssetsError, InputChangedError
from dataset_assets.core.index import INDEX_FILE
from dataset_assets.core.shards import Compression, Sample, ShardInfo, ShardWriter, iter_tar_samples

LINEAGE_FILE = "_lineage.json"
IMAGE_FORMATS = {"jpeg": "jpg", "png": "png"}
IMAGE_SUFFIXES = frozenset({"jpg", "jpeg", "png"})
IMAGE_OPEN_FORMATS = ("JPEG", "PNG")
TENSOR_DTYPES = ("float16", "float32", "float64", "int32", "int64", "uint8")
MAX_IMAGE_SIDE = 65535
MAX_IMAGE_PIXELS = 64_000_000
LINEAGE_PACKAGES = ("dataset_assets", "pillow", "numpy", "webdataset", "zstandard")
PREVIEW_SAMPLES = 5
# Options added after the first release are hashed only when set, so adding one keeps every
# existing config's hash (hence its shards' code_version and materializations) valid.
HASHED_WHEN_SET = frozenset({"compression"})


@dataclass(frozen=True)
class PreprocessConfig:
    """How one preprocessing config turns raw samples of `source_config` into training samples.

    `crop` is (left, top, right, bottom) in source pixels and is applied before the
    (width, height) `image_size` resize. `keep` lists the member extensions of the *output*
    sample to keep (so `png` when `image_format` is "png"); None keeps every member.
    `compression` (catalog: `{level: 3, block_samples: 16}`) writes zstd-blocked shards that
    only this project's readers expand (see `core.shards`); None writes plain WebDataset tars.
    """

    name: str
    source_config: str
    image_size: tuple[int, int] | None = None
    crop: tuple[int, int, int, int] | None = None
    image_format: str = "jpeg"
    image_quality: int = 90
    keep: tuple[str, ...] | None = None
    tensor_dtype: str | None = None
    samples_per_shard: int = 1000
    max_shard_bytes: int | None = None
    compression: Compression | None = None

    @classmethod
    def from_mapping(cls, name: str, mapping: object, source: str, field: str) -> PreprocessConfig:
        """Validate a catalog entry; errors name `source`, the dotted `field.key` path and the value."""
        if not isinstance(name, str) or not name:
            raise CatalogError(source, field, name, "must be named by a non-empty string")
        if not isinstance(mapping, Mapping):
            raise CatalogError(source, field, mapping, "must be a mapping of preprocessing options")
        known = {option.name for option in fields(cls)} - {"name"}
        for key in mapping:
            if key not in known:
                raise CatalogError(
                    source, f"{field}.{key}", mapping[key], f"is not a preprocessing option (known: {sorted(known)})"
                )
        if "source_config" not in mapping:
            raise CatalogError(source, f"{field}.source_config", None, "is required")
        checked = {key: _VALIDATORS[key](value, source, f"{field}.{key}") for key, value in mapping.items()}
        config = cls(name=name, **checked)
        written = IMAGE_FORMATS[config.image_format]
        for extension in config.keep or ():
            suffix = _split_suffix(extension)[1]
            if suffix.lower() in IMAGE_SUFFIXES and suffix != written:
                raise CatalogError(source, f"{field}.keep", extension, f"would drop every image: with image_format "
                                   f"{config.image_format!r} images are written as {written!r}")
        return config

    def to_dict(self) -> dict[str, object]:
        """Every field but `name` (and unset later options), as plain JSON values."""
        return {
            option.name: _plain(getattr(self, option.name))
            for option in fields(self)
            if option.name != "name" and not (option.name in HASHED_WHEN_SET and getattr(self, option.name) is None)
        }

    @property
    def hash(self) -> str:
        """First 16 hex chars of the sha256 of the canonical JSON of `to_dict()`."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _plain(value: object) -> object:
    if isinstance(value, Compression):
        return asdict(value)
    return list(value) if isinstance(value, tuple) else value


def _string(value: object, source: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise CatalogError(source, where, value, "must be a non-empty string")
    return value


def _choice(value: object, choices: Sequence[str], source: str, where: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise CatalogError(source, where, value, f"must be one of {list(choices)}")
    return value


def _int_in_range(value: object, low: int, high: int | None, source: str, where: str) -> int:
    # bool is an int subclass, but `image_quality: true` is a typo, not a quality.
    if isinstance(value, int) and not isinstance(value, bool) and low <= value and (high is None or value <= high):
        return value
    bounds = f"between {low} and {high}" if high is not None else f">= {low}"
    raise CatalogError(source, where, value, f"must be an integer {bounds}")


def _int_list(value: object, length: int, low: int, source: str, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise CatalogError(source, where, value, f"must be a list of {length} integers")
    return tuple(
        _int_in_range(item, low, MAX_IMAGE_SIDE, source, f"{where}[{index}]") for index, item in enumerate(value)
    )


def _image_size(value: object, source: str, where: str) -> tuple[int, int] | None:
    if value is None:
        return None
    width, height = _int_list(value, 2, 1, source, where)
    return width, height


def _crop(value: object, source: str, where: str) -> tuple[int, int, int, int] | None:
    if value is None:
        return None
    left, top, right, bottom = _int_list(value, 4, 0, source, where)
    if right <= left or bottom <= top:
        raise CatalogError(source, where, value, "must be [left, top, right, bottom] with right > left, bottom > top")
    return left, top, right, bottom


def _image_format(value: object, source: str, where: str) -> str:
    return _choice(value, tuple(IMAGE_FORMATS), source, where)


def _image_quality(value: object, source: str, where: str) -> int:
    return _int_in_range(value, 1, 100, source, where)


def _keep(value: object, source: str, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise CatalogError(source, where, value, "must be a non-empty list of member extensions")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item or "/" in item or item.startswith(".") or item != item.lower():
            raise CatalogError(source, f"{where}[{index}]", item,
                               "must be a lowercase member extension such as 'jpg' (readers lowercase them)")
    return tuple(sorted(set(value)))


def _tensor_dtype(value: object, source: str, where: str) -> str | None:
    return None if value is None else _choice(value, TENSOR_DTYPES, source, where)


def _samples_per_shard(value: object, source: str, where: str) -> int:
    return _int_in_range(value, 1, None, source, where)


def _max_shard_bytes(value: object, source: str, where: str) -> int | None:
    return None if value is None else _int_in_range(value, 1, None, source, where)


def _compression(value: object, source: str, where: str) -> Compression | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not set(value) <= {"level", "block_samples"}:
        raise CatalogError(source, where, value, "must be a mapping with keys 'level' and/or 'block_samples'")
    level = _int_in_range(value.get("level", 3), 1, 22, source, f"{where}.level")
    return Compression(level, _int_in_range(value.get("block_samples", 16), 1, None, source, f"{where}.block_samples"))


_VALIDATORS: dict[str, Callable[[object, str, str], object]] = {
    "source_config": _string,
    "image_size": _image_size,
    "crop": _crop,
    "image_format": _image_format,
    "image_quality": _image_quality,
    "keep": _keep,
    "tensor_dtype": _tensor_dtype,
    "samples_per_shard": _samples_per_shard,
    "max_shard_bytes": _max_shard_bytes,
    "compression": _compression,
}


def _split_suffix(extension: str) -> tuple[str, str]:
    """`seg.npy` -> (`seg.`, `npy`): the last dotted part decides the member's type, as in webdataset."""
    head, dot, suffix = extension.rpartition(".")
    return head + dot, suffix


def output_extension(extension: str, config: PreprocessConfig) -> str:
    """The extension a member gets in the output sample (images take the configured format's)."""
    head, suffix = _split_suffix(extension)
    return head + IMAGE_FORMATS[config.image_format] if suffix.lower() in IMAGE_SUFFIXES else extension


def check_image_pixels(image: Image.Image) -> None:
    """Raise ValueError for an image whose header declares more than `MAX_IMAGE_PIXELS`, before it is decoded:
    a few kB of PNG can declare gigabytes of pixels, and Pillow only warns below ~179 million."""
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise ValueError(f"is {image.width}x{image.height} pixels, over the {MAX_IMAGE_PIXELS} limit")


def _decode_image(key: str, extension: str, data: bytes) -> Image.Image:
    try:
        # Pillow would otherwise pick any of its plugins by sniffing: EPS, for one, runs Ghostscript.
        image = Image.open(io.BytesIO(data), formats=IMAGE_OPEN_FORMATS)
        check_image_pixels(image)
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetAssetsError(f"sample {key!r}: member {extension!r} is not a decodable image ({error})") from error
    if image.mode in ("RGB", "L", "RGBA"):
        return image
    has_alpha = image.mode in ("LA", "PA") or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def _transform_image(key: str, extension: str, data: bytes, config: PreprocessConfig) -> bytes:
    image = _decode_image(key, extension, data)
    if config.crop is not None:
        left, top, right, bottom = config.crop
        if right > image.width or bottom > image.height:
            raise DatasetAssetsError(
                f"sample {key!r}: member {extension!r} is {image.width}x{image.height}, "
                f"smaller than crop box {config.crop}"
            )
        image = image.crop(config.crop)
    if config.image_size is not None and image.size != config.image_size:
        image = image.resize(config.image_size, Image.Resampling.LANCZOS)
    if config.image_format == "jpeg" and image.mode == "RGBA":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    if config.image_format == "jpeg":
        image.save(buffer, format="JPEG", quality=config.image_quality, optimize=False)
    else:
        image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _npy_header(data: bytes) -> tuple[tuple[int, ...], numpy.dtype, int]:
    """Shape, dtype and data offset of a `.npy` member, from its header alone; ValueError if malformed."""
    stream = io.BytesIO(data)
    version = numpy.lib.format.read_magic(stream)
    reader = numpy.lib.format.read_array_header_1_0 if version == (1, 0) else numpy.lib.format.read_array_header_2_0
    try:
        shape, _, dtype = reader(stream)
    except (SyntaxError, tokenize.TokenError) as error:  # numpy runs old-style headers through the tokenizer
        raise ValueError(f"malformed .npy header ({error})") from error
    return shape, dtype, stream.tell()


def _cast_tensor(key: str, extension: str, data: bytes, dtype: str) -> bytes:
    where = f"sample {key!r}: member {extension!r}"
    try:
        shape, stored, offset = _npy_header(data)
        # numpy allocates what the header declares before reading: check it against the bytes first.
        declared = math.prod(shape) * stored.itemsize
        if declared > len(data) - offset:
            raise DatasetAssetsError(f"{where} declares shape {shape} of {stored}, {declared} bytes, "
                                     f"but holds {len(data) - offset}")
        array = numpy.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise DatasetAssetsError(f"{where} is not a readable .npy array ({error})") from error
    if not isinstance(array, numpy.ndarray):
        raise DatasetAssetsError(f"sample {key!r}: member {extension!r} holds an archive, not a single array")
    buffer = io.BytesIO()
    numpy.save(buffer, array.astype(dtype), allow_pickle=False)
    return buffer.getvalue()


def _transform_member(key: str, extension: str, data: bytes, config: PreprocessConfig) -> bytes:
    suffix = _split_suffix(extension)[1].lower()
    if suffix in IMAGE_SUFFIXES:
        return _transform_image(key, extension, data, config)
    if suffix == "npy" and config.tensor_dtype is not None:
        return _cast_tensor(key, extension, data, config.tensor_dtype)
    return data


def transform_sample(key: str, sample: Mapping[str, bytes], config: PreprocessConfig) -> dict[str, bytes]:
    """Apply `config` to one raw sample: keep, re-encode images, cast tensors; JSON passes through."""
    result: dict[str, bytes] = {}
    for extension in sorted(sample):
        target = output_extension(extension, config)
        if config.keep is not None and target not in config.keep:
            continue
        if target in result:
            raise DatasetAssetsError(f"sample {key!r}: two members would both become {target!r}")
        result[target] = _transform_member(key, extension, sample[extension], config)
    if not result:
        raise DatasetAssetsError(f"sample {key!r}: no member of {sorted(sample)} is in keep={list(config.keep or ())}")
    return result


def _describe_npy(data: bytes) -> str:
    shape, dtype, _ = _npy_header(data)
    return f"{dtype} {list(shape)}"


def _describe_json(data: bytes) -> str:
    value = json.loads(data)
    if isinstance(value, dict):
        return f"object, {len(value)} keys"
    return f"list, {len(value)} items" if isinstance(value, list) else type(value).__name__


def _describe_image(data: bytes) -> str:
    """From the header only, and only by the decoders preprocessing uses: another format is unreadable here."""
    with Image.open(io.BytesIO(data), formats=IMAGE_OPEN_FORMATS) as image:
        return f"{image.format} {image.width}x{image.height} {image.mode}"


_DESCRIBERS: dict[str, Callable[[bytes], str]] = {
    "npy": _describe_npy, "json": _describe_json, **dict.fromkeys(IMAGE_SUFFIXES, _describe_image)
}


def describe_member(extension: str, data: bytes) -> str:
    """A short human description of one member (image size, array dtype/shape, JSON shape) from its headers."""
    describe = _DESCRIBERS.get(_split_suffix(extension)[1].lower())
    try:
        return describe(data) if describe is not None else f"{len(data)} bytes"
    except (OSError, ValueError, SyntaxError, RecursionError):  # deeply nested JSON is valid, yet json refuses it
        return f"{len(data)} bytes (unreadable)"


def preview_markdown(samples: Sequence[tuple[str, Sample]]) -> str:
    """A markdown table: one row per sample key, one column per member extension."""
    extensions = sorted({extension for _, sample in samples for extension in sample})
    lines = ["| key | " + " | ".join(extensions) + " |", "|---" * (len(extensions) + 1) + "|"]
    for key, sample in samples:
        cells = [describe_member(ext, sample[ext]) if ext in sample else "" for ext in extensions]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PreprocessResult:
    """The published shard set of one preprocessing run."""

    folder: Path
    shards: tuple[ShardInfo, ...]
    samples: int
    bytes: int
    config_hash: str
    index_path: Path
    preview: str
    source: Mapping[str, object]

    @property
    def data_version(self) -> str:
        """A hash of the published shards' bytes: equal shard sets have equal versions."""
        return shards_data_version(self.shards)

    def metadata(self) -> dict[str, object]:
        """Plain JSON-able values, e.g. for Dagster asset metadata."""
        return {
            "sample_count": self.samples,
            "bytes": self.bytes,
            "shard_count": len(self.shards),
            "config_hash": self.config_hash,
            "index_path": str(self.index_path),
            "shard_sha256": {shard.name: shard.sha256 for shard in self.shards},
            "preview": self.preview,
            "source": dict(self.source),
        }


def shards_data_version(shards: Sequence[ShardInfo]) -> str:
    listing = "".join(f"{shard.name}:{shard.sha256};" for shard in shards)
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def library_versions() -> dict[str, str]:
    """Versions of Python and of the packages whose behaviour decides the output bytes."""
    versions = {"python": platform.python_version()}
    for package in LINEAGE_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


@dataclass(frozen=True)
class _Written:
    writer: ShardWriter
    preview: list[tuple[str, Sample]]


def _write_samples(raw_shards: Sequence[Path], config: PreprocessConfig, folder: Path) -> _Written:
    seen: set[str] = set()
    preview: list[tuple[str, Sample]] = []
    with ShardWriter(folder, max_samples=config.samples_per_shard, max_bytes=config.max_shard_bytes,
                     compression=config.compression) as writer:
        for raw_shard in raw_shards:
            for key, sample in iter_tar_samples(raw_shard):
                if key in seen:
                    raise DatasetAssetsError(f"{raw_shard}: sample key {key!r} appears more than once in the input")
                seen.add(key)
                transformed = transform_sample(key, sample, config)
                if len(preview) < PREVIEW_SAMPLES:
                    preview.append((key, transformed))
                writer.write(key, transformed)
    if not writer.shards:
        raise DatasetAssetsError(f"no samples found in raw shards {[str(path) for path in raw_shards]}")
    return _Written(writer, preview)


def _describe(digest: storage.FileDigest) -> str:
    return f"{digest.size} bytes with sha256 {digest.sha256}"


def _inputs(raw_shards: Sequence[Path], expected: Mapping[Path, storage.FileDigest]) -> list[dict[str, object]]:
    """Size and digests of each input; `InputChangedError` for one that differs from its `expected` digest."""
    inputs = []
    for path in raw_shards:
        digest = storage.digest_file(path)
        if path in expected and digest != expected[path]:
            raise InputChangedError(str(path), _describe(digest), _describe(expected[path]))
        inputs.append({"name": path.name, "bytes": digest.size, "sha1": digest.sha1, "sha256": digest.sha256})
    return inputs


def _lineage(config: PreprocessConfig, shards: Sequence[ShardInfo], index: bytes,
             source: Mapping[str, object] | None, inputs: list[dict[str, object]]) -> bytes:
    lineage = {
        "config": config.to_dict(),
        "config_name": config.name,
        "config_hash": config.hash,
        "source": dict(source or {}),
        "inputs": inputs,
        "library_versions": library_versions(),
        "shards": [asdict(shard) for shard in shards],
        "index": {"file": INDEX_FILE, "sha256": hashlib.sha256(index).hexdigest()},
        "data_version": shards_data_version(shards),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return (json.dumps(lineage, sort_keys=True, indent=2) + "\n").encode("utf-8")


def preprocess_shards(
    raw_shards: Sequence[Path],
    config: PreprocessConfig,
    out_folder: Path,
    source: Mapping[str, object] | None = None,
    expected: Mapping[Path, storage.FileDigest] | None = None,
) -> PreprocessResult:
    """Transform `raw_shards` (in the given order) into a new shard set published at `out_folder`.

    A raw shard named in `expected` must still have that digest (`InputChangedError` otherwise).
    Shards, `_index.json` and `_lineage.json` are built in a staging folder and swapped in only
    when complete, so on any error `out_folder` keeps whatever it held before.
    """
    inputs = _inputs(raw_shards, expected or {})
    with storage.atomic_folder(out_folder) as staging:
        written = _write_samples(raw_shards, config, staging)
        shards = tuple(written.writer.shards)
        index = written.writer.index.to_json()
        (staging / INDEX_FILE).write_bytes(index)
        (staging / LINEAGE_FILE).write_bytes(_lineage(config, shards, index, source, inputs))
    return PreprocessResult(
        folder=out_folder,
        shards=shards,
        samples=sum(shard.samples for shard in shards),
        bytes=sum(shard.bytes for shard in shards),
        config_hash=config.hash,
        index_path=out_folder / INDEX_FILE,
        preview=preview_markdown(written.preview),
        source=dict(source or {}),
    )
