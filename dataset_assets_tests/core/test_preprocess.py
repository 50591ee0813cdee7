from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy
import pytest
import webdataset
from PIL import Image

from dataset_assets.core.errors import CatalogError, DatasetAssetsError, InputChangedError
from dataset_assets.core.index import read_index
from dataset_assets.core.preprocess import (
    IMAGE_FORMATS,
    MAX_IMAGE_PIXELS,
    PreprocessConfig,
    describe_member,
    preprocess_shards,
    transform_sample,
)
from dataset_assets.core.shards import Compression, ShardWriter, iter_tar_samples
from dataset_assets.core.storage import digest_file

CATALOG = "catalog/aria.yaml"
FIELD = "datasets.aria.configs.small"


def jpeg_bytes(width: int = 96, height: int = 72) -> bytes:
    """Left half red, right half blue, so crops are visible in the decoded pixels."""
    pixels = numpy.zeros((height, width, 3), dtype=numpy.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def npy_bytes(frame: int) -> bytes:
    buffer = io.BytesIO()
    numpy.save(buffer, numpy.arange(12, dtype=numpy.float32).reshape(3, 4) + frame / 8, allow_pickle=False)
    return buffer.getvalue()


def raw_sample(sequence: str, frame: int) -> dict[str, bytes]:
    ground_truth = {"sequence": sequence, "frame": frame, "boxes": [[1.5, 2.0, 30.0, 40.0]]}
    return {"jpg": jpeg_bytes(), "json": json.dumps(ground_truth).encode(), "npy": npy_bytes(frame)}


def write_raw_shards(folder: Path, sequence: str = "seq_a", frames: int = 5, per_shard: int = 3) -> list[Path]:
    with ShardWriter(folder, max_samples=per_shard) as writer:
        for frame in range(frames):
            writer.write(f"{sequence}_f{frame:04d}", raw_sample(sequence, frame))
    return [folder / shard.name for shard in writer.shards]


def read_back(folder: Path) -> list[dict[str, object]]:
    tars = sorted(str(path) for path in folder.glob("shards-*.tar"))
    dataset = webdataset.WebDataset(tars, shardshuffle=False, empty_check=False)
    return list(dataset)


def decoded_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def config(**options: object) -> PreprocessConfig:
    return PreprocessConfig.from_mapping("small", {"source_config": "raw", **options}, CATALOG, FIELD)


@pytest.fixture()
def raw_shards(tmp_path: Path) -> list[Path]:
    return write_raw_shards(tmp_path / "raw")


def test_same_input_and_config_give_byte_identical_shards(raw_shards: list[Path], tmp_path: Path) -> None:
    chosen = config(image_size=[48, 36], tensor_dtype="float16", samples_per_shard=2)
    first = preprocess_shards(raw_shards, chosen, tmp_path / "first", source={"partition": "seq_a"})
    second = preprocess_shards(raw_shards, chosen, tmp_path / "second", source={"partition": "seq_a"})

    assert [shard.name for shard in first.shards] == ["shards-0000.tar", "shards-0001.tar", "shards-0002.tar"]
    assert first.shards == second.shards
    for shard in first.shards:
        assert (tmp_path / "first" / shard.name).read_bytes() == (tmp_path / "second" / shard.name).read_bytes()
    assert (tmp_path / "first" / "_index.json").read_bytes() == (tmp_path / "second" / "_index.json").read_bytes()
    lineages = [json.loads((tmp_path / run / "_lineage.json").read_text()) for run in ("first", "second")]
    assert [{k: v for k, v in lineage.items() if k != "created_at"} for lineage in lineages] == [
        {k: v for k, v in lineages[0].items() if k != "created_at"}] * 2


def test_different_config_gives_different_hash_and_different_shards(raw_shards: list[Path], tmp_path: Path) -> None:
    small, smaller = config(image_size=[48, 36]), config(image_size=[24, 18])
    first = preprocess_shards(raw_shards, small, tmp_path / "small")
    second = preprocess_shards(raw_shards, smaller, tmp_path / "smaller")

    assert small.hash != smaller.hash and (first.config_hash, second.config_hash) == (small.hash, smaller.hash)
    assert first.data_version != second.data_version


def test_output_is_readable_by_webdataset_in_input_order(raw_shards: list[Path], tmp_path: Path) -> None:
    result = preprocess_shards(raw_shards, config(samples_per_shard=2), tmp_path / "out")

    samples = read_back(tmp_path / "out")
    assert [sample["__key__"] for sample in samples] == [f"seq_a_f{frame:04d}" for frame in range(5)]
    assert result.samples == 5
    assert [shard.samples for shard in result.shards] == [2, 2, 1]


def test_resize_changes_decoded_image_size(raw_shards: list[Path], tmp_path: Path) -> None:
    preprocess_shards(raw_shards, config(image_size=[48, 36]), tmp_path / "out")

    for sample in read_back(tmp_path / "out"):
        assert decoded_image(sample["jpg"]).size == (48, 36)


def test_crop_is_applied_before_resize(raw_shards: list[Path], tmp_path: Path) -> None:
    preprocess_shards(raw_shards, config(crop=[0, 0, 40, 72], image_size=[20, 36]), tmp_path / "out")

    image = decoded_image(read_back(tmp_path / "out")[0]["jpg"])
    pixels = numpy.asarray(image.convert("RGB")).astype(int)
    assert image.size == (20, 36)
    assert pixels[..., 0].min() > 200 and pixels[..., 2].max() < 60, "only the red left half survives the crop"


def test_crop_larger_than_image_names_sample_and_member() -> None:
    with pytest.raises(DatasetAssetsError, match=r"'seq_a_f0000'.*'jpg'.*crop box"):
        transform_sample("seq_a_f0000", raw_sample("seq_a", 0), config(crop=[0, 0, 200, 72]))


def test_png_format_renames_member_and_reencodes(raw_shards: list[Path], tmp_path: Path) -> None:
    preprocess_shards(raw_shards, config(image_format="png"), tmp_path / "out")

    sample = read_back(tmp_path / "out")[0]
    assert "jpg" not in sample
    image = decoded_image(sample["png"])
    assert (image.format, image.size) == ("PNG", (96, 72))


def test_image_quality_changes_jpeg_bytes() -> None:
    sample = raw_sample("seq_a", 0)
    low = transform_sample("seq_a_f0000", sample, config(image_quality=20))["jpg"]
    high = transform_sample("seq_a_f0000", sample, config(image_quality=95))["jpg"]

    assert len(low) < len(high)
    assert decoded_image(low).format == "JPEG"


def test_tensor_dtype_cast_to_float16(raw_shards: list[Path], tmp_path: Path) -> None:
    preprocess_shards(raw_shards, config(tensor_dtype="float16"), tmp_path / "out")

    for frame, sample in enumerate(read_back(tmp_path / "out")):
        array = numpy.load(io.BytesIO(sample["npy"]), allow_pickle=False)
        assert array.dtype == numpy.float16
        expected = numpy.arange(12, dtype=numpy.float32).reshape(3, 4) + frame / 8
        numpy.testing.assert_allclose(array, expected, rtol=1e-3)


def test_tensors_pass_through_unchanged_without_dtype() -> None:
    sample = raw_sample("seq_a", 1)

    assert transform_sample("seq_a_f0001", sample, config())["npy"] == sample["npy"]


def test_json_passes_through_unchanged() -> None:
    sample = raw_sample("seq_a", 2)

    assert transform_sample("seq_a_f0002", sample, config(image_size=[10, 10]))["json"] == sample["json"]


def test_keep_filters_members(raw_shards: list[Path], tmp_path: Path) -> None:
    preprocess_shards(raw_shards, config(keep=["json", "jpg"]), tmp_path / "out")

    for sample in read_back(tmp_path / "out"):
        assert sorted(key for key in sample if not key.startswith("__")) == ["jpg", "json"]


def test_keep_names_output_extensions() -> None:
    kept = transform_sample("seq_a_f0000", raw_sample("seq_a", 0), config(image_format="png", keep=["png"]))

    assert sorted(kept) == ["png"]


@pytest.mark.parametrize(("image_format", "kept"),
                         [("jpeg", "png"), ("jpeg", "jpeg"), ("png", "jpg"), ("jpeg", "seg.png")])
def test_keep_naming_an_image_extension_the_format_never_writes_is_refused(image_format: str, kept: str) -> None:
    """Every image member is written with the format's extension: keeping another one would silently drop them all."""
    with pytest.raises(CatalogError) as caught:
        config(image_format=image_format, keep=[kept, "json"])

    assert caught.value.field == f"{FIELD}.keep" and caught.value.value == kept
    assert f"images are written as '{IMAGE_FORMATS[image_format]}'" in str(caught.value)


def test_keep_dropping_every_member_names_the_sample() -> None:
    with pytest.raises(DatasetAssetsError, match="seq_a_f0000"):
        transform_sample("seq_a_f0000", raw_sample("seq_a", 0), config(keep=["txt"]))


def test_undecodable_image_names_sample_and_member() -> None:
    sample = {**raw_sample("seq_a", 0), "jpg": b"not a jpeg"}

    with pytest.raises(DatasetAssetsError, match=r"sample 'seq_a_f0000': member 'jpg'"):
        transform_sample("seq_a_f0000", sample, config())


def test_pickled_npy_is_refused_not_loaded() -> None:
    buffer = io.BytesIO()
    numpy.save(buffer, numpy.array([{"a": 1}], dtype=object), allow_pickle=True)
    sample = {**raw_sample("seq_a", 0), "npy": buffer.getvalue()}

    with pytest.raises(DatasetAssetsError, match=r"sample 'seq_a_f0000': member 'npy'"):
        transform_sample("seq_a_f0000", sample, config(tensor_dtype="float32"))


def test_an_npy_declaring_more_elements_than_it_holds_is_refused_before_allocating() -> None:
    buffer = io.BytesIO()
    numpy.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    sample = {**raw_sample("seq_a", 0), "npy": buffer.getvalue() + bytes(16)}

    with pytest.raises(DatasetAssetsError, match=r"sample 'seq_a_f0000': member 'npy' declares shape "
                                                 r"\(1000000000000,\) of float32, 4000000000000 bytes, but holds 16"):
        transform_sample("seq_a_f0000", sample, config(tensor_dtype="float16"))


def test_an_npy_header_numpy_cannot_tokenize_is_refused_and_previewed_as_unreadable() -> None:
    buffer = io.BytesIO()
    numpy.save(buffer, numpy.zeros(4, numpy.float32))
    data = buffer.getvalue().replace(b"}", b" ", 1)  # "{'descr': ...": the tokenizer meets EOF inside a bracket
    sample = {**raw_sample("seq_a", 0), "npy": data}

    with pytest.raises(DatasetAssetsError, match=r"sample 'seq_a_f0000': member 'npy' is not a readable \.npy array"):
        transform_sample("seq_a_f0000", sample, config(tensor_dtype="float16"))
    assert describe_member("npy", data) == f"{len(data)} bytes (unreadable)"


def _image_bytes(image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 10, 10)).save(buffer, format=image_format)
    return buffer.getvalue()


