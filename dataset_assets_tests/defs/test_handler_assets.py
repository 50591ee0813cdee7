"""Raw-artifact datasets end to end: fixture -> loopback provider -> DagsterInstance -> shards read back.

Shards are read three ways: plain `webdataset` (raw bytes), the project's streaming `ShardStream`
and its map-style `IndexedShardDataset` (through each split's `_index.json`).
"""
from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy
import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance, Definitions, ExecuteInProcessResult
from PIL import Image

from dataset_assets.core.catalog import Catalog
from dataset_assets.core.handlers.base import Fixture, FixtureExample, Handler
from dataset_assets.core.handlers.fetch import ArtifactFetchError
from dataset_assets.core.handlers.registry import HANDLERS, get_handler
from dataset_assets.core.loading import IndexedShardDataset, load_yaml_and_extract_tar_list, make_shard_dataset
from dataset_assets_tests.core.handlers.helpers import (
    assert_samples_match,
    expected_splits,
    handler_dataset,
    read_with_webdataset,
    shard_paths,
    write_catalog,
)
from dataset_assets_tests.defs.conftest import make_defs
from dataset_assets_tests.static_server import StaticServer

DS = "raw"
FIRST_MEMBER_BYTE = 512 + 16  # past the first tar header: inside the first member's data


def keys(*names: str) -> list[AssetKey]:
    return [AssetKey([DS, name]) for name in names]


def run(defs: Definitions, instance: DagsterInstance, *names: str, raise_on_error: bool = True
        ) -> ExecuteInProcessResult:
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(instance=instance, asset_selection=keys(*names), raise_on_error=raise_on_error)


def setup(handler: Handler, static_server: StaticServer, tmp_path: Path, home: Path
          ) -> tuple[Fixture, Catalog, Definitions]:
    fixture = handler.write_fixture(static_server.folder)
    catalog = write_catalog(tmp_path, {DS: handler_dataset(handler, fixture, static_server.base_url)})
    return fixture, catalog, make_defs(catalog, home, max_attempts=1)


def latest_metadata(instance: DagsterInstance, name: str) -> dict:
    event = instance.get_latest_materialization_event(AssetKey([DS, name]))
    assert event is not None and event.asset_materialization is not None
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


def rgb(example: FixtureExample) -> numpy.ndarray:
    return numpy.asarray(Image.frombytes(example.mode, example.size, example.pixels).convert("RGB"))


def assert_decoded_samples_match(samples: Iterable[dict], examples: list[FixtureExample]) -> None:
    """Samples decoded by the project's loaders: `image.png` a float CHW tensor, labels decoded, as in the fixture."""
    expected = {example.key: example for example in examples}
    seen = []
    for sample in samples:
        example = expected[sample["__key__"]]
        image = (sample["image.png"].numpy().transpose(1, 2, 0) * 255).round().astype(numpy.uint8)
        numpy.testing.assert_array_equal(image, rgb(example))
        label = sample["label.cls"] if "label.cls" in sample else tuple(sample["labels.json"])
        assert label == example.label
        seen.append(sample["__key__"])
    assert sorted(seen) == sorted(expected)


@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_handler_dataset_materializes_and_its_shards_read_back_as_the_fixture(
        name: str, static_server: StaticServer, tmp_path: Path, home: Path, instance: DagsterInstance) -> None:
    handler = get_handler(name)
    fixture, catalog, defs = setup(handler, static_server, tmp_path, home)
    assert run(defs, instance, "artifacts", "records", "splits").success

    records = home / DS / "records"
    split = catalog.dataset(DS).split
    metadata = latest_metadata(instance, "records")
    for part, examples in expected_splits(fixture, split.ratio, split.seed).items():
        tars = load_yaml_and_extract_tar_list(records / f"local_{part}_tars.yaml")
        assert_samples_match(read_with_webdataset(tars), examples, handler.features)
        assert_decoded_samples_match(make_shard_dataset(tars), examples)
        indexed = IndexedShardDataset(tars)
        assert_decoded_samples_match((indexed[i] for i in range(len(indexed))), examples)
        assert metadata[f"{part}_examples"] == len(examples)
    assert latest_metadata(instance, "artifacts")["sha256"] == dict(fixture.sha256)
    assert metadata["features"]["label_names"] == list(handler.features.label_names)
    assert (home / DS / "artifacts").is_dir()


