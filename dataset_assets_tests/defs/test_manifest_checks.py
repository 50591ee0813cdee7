"""Checks of `url_manifest` and `raw_shards`: they catch a corrupted shard, a missing file, a broken
or expired manifest, and a failing blocking check stops the download."""
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, Definitions, ExecuteInProcessResult
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation

from dataset_assets.core.catalog import Catalog
from dataset_assets.demo.server import DemoServer
from dataset_assets_tests.defs.conftest import DEMO, make_defs
from dataset_assets_tests.defs.test_sensors import MANIFEST, RAW, demo_catalog_at, materialize


def verify(defs: Definitions, instance: DagsterInstance) -> ExecuteInProcessResult:
    return defs.resolve_job_def(f"{DEMO}_verify").execute_in_process(
        instance=instance, raise_on_error=False)


def evaluations(result: ExecuteInProcessResult) -> dict[str, AssetCheckEvaluation]:
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


def test_raw_checks_fail_on_a_corrupted_shard_then_a_missing_file_and_well_formed_on_a_broken_manifest(
    demo_catalog: Catalog, home: Path, instance: DagsterInstance
) -> None:
    defs = make_defs(demo_catalog, home)
    assert materialize(defs, instance, MANIFEST).success
    downloaded = materialize(defs, instance, RAW, "seq_000")
    assert downloaded.success
    assert {name: e.passed for name, e in evaluations(downloaded).items()} == {
        "files_complete": True, "checksums_match": True}
    clean = evaluations(verify(defs, instance))
    assert {name: e.passed for name, e in clean.items()} == {
        "well_formed": True, "links_unexpired": True, "files_complete": True, "checksums_match": True}
    assert clean["files_complete"].metadata["files_verified"].value == 4

    raw = home / DEMO / "raw"
    corrupted = raw / "cubercnn" / "seq_000" / "shards-0000.tar"
    data = bytearray(corrupted.read_bytes())
    data[1000] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    after_corruption = evaluations(verify(defs, instance))
    assert after_corruption["files_complete"].passed
    assert not after_corruption["checksums_match"].passed
    assert after_corruption["checksums_match"].metadata["wrong_sha1"].value == ["cubercnn/seq_000/shards-0000.tar"]

    (raw / "efm" / "seq_000" / "shards-0001.tar").unlink()
    after_removal = evaluations(verify(defs, instance))
    assert not after_removal["files_complete"].passed
    assert after_removal["files_complete"].metadata["missing_or_wrong_size"].value == ["efm/seq_000/shards-0001.tar"]
    assert after_removal["files_complete"].metadata["files_verified"].value == 2

    (home / DEMO / "url_manifest.json").write_text('{"atek_data_for_all_configs": {}}')
    broken = evaluations(verify(defs, instance))
    assert not broken["well_formed"].passed
    assert "atek_data_for_all_configs" in (broken["well_formed"].description or "")


def test_expired_manifest_fails_its_blocking_check_and_nothing_is_downloaded(
    demo_source: Path, home: Path, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    with DemoServer(demo_source, link_ttl_seconds=0) as server:
        defs = make_defs(demo_catalog_at(server, monkeypatch), home)
        instance.add_dynamic_partitions(f"{DEMO}_sequences", ["seq_000"])
        run = defs.resolve_job_def(f"{DEMO}_sequence").execute_in_process(
            instance=instance, partition_key="seq_000", raise_on_error=False)
        assert server.stats.body_bytes_sent() == 0
    assert not run.success
    checks = evaluations(run)
    assert checks["well_formed"].passed and not checks["links_unexpired"].passed
    assert checks["links_unexpired"].metadata["seconds_left"].value <= 0
    materialized = {event.asset_key for event in run.get_asset_materialization_events()}
    assert materialized == {MANIFEST}
    assert not (home / DEMO / "raw").exists()
    assert instance.fetch_materializations(AssetKey([DEMO, "raw_shards"]), limit=1).records == []


def test_downloading_before_any_manifest_is_saved_fails_saying_to_materialize_url_manifest_first(
    demo_catalog: Catalog, home: Path, instance: DagsterInstance
) -> None:
    defs = make_defs(demo_catalog, home)
    instance.add_dynamic_partitions(f"{DEMO}_sequences", ["seq_000"])

    downloaded = materialize(defs, instance, RAW, "seq_000")
    unchecked = evaluations(verify(defs, instance))

    assert not downloaded.success
    [failure] = [event.step_failure_data.error for event in downloaded.all_events
                 if event.event_type_value == "STEP_FAILURE"]
    assert failure is not None and failure.cause is not None
    assert failure.cause.cls_name == "DatasetAssetsError"
    assert "url_manifest.json does not exist: materialize the dataset's url_manifest first" in failure.cause.message
    assert not unchecked["well_formed"].passed
    assert "materialize the dataset's url_manifest first" in (unchecked["well_formed"].description or "")


def test_a_sequence_the_saved_manifest_does_not_publish_fails_raw_shards_instead_of_materializing_no_files(
    demo_catalog: Catalog, home: Path, instance: DagsterInstance
) -> None:
    defs = make_defs(demo_catalog, home)
    assert materialize(defs, instance, MANIFEST).success
    instance.add_dynamic_partitions(f"{DEMO}_sequences", ["seq_999"])  # registered once, withdrawn since

    downloaded = materialize(defs, instance, RAW, "seq_999")

    assert not downloaded.success
    assert instance.fetch_materializations(RAW, limit=1).records == []
    [failure] = [event.step_failure_data.error for event in downloaded.all_events
                 if event.event_type_value == "STEP_FAILURE"]
    assert failure is not None and failure.cause is not None
    assert "atek_data_for_all_configs.cubercnn.wds_file_urls.seq_999" in failure.cause.message
    assert "is not published" in failure.cause.message