# Encapsulated PostScript: Pillow identifies it from this header alone, and would run Ghostscript to decode it.
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 4 3\n%%EndComments\nshowpage\n"


@pytest.mark.parametrize("data", [_image_bytes("TIFF"), _image_bytes("BMP"), _image_bytes("GIF"), EPS],
                         ids=["tiff", "bmp", "gif", "eps"])
def test_a_member_in_an_image_format_preprocessing_never_decodes_is_previewed_as_unreadable(data: bytes) -> None:
    """Only the JPEG and PNG decoders see untrusted bytes, also when a member is only described."""
    assert describe_member("jpg", data) == f"{len(data)} bytes (unreadable)"
    assert describe_member("png", _image_bytes("PNG")) == "PNG 4x3 RGB"


def test_config_hash_ignores_name_and_changes_with_any_field() -> None:
    base = config()
    renamed = PreprocessConfig.from_mapping("renamed", {"source_config": "raw"}, CATALOG, FIELD)
    variants = [
        config(source_config="raw_v2"),
        config(image_size=[48, 36]),
        config(crop=[0, 0, 10, 10]),
        config(image_format="png"),
        config(image_quality=91),
        config(keep=["jpg"]),
        config(tensor_dtype="float16"),
        config(samples_per_shard=999),
        config(max_shard_bytes=1 << 20),
    ]

    assert renamed.hash == base.hash
    assert len(base.hash) == 16 and int(base.hash, 16) >= 0
    assert len({variant.hash for variant in variants} | {base.hash}) == len(variants) + 1