def test_records_and_splits_rematerialize_with_the_provider_down(
        static_server: StaticServer, tmp_path: Path, home: Path, instance: DagsterInstance) -> None:
    _, _, defs = setup(get_handler("mnist"), static_server, tmp_path, home)
    assert run(defs, instance, "artifacts").success
    fetched = len(static_server.requests)
    assert fetched == 4
    static_server.stop()

    assert run(defs, instance, "artifacts", "records", "splits").success
    assert run(defs, instance, "records", "splits").success
    artifacts = ("train_images", "train_labels", "test_images", "test_labels")
    assert latest_metadata(instance, "artifacts")["status"] == {name: "kept" for name in artifacts}
    assert latest_metadata(instance, "records")["examples"] == 17
    assert len(static_server.requests) == fetched


def test_a_missing_manual_artifact_fails_the_asset_saying_where_to_put_it(
        tmp_path: Path, home: Path, instance: DagsterInstance) -> None:
    handler = get_handler("plant_pathology_2020")
    fixture = handler.write_fixture(tmp_path / "elsewhere")
    catalog = write_catalog(tmp_path, {DS: handler_dataset(handler, fixture, base_url=None)})
    with pytest.raises(ArtifactFetchError) as raised:
        run(make_defs(catalog, home), instance, "artifacts")
    place = home.resolve() / DS / "artifacts" / "plant-pathology-2020-fgvc7.zip"
    assert f"put the file at {place} (sha256 {fixture.sha256['archive']})" in str(raised.value)

    place.write_bytes((fixture.folder / place.name).read_bytes())
    assert run(make_defs(catalog, home), instance, "artifacts", "records", "splits").success


def test_a_checksum_mismatch_fails_the_artifacts_asset_and_records_cannot_run(
        static_server: StaticServer, tmp_path: Path, home: Path, instance: DagsterInstance) -> None:
    handler = get_handler("coco2017_multilabel")
    fixture = handler.write_fixture(static_server.folder)
    body = handler_dataset(handler, fixture, static_server.base_url)
    body["artifacts"]["val_images"]["sha256"] = "f" * 64
    defs = make_defs(write_catalog(tmp_path, {DS: body}), home, max_attempts=1)
    with pytest.raises(ArtifactFetchError, match=f"artifact 'val_images': downloaded from .*/val2017.zip has sha256 "
                                                 f"{fixture.sha256['val_images']}, expected {'f' * 64}"):
        run(defs, instance, "artifacts")
    with pytest.raises(ArtifactFetchError, match="artifact 'val_images': is missing at .*: materialize raw/artifacts"):
        run(defs, instance, "records")
    assert not (home / DS / "records").exists()


def run_checks(defs: Definitions, instance: DagsterInstance) -> dict[tuple[str, str], bool]:
    """Only the asset checks of `records` and `splits`, against the data as it is on disk now."""
    job = defs.resolve_implicit_global_asset_job_def()
    checks = {AssetCheckKey(key, name) for key, names in ((keys("records")[0], RECORD_CHECKS),
                                                          (keys("splits")[0], SPLIT_CHECKS)) for name in names}
    result = job.get_subset(asset_selection=set(), asset_check_selection=checks).execute_in_process(
        instance=instance, raise_on_error=False)
    return {(e.asset_key.path[-1], e.check_name): e.passed for e in result.get_asset_check_evaluations()}


RECORD_CHECKS = ("sample_count_matches_index", "index_entries_resolve")
SPLIT_CHECKS = ("train_validation_disjoint", "yaml_paths_exist")


