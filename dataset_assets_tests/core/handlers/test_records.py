"""Conversion of fixture artifacts into record shards: content, determinism, splits, bad artifacts."""
from __future__ import annotations

import gzip
import json
import os
import zipfile
from pathlib import Path

import pytest

from dataset_assets.core.catalog import SplitSpec
from dataset_assets.core.handlers.base import ArtifactError, Handler
from dataset_assets.core.handlers.coco import instances_member
from dataset_assets.core.handlers.fixtures import write_zip
from dataset_assets.core.handlers.mnist import idx_bytes, parse_idx
from dataset_assets.core.handlers.records import build_records, write_record_splits
from dataset_assets.core.handlers.registry import HANDLERS, get_handler
from dataset_assets.core.loading import load_yaml_and_extract_tar_list
from dataset_assets_tests.core.handlers.helpers import (
    assert_samples_match,
    expected_splits,
    pinned_source,
    read_with_tar_reader,
    read_with_webdataset,
    shard_paths,
)

SPLIT = SplitSpec(ratio=0.7, seed=7)


def build(handler: Handler, artifacts: Path, records: Path, workers: int = 1) -> None:
    build_records("ds", handler, pinned_source(handler, artifacts, samples_per_shard=3), SPLIT, artifacts, records,
                  workers=workers)


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def rewrite_zip(path: Path, changes: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    write_zip(path, members | changes)


@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_convert_yields_exactly_the_fixture_examples(name: str, tmp_path: Path) -> None:
    handler = get_handler(name)
    fixture = handler.write_fixture(tmp_path)
    examples = list(handler.convert({artifact.name: tmp_path / artifact.filename for artifact in handler.artifacts}))
    samples = {example.record.key: example.sample() for example in examples}
    assert_samples_match(samples, list(fixture.examples), handler.features)
    assert [example.record.key for example in examples] == [example.key for example in fixture.examples]


@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_records_are_byte_identical_with_one_or_two_workers(name: str, tmp_path: Path) -> None:
    handler = get_handler(name)
    fixture = handler.write_fixture(tmp_path / "artifacts")
    build(handler, fixture.folder, tmp_path / "serial", workers=1)
    build(handler, fixture.folder, tmp_path / "parallel", workers=2)
    serial = files_of(tmp_path / "serial")
    assert sum(1 for file in serial if file.endswith(".tar")) >= 3
    assert serial == files_of(tmp_path / "parallel")


@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_records_hold_the_fixture_split_by_the_dataset_or_a_seeded_ratio(name: str, tmp_path: Path) -> None:
    handler = get_handler(name)
    fixture = handler.write_fixture(tmp_path / "artifacts")
    records = tmp_path / "records"
    build(handler, fixture.folder, records)
    splits = write_record_splits(records)
    features = json.loads((records / "features.json").read_text())
    assert features["label_names"] == list(handler.features.label_names)
    for split, examples in expected_splits(fixture, SPLIT.ratio, SPLIT.seed).items():
        tars = load_yaml_and_extract_tar_list(splits.yamls[split])
        assert tars == shard_paths(records, split)
        assert_samples_match(read_with_webdataset(tars), examples, handler.features)
        assert_samples_match(read_with_tar_reader(tars), examples, handler.features)
        assert features["splits"][split]["examples"] == len(examples) == splits.examples[split]
    assert len(load_yaml_and_extract_tar_list(splits.yamls["all"])) == sum(
        len(features["splits"][split]["shards"]) for split in ("train", "validation"))


def corrupt_mnist_label(folder: Path) -> None:
    path = folder / "train-labels-idx1-ubyte.gz"
    labels = parse_idx(gzip.decompress(path.read_bytes()), "train_labels", 1).copy()
    labels[3] = 12
    path.write_bytes(idx_bytes(labels))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt_coco_category(folder: Path) -> None:
    path = folder / "annotations_trainval2017.zip"
    with zipfile.ZipFile(path) as archive:
        document = json.loads(archive.read(instances_member("val2017")))
    document["annotations"][0]["category_id"] = 999
    rewrite_zip(path, {instances_member("val2017"): json.dumps(document).encode()})


def duplicate_coco_file_name(folder: Path) -> None:
    path = folder / "annotations_trainval2017.zip"
    with zipfile.ZipFile(path) as archive:
        document = json.loads(archive.read(instances_member("val2017")))
    document["images"].append(dict(document["images"][1], id=777))
    rewrite_zip(path, {instances_member("val2017"): json.dumps(document).encode()})


BAD_ARTIFACTS = {
    "mnist label out of range": (
        "mnist", corrupt_mnist_label, "artifact 'train_labels', member 'item 3': label 12 is out of range"),
    "mnist truncated gzip": (
        "mnist", lambda folder: truncate(folder / "t10k-images-idx3-ubyte.gz"),
        "artifact 'test_images': t10k-images-idx3-ubyte.gz is not a readable gzip stream (truncated"),
    "plant image does not decode": (
        "plant_pathology_2020", lambda folder: rewrite_zip(folder / "plant-pathology-2020-fgvc7.zip",
                                                           {"images/Train_4.jpg": b"\xff\xd8 not a jpeg"}),
        "artifact 'archive', member 'images/Train_4.jpg': does not decode as an image"),
    "plant truncated zip": (
        "plant_pathology_2020", lambda folder: truncate(folder / "plant-pathology-2020-fgvc7.zip"),
        "artifact 'archive': plant-pathology-2020-fgvc7.zip is not a readable zip archive (truncated"),
    "plant label not one-hot": (
        "plant_pathology_2020", lambda folder: rewrite_zip(folder / "plant-pathology-2020-fgvc7.zip", {
            "train.csv": b"image_id,healthy,multiple_diseases,rust,scab\nTrain_0,0,0,2,0\n"}),
        "artifact 'archive', member 'train.csv': line 2: label out of range"),
    "plant row with an extra value": (
        "plant_pathology_2020", lambda folder: rewrite_zip(folder / "plant-pathology-2020-fgvc7.zip", {
            "train.csv": b"image_id,healthy,multiple_diseases,rust,scab\nTrain_0,0,0,1,0\nTrain_1,0,0,1,0,1\n"}),
        "artifact 'archive', member 'train.csv': line 3: has 6 fields, the header has 5"),
    "plant row missing a value": (
        "plant_pathology_2020", lambda folder: rewrite_zip(folder / "plant-pathology-2020-fgvc7.zip", {
            "train.csv": b"image_id,healthy,multiple_diseases,rust,scab\nTrain_0,0,0,1\n"}),
        "artifact 'archive', member 'train.csv': line 2: has 4 fields, the header has 5"),
    "plant header names a column twice": (
        "plant_pathology_2020", lambda folder: rewrite_zip(folder / "plant-pathology-2020-fgvc7.zip", {
            "train.csv": b"image_id,healthy,multiple_diseases,rust,scab,healthy\nTrain_0,1,0,0,0,0\n"}),
        "artifact 'archive', member 'train.csv': the header names column(s) healthy more than once"),
    "plant image id listed twice": (
        "plant_pathology_2020", lambda folder: rewrite_zip(folder / "plant-pathology-2020-fgvc7.zip", {
            "train.csv": b"image_id,healthy,multiple_diseases,rust,scab\nTrain_0,0,0,1,0\nTrain_1,1,0,0,0\n"
                         b"Train_0,1,0,0,0\n"}),
        "artifact 'archive', member 'train.csv': line 4: image_id 'Train_0' is already listed on line 2"),
    "plant field over the csv module's limit": (
        "plant_pathology_2020", lambda folder: rewrite_zip(folder / "plant-pathology-2020-fgvc7.zip", {
            "train.csv": b"image_id,healthy,multiple_diseases,rust,scab\nTrain_0,0,0,1,0\n\"" + b"x" * 200_000
                         + b"\",0,0,1,0\n"}),
        "artifact 'archive', member 'train.csv': line 3: is not readable CSV (field larger than field limit"),
    "plant train.csv without rows": (
        "plant_pathology_2020", lambda folder: rewrite_zip(folder / "plant-pathology-2020-fgvc7.zip", {
            "train.csv": b"image_id,healthy,multiple_diseases,rust,scab\n"}),
        "artifact 'archive': hold no examples: nothing to convert"),
    "coco category out of range": (
        "coco2017_multilabel", corrupt_coco_category,
        "member 'annotations/instances_val2017.json': annotation 19: label out of range: category_id 999"),
    "coco file name listed twice": (
        "coco2017_multilabel", duplicate_coco_file_name,
        "member 'annotations/instances_val2017.json': image 777: file_name '000000000016.jpg' gives the "
        "example key of image 16 (file_name '000000000016.jpg')"),
    "coco annotations nested too deep": (
        "coco2017_multilabel", lambda folder: rewrite_zip(folder / "annotations_trainval2017.zip", {
            instances_member("val2017"): b"[" * 100_000 + b"]" * 100_000}),
        "artifact 'annotations', member 'annotations/instances_val2017.json': is not valid JSON (nested deeper "
        "than Python's JSON parser goes"),
    "coco image does not decode": (
        "coco2017_multilabel", lambda folder: rewrite_zip(folder / "val2017.zip",
                                                          {"val2017/000000000017.jpg": b"GIF89a truncated"}),
        "artifact 'val_images', member 'val2017/000000000017.jpg': does not decode as an image"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARTIFACTS))
def test_bad_artifact_fails_naming_artifact_and_member_and_keeps_the_published_set(case: str, tmp_path: Path) -> None:
    name, damage, message = BAD_ARTIFACTS[case]
    handler = get_handler(name)
    artifacts = handler.write_fixture(tmp_path / "artifacts").folder
    records = tmp_path / "records"
    build(handler, artifacts, records)
    published = files_of(records)
    damage(artifacts)
    with pytest.raises(ArtifactError) as raised:
        build(handler, artifacts, records, workers=2)
    assert message in str(raised.value)
    assert files_of(records) == published
    assert sorted(path.name for path in tmp_path.iterdir()) == ["artifacts", "records"]


def test_a_failed_first_conversion_publishes_nothing(tmp_path: Path) -> None:
    handler = get_handler("plant_pathology_2020")
    artifacts = handler.write_fixture(tmp_path / "artifacts").folder
    rewrite_zip(artifacts / "plant-pathology-2020-fgvc7.zip", {"images/Train_9.jpg": b"\x89PNG broken"})
    with pytest.raises(ArtifactError, match="member 'images/Train_9.jpg'"):
        build(handler, artifacts, tmp_path / "records", workers=2)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["artifacts"]


def repack_with_writestr(path: Path) -> None:
    """Rewrite a zip as `ZipFile.writestr(name, data)` does: modes hold permission bits only (0o600)."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


@pytest.mark.parametrize("name", ["coco2017_multilabel", "plant_pathology_2020"])
def test_zips_whose_members_carry_permission_bits_only_convert_like_the_fixture(name: str, tmp_path: Path) -> None:
    handler = get_handler(name)
    fixture = handler.write_fixture(tmp_path / "artifacts")
    for artifact in handler.artifacts:
        repack_with_writestr(fixture.folder / artifact.filename)
    records = tmp_path / "records"
    build(handler, fixture.folder, records)
    for split, examples in expected_splits(fixture, SPLIT.ratio, SPLIT.seed).items():
        assert_samples_match(read_with_webdataset(shard_paths(records, split)), examples, handler.features)


def test_records_build_on_every_core_where_the_os_cannot_tell_the_process_affinity(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity")  # as on macOS, which has no such call
    handler = get_handler("mnist")
    fixture = handler.write_fixture(tmp_path / "artifacts")
    records = tmp_path / "records"
    build_records("ds", handler, pinned_source(handler, fixture.folder, samples_per_shard=3), SPLIT, fixture.folder,
                  records)
    for split, examples in expected_splits(fixture, SPLIT.ratio, SPLIT.seed).items():
        assert_samples_match(read_with_webdataset(shard_paths(records, split)), examples, handler.features)