def test_config_hash_is_stable_across_runs() -> None:
    # A changed hash re-materializes every shard: change this literal only on purpose.
    chosen = config(image_size=[48, 36], keep=["jpg", "json"], tensor_dtype="float16")

    assert chosen.to_dict() == {
        "source_config": "raw",
        "image_size": [48, 36],
        "crop": None,
        "image_format": "jpeg",
        "image_quality": 90,
        "keep": ["jpg", "json"],
        "tensor_dtype": "float16",
        "samples_per_shard": 1000,
        "max_shard_bytes": None,
    }
    canonical = (
        '{"crop":null,"image_format":"jpeg","image_quality":90,"image_size":[48,36],"keep":["jpg","json"],'
        '"max_shard_bytes":null,"samples_per_shard":1000,"source_config":"raw","tensor_dtype":"float16"}'
    )
    assert chosen.hash == hashlib.sha256(canonical.encode()).hexdigest()[:16] == "eadd0433fec881c1"


def test_keep_order_does_not_change_the_hash() -> None:
    assert config(keep=["json", "jpg"]).hash == config(keep=["jpg", "json"]).hash


def test_config_round_trips_through_to_dict() -> None:
    chosen = config(image_size=[48, 36], crop=[1, 2, 60, 70], keep=["jpg"], max_shard_bytes=4096)

    assert PreprocessConfig.from_mapping("small", chosen.to_dict(), CATALOG, FIELD) == chosen


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("image_quality", 0),
        ("image_quality", 101),
        ("image_quality", True),
        ("image_quality", "90"),
        ("image_size", [48]),
        ("image_size", [48, -1]),
        ("image_size", "48x36"),
        ("crop", [10, 0, 5, 20]),
        ("image_format", "gif"),
        ("keep", []),
        ("keep", "jpg"),
        ("keep", ["Json"]),  # every reader lowercases extensions, as webdataset does: it would match no member
        ("tensor_dtype", "complex64"),
        ("samples_per_shard", 0),
        ("max_shard_bytes", -5),
        ("source_config", ""),
        ("resolution", 3),
    ],
)
def test_bad_config_field_names_file_field_and_value(key: str, value: object) -> None:
    with pytest.raises(CatalogError) as caught:
        config(**{key: value})

    message = str(caught.value)
    assert CATALOG in message
    assert caught.value.field.startswith(f"{FIELD}.{key}")
    assert f"'{caught.value.field}'" in message
    assert repr(caught.value.value) in message