def test_record_and_split_checks_pass_then_catch_a_corrupt_record_shard_and_a_leaking_split(
        static_server: StaticServer, tmp_path: Path, home: Path, instance: DagsterInstance) -> None:
    _, _, defs = setup(get_handler("mnist"), static_server, tmp_path, home)
    result = run(defs, instance, "artifacts", "records", "splits")
    assert result.success
    expected = {("records", name): True for name in RECORD_CHECKS} | {("splits", name): True for name in SPLIT_CHECKS}
    assert {(e.asset_key.path[-1], e.check_name): e.passed for e in result.get_asset_check_evaluations()} == expected

    records = home / DS / "records"
    shard = sorted((records / "train").glob("*.tar"))[0]
    corrupted = bytearray(shard.read_bytes())
    corrupted[FIRST_MEMBER_BYTE] ^= 0xFF
    shard.write_bytes(bytes(corrupted))
    (records / "local_validation_tars.yaml").write_bytes((records / "local_train_tars.yaml").read_bytes())

    assert run_checks(defs, instance) == expected | {
        ("records", "index_entries_resolve"): False, ("splits", "train_validation_disjoint"): False}


def test_an_empty_validation_split_passes_the_record_checks_and_the_splits_are_written(
        static_server: StaticServer, tmp_path: Path, home: Path, instance: DagsterInstance) -> None:
    handler = get_handler("plant_pathology_2020")
    fixture = handler.write_fixture(static_server.folder)
    body = handler_dataset(handler, fixture, static_server.base_url) | {"split": {"ratio": 1.0, "seed": 7}}
    defs = make_defs(write_catalog(tmp_path, {DS: body}), home, max_attempts=1)

    result = run(defs, instance, "artifacts", "records", "splits", raise_on_error=False)

    checks = {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}
    counts = checks[("records", "sample_count_matches_index")].metadata["counts"].value
    assert counts["validation"] == {"index_rows": 0, "samples": 0}
    assert counts["train"]["samples"] == len(fixture.examples)
    assert all(evaluation.passed for evaluation in checks.values())
    assert result.success
    splits = latest_metadata(instance, "splits")
    assert (splits["train_examples"], splits["validation_examples"]) == (len(fixture.examples), 0)


def test_rematerializing_records_alone_leaves_split_yamls_that_list_the_new_shards(
        static_server: StaticServer, tmp_path: Path, home: Path, instance: DagsterInstance) -> None:
    handler = get_handler("mnist")
    fixture, catalog, defs = setup(handler, static_server, tmp_path, home)
    assert run(defs, instance, "artifacts", "records", "splits").success
    body = handler_dataset(handler, fixture, static_server.base_url, samples_per_shard=2)
    assert run(make_defs(write_catalog(tmp_path, {DS: body}), home, max_attempts=1), instance, "records").success

    records, split = home / DS / "records", catalog.dataset(DS).split
    for part, examples in expected_splits(fixture, split.ratio, split.seed).items():
        tars = load_yaml_and_extract_tar_list(records / f"local_{part}_tars.yaml")
        assert tars == shard_paths(records, part) and len(tars) == (len(examples) + 1) // 2
        indexed = IndexedShardDataset(tars)
        assert_decoded_samples_match((indexed[i] for i in range(len(indexed))), examples)


def test_the_record_checks_fail_when_a_split_folder_of_the_record_set_is_gone(
        static_server: StaticServer, tmp_path: Path, home: Path, instance: DagsterInstance) -> None:
    _, _, defs = setup(get_handler("mnist"), static_server, tmp_path, home)
    assert run(defs, instance, "artifacts", "records").success
    shutil.rmtree(home / DS / "records" / "validation")

    checks = run_checks(defs, instance)
    assert checks[("records", "sample_count_matches_index")] is False
    assert checks[("records", "index_entries_resolve")] is False