def test_config_requires_source_config_and_a_mapping() -> None:
    with pytest.raises(CatalogError, match=r"datasets\.aria\.configs\.small\.source_config"):
        PreprocessConfig.from_mapping("small", {"image_quality": 80}, CATALOG, FIELD)
    with pytest.raises(CatalogError, match="must be a mapping"):
        PreprocessConfig.from_mapping("small", ["source_config"], CATALOG, FIELD)


def test_failed_preprocess_publishes_nothing(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    with ShardWriter(raw, max_samples=2) as writer:
        for frame in range(3):
            writer.write(f"seq_a_f{frame:04d}", raw_sample("seq_a", frame))
        writer.write("seq_a_f0003", {**raw_sample("seq_a", 3), "jpg": b"truncated"})
    raw_shards = [raw / shard.name for shard in writer.shards]
    out = tmp_path / "published" / "seq_a"

    with pytest.raises(DatasetAssetsError, match="seq_a_f0003"):
        preprocess_shards(raw_shards, config(samples_per_shard=1), out)

    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_failed_preprocess_keeps_the_previous_shard_set(raw_shards: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    preprocess_shards(raw_shards, config(), out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    with pytest.raises(DatasetAssetsError, match="crop box"):
        preprocess_shards(raw_shards, config(crop=[0, 0, 500, 500]), out)

    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "raw"]


def test_duplicate_keys_across_raw_shards_are_rejected(tmp_path: Path) -> None:
    first = write_raw_shards(tmp_path / "one", frames=2)
    second = write_raw_shards(tmp_path / "two", frames=2)

    with pytest.raises(DatasetAssetsError, match="seq_a_f0000.*more than once"):
        preprocess_shards(first + second, config(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_lineage_records_config_source_and_library_versions(raw_shards: list[Path], tmp_path: Path) -> None:
    chosen = config(image_size=[48, 36])
    source = {"partition": "seq_a", "raw_sha256": {"shards-0000.tar": digest_file(raw_shards[0]).sha256}}
    result = preprocess_shards(raw_shards, chosen, tmp_path / "out", source=source)

    lineage = json.loads((tmp_path / "out" / "_lineage.json").read_text())
    assert lineage["config"] == chosen.to_dict()
    assert (lineage["config_name"], lineage["config_hash"]) == ("small", chosen.hash)
    assert lineage["source"] == source
    assert lineage["inputs"] == [{"name": path.name, "bytes": path.stat().st_size, "sha1": digest_file(path).sha1,
                                  "sha256": digest_file(path).sha256} for path in raw_shards]
    assert {"python", "pillow", "numpy", "webdataset", "zstandard"} <= set(lineage["library_versions"])
    assert [shard["sha256"] for shard in lineage["shards"]] == [shard.sha256 for shard in result.shards]
    assert lineage["index"] == {"file": "_index.json", "sha256": digest_file(result.index_path).sha256}
    assert lineage["data_version"] == result.data_version
    created = datetime.fromisoformat(lineage["created_at"])
    assert abs((datetime.now(timezone.utc) - created).total_seconds()) < 60


def test_metadata_is_plain_json_and_matches_the_files(raw_shards: list[Path], tmp_path: Path) -> None:
    chosen = config(samples_per_shard=2)
    result = preprocess_shards(raw_shards, chosen, tmp_path / "out")

    metadata = json.loads(json.dumps(result.metadata()))
    assert metadata["sample_count"] == 5
    assert metadata["shard_count"] == 3
    assert metadata["config_hash"] == chosen.hash
    assert metadata["bytes"] == sum(path.stat().st_size for path in (tmp_path / "out").glob("*.tar"))
    for name, sha256 in metadata["shard_sha256"].items():
        assert digest_file(tmp_path / "out" / name).sha256 == sha256


def test_max_shard_bytes_rolls_shards(raw_shards: list[Path], tmp_path: Path) -> None:
    result = preprocess_shards(raw_shards, config(max_shard_bytes=1), tmp_path / "out")

    assert [shard.samples for shard in result.shards] == [1, 1, 1, 1, 1]
    assert [key for shard in result.shards for key, _ in iter_tar_samples(tmp_path / "out" / shard.name)] == [
        f"seq_a_f{frame:04d}" for frame in range(5)
    ]


def test_index_is_published_with_the_shards_and_lists_every_sample(raw_shards: list[Path], tmp_path: Path) -> None:
    result = preprocess_shards(raw_shards, config(samples_per_shard=2), tmp_path / "out")

    index = read_index(tmp_path / "out")
    assert result.index_path == tmp_path / "out" / "_index.json"
    tars = [tmp_path / "out" / shard.name for shard in result.shards]
    assert index.keys() == [key for tar in tars for key, _ in iter_tar_samples(tar)]
    assert index.shards == result.shards


def test_compression_option_writes_zstd_blocks_and_is_hashed_only_when_set(
    raw_shards: list[Path], tmp_path: Path
) -> None:
    chosen = config(compression={"level": 5, "block_samples": 2})
    result = preprocess_shards(raw_shards, chosen, tmp_path / "out")

    assert chosen.compression == Compression(level=5, block_samples=2)
    assert chosen.to_dict()["compression"] == {"level": 5, "block_samples": 2}
    assert "compression" not in config().to_dict() and chosen.hash != config().hash
    assert {shard.compression for shard in result.shards} == {"zstd"}
    assert [key for key, _ in iter_tar_samples(tmp_path / "out" / "shards-0000.tar")] == [
        f"seq_a_f{frame:04d}" for frame in range(5)]
    assert PreprocessConfig.from_mapping("small", chosen.to_dict(), CATALOG, FIELD) == chosen


@pytest.mark.parametrize("value", [{"level": 0}, {"level": 23}, {"block_samples": 0}, {"codec": "gzip"}, "zstd"])
def test_bad_compression_names_the_field(value: object) -> None:
    with pytest.raises(CatalogError) as caught:
        config(compression=value)

    assert caught.value.field.startswith(f"{FIELD}.compression")


def test_preview_lists_member_shapes_of_the_first_samples(raw_shards: list[Path], tmp_path: Path) -> None:
    result = preprocess_shards(raw_shards, config(image_size=[48, 36], tensor_dtype="float16"), tmp_path / "out")

    assert result.preview.splitlines() == [
        "| key | jpg | json | npy |",
        "|---|---|---|---|",
        *[f"| seq_a_f{frame:04d} | JPEG 48x36 RGB | object, 3 keys | float16 [3, 4] |" for frame in range(5)],
    ]


def test_a_json_member_nested_too_deep_to_describe_is_previewed_not_fatal(tmp_path: Path) -> None:
    """JSON passes through preprocessing untouched; only the preview parses it, and must not fail the run."""
    deep = b"[" * 100_000 + b"]" * 100_000
    with ShardWriter(tmp_path / "raw") as writer:
        writer.write("seq_a_f0000", {**raw_sample("seq_a", 0), "json": deep})

    result = preprocess_shards([tmp_path / "raw" / "shards-0000.tar"], config(), tmp_path / "out")

    assert f"| {len(deep)} bytes (unreadable) |" in result.preview.splitlines()[2]
    assert dict(iter_tar_samples(tmp_path / "out" / "shards-0000.tar"))["seq_a_f0000"]["json"] == deep


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"


def test_an_image_member_is_decoded_as_jpeg_or_png_only_never_handed_to_ghostscript() -> None:
    """Pillow sniffs the format from the bytes: a `.jpg` holding PostScript would be rendered by running
    Ghostscript (where installed) on untrusted input. Only the formats we read are tried."""
    with pytest.raises(DatasetAssetsError, match=r"member 'jpg' is not a decodable image") as caught:
        transform_sample("seq_a_f0000", {"jpg": EPS}, config())
    assert "Ghostscript" not in str(caught.value)
    png = io.BytesIO()
    Image.new("RGB", (8, 6)).save(png, format="PNG")
    assert decoded_image(transform_sample("seq_a_f0000", {"jpg": png.getvalue()}, config())["jpg"]).format == "JPEG"


def test_an_input_that_differs_from_its_expected_digest_is_refused_before_anything_is_written(
    raw_shards: list[Path], tmp_path: Path
) -> None:
    expected = {path: digest_file(path) for path in raw_shards}
    raw_shards[-1].write_bytes(raw_shards[-1].read_bytes()[:-1] + b"\1")

    with pytest.raises(InputChangedError, match=f"{raw_shards[-1]}: holds .* not the .* verified when it was"):
        preprocess_shards(raw_shards, config(), tmp_path / "out", expected=expected)
    assert not (tmp_path / "out").exists()


def test_an_image_over_the_pixel_limit_is_refused_before_it_is_decoded() -> None:
    """A 8200x8200 PNG of one colour is ~70 kB and would decode to 200 MB of RGB: a decompression bomb."""
    buffer = io.BytesIO()
    Image.new("L", (8200, 8200)).save(buffer, format="PNG", compress_level=1)
    sample = {**raw_sample("seq_a", 0), "jpg": buffer.getvalue()}

    with pytest.raises(DatasetAssetsError, match=r"sample 'seq_a_f0000': member 'jpg' is not a decodable image "
                                                 rf"\(is 8200x8200 pixels, over the {MAX_IMAGE_PIXELS} limit\)"):
        transform_sample("seq_a_f0000", sample, config())
