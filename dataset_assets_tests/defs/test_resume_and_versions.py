"""Interrupted downloads resume from verified bytes; config changes make shard assets stale."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, instance_for_test
from dagster._core.definitions.data_version import DATA_VERSION_TAG, StaleStatus
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster._utils.test.data_versions import get_stale_status_resolver

from dataset_assets.cli import DEMO_URL_ENV
from dataset_assets.core.catalog import PACKAGED_CATALOG, Catalog, load_catalog
from dataset_assets.core.manifest import load_manifest_file
from dataset_assets.defs.materialize import materialize_dataset
from dataset_assets.demo.server import DemoServer
from dataset_assets_tests.defs.conftest import DEMO, make_defs

RAW = AssetKey([DEMO, "raw_shards"])
MANIFEST = AssetKey([DEMO, "url_manifest"])


def test_rematerialization_after_dropped_connection_fetches_only_missing_range(
    demo_catalog: Catalog, home: Path, instance: DagsterInstance, demo_server: DemoServer
) -> None:
    defs = make_defs(demo_catalog, home, max_attempts=1)
    job = defs.resolve_implicit_global_asset_job_def()
    job.execute_in_process(instance=instance, asset_selection=[MANIFEST])
    target = load_manifest_file(home / DEMO / "url_manifest.json").entries("cubercnn", "seq_000")[0]
    url_path = f"/files/cubercnn/{target.relative_path}"
    cut = target.size // 3
    demo_server.faults.drop_after_bytes(cut, times=1, path_contains=url_path)

    first = job.execute_in_process(instance=instance, asset_selection=[RAW], partition_key="seq_000",
                                   raise_on_error=False)
    assert not first.success
    part = home / DEMO / "raw" / "cubercnn" / f"{target.relative_path}.part"
    assert part.stat().st_size == cut
    assert not (home / DEMO / "raw" / "cubercnn" / target.relative_path).exists()

    demo_server.stats.reset()
    second = job.execute_in_process(instance=instance, asset_selection=[RAW], partition_key="seq_000")
    assert second.success
    assert demo_server.stats.body_bytes_sent() == target.size - cut
    ranged = [r for r in demo_server.stats.requests if r.path == url_path]
    assert [r.range_header for r in ranged] == [f"bytes={cut}-"]
    final = home / DEMO / "raw" / "cubercnn" / target.relative_path
    assert hashlib.sha1(final.read_bytes()).hexdigest() == target.sha1
    assert not part.exists()


def _with_quality(catalog: Catalog, config_name: str, quality: int) -> Catalog:
    spec = catalog.dataset(DEMO)
    changed = dataclasses.replace(spec.preprocess[config_name], image_quality=quality)
    preprocess = {**spec.preprocess, config_name: changed}
    return dataclasses.replace(catalog, datasets={DEMO: dataclasses.replace(spec, preprocess=preprocess)})


def test_changed_config_changes_code_version_and_makes_only_its_shards_stale(
    demo_catalog: Catalog, home: Path, instance: DagsterInstance
) -> None:
    defs = make_defs(demo_catalog, home)
    materialize_dataset(defs, instance, DEMO, partitions=["seq_000"])
    small, png = AssetKey([DEMO, "shards__cubercnn_small"]), AssetKey([DEMO, "shards__efm_png"])

    same_defs = make_defs(demo_catalog, home)
    changed_defs = make_defs(_with_quality(demo_catalog, "cubercnn_small", 55), home)
    original, same, changed = ({k: d.resolve_assets_def(k).code_versions_by_key[k] for k in (small, png)}
                               for d in (defs, same_defs, changed_defs))
    assert same == original
    assert changed[small] != original[small]
    assert changed[png] == original[png]

    unchanged = get_stale_status_resolver(instance, list(same_defs.resolve_asset_graph().assets_defs))
    assert unchanged.get_status(small, "seq_000") == StaleStatus.FRESH
    stale = get_stale_status_resolver(instance, list(changed_defs.resolve_asset_graph().assets_defs))
    assert stale.get_status(small, "seq_000") == StaleStatus.STALE
    assert stale.get_status(png, "seq_000") == StaleStatus.FRESH


def test_lineage_names_each_sequences_own_raw_version_after_one_run_downloads_a_range(
    demo_catalog: Catalog, home: Path, instance: DagsterInstance, tmp_path: Path
) -> None:
    """Dagster stamps one data version on every partition of a range run (dagster-io/dagster#18649);
    a shard set's lineage must still name the version of its own sequence's raw files."""
    defs = make_defs(demo_catalog, home)
    job = defs.resolve_implicit_global_asset_job_def()
    job.execute_in_process(instance=instance, asset_selection=[MANIFEST])
    job.execute_in_process(instance=instance, asset_selection=[RAW], tags={
        ASSET_PARTITION_RANGE_START_TAG: "seq_000", ASSET_PARTITION_RANGE_END_TAG: "seq_001"})
    shards = AssetKey([DEMO, "shards__cubercnn_small"])
    for sequence in ("seq_000", "seq_001"):
        job.execute_in_process(instance=instance, asset_selection=[shards], partition_key=sequence)
    alone_home, alone_dagster = tmp_path / "alone", tmp_path / "alone_dagster"
    alone_dagster.mkdir()
    with instance_for_test(temp_dir=str(alone_dagster)) as alone:
        materialize_dataset(make_defs(demo_catalog, alone_home), alone, DEMO, partitions=["seq_000", "seq_001"])

    def lineage(root: Path, sequence: str) -> dict[str, object]:
        path = root / DEMO / "shards" / "cubercnn_small" / sequence / "_lineage.json"
        return json.loads(path.read_text())["source"]

    ranged = [lineage(home, sequence)["raw_data_version"] for sequence in ("seq_000", "seq_001")]
    alone_versions = [lineage(alone_home, sequence)["raw_data_version"] for sequence in ("seq_000", "seq_001")]
    assert ranged == alone_versions and ranged[0] != ranged[1]


def test_changed_split_settings_make_the_split_manifests_stale_and_nothing_else(
    demo_catalog: Catalog, home: Path, instance: DagsterInstance
) -> None:
    materialize_dataset(make_defs(demo_catalog, home), instance, DEMO, partitions=["seq_000"])
    spec = demo_catalog.dataset(DEMO)
    reseeded = dataclasses.replace(demo_catalog, datasets={
        DEMO: dataclasses.replace(spec, split=dataclasses.replace(spec.split, seed=spec.split.seed + 1))})
    splits = [AssetKey([DEMO, f"splits__{config}"]) for config in spec.preprocess]
    shards = [AssetKey([DEMO, f"shards__{config}"]) for config in spec.preprocess]

    same = get_stale_status_resolver(instance, list(make_defs(demo_catalog, home).resolve_asset_graph().assets_defs))
    assert [same.get_status(key) for key in splits] == [StaleStatus.FRESH] * len(splits)
    changed = get_stale_status_resolver(instance, list(make_defs(reseeded, home).resolve_asset_graph().assets_defs))
    assert [changed.get_status(key) for key in splits] == [StaleStatus.STALE] * len(splits)
    assert [changed.get_status(key, "seq_000") for key in shards] == [StaleStatus.FRESH] * len(shards)


def manifest_data_version(instance: DagsterInstance) -> str | None:
    event = instance.get_latest_materialization_event(MANIFEST)
    assert event is not None and event.asset_materialization is not None
    return event.asset_materialization.tags.get(DATA_VERSION_TAG)


def grow(file: Path) -> None:
    with open(file, "ab") as handle:
        handle.write(b"\0" * 512)


def test_url_manifest_data_version_follows_only_the_raw_configs_the_dataset_uses(
    demo_source: Path, home: Path, instance: DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = Path(shutil.copytree(demo_source, tmp_path / "source"))
    shutil.copytree(source / "efm", source / "unused")  # published, but no preprocess config reads it
    with DemoServer(source) as server:
        monkeypatch.setenv(DEMO_URL_ENV, server.base_url)
        defs = make_defs(load_catalog(PACKAGED_CATALOG), home)
        job = defs.resolve_implicit_global_asset_job_def()
        job.execute_in_process(instance=instance, asset_selection=[MANIFEST])
        job.execute_in_process(instance=instance, asset_selection=[RAW], partition_key="seq_000")
        first = manifest_data_version(instance)

        grow(source / "unused" / "seq_000" / "shards-0000.tar")
        job.execute_in_process(instance=instance, asset_selection=[MANIFEST])
        unrelated = manifest_data_version(instance)
        after_unrelated = get_stale_status_resolver(instance, list(defs.resolve_asset_graph().assets_defs))
        assert after_unrelated.get_status(RAW, "seq_000") == StaleStatus.FRESH

        grow(source / "cubercnn" / "seq_000" / "shards-0000.tar")
        job.execute_in_process(instance=instance, asset_selection=[MANIFEST])
        used = manifest_data_version(instance)
        after_used = get_stale_status_resolver(instance, list(defs.resolve_asset_graph().assets_defs))

    assert len(instance.fetch_materializations(MANIFEST, limit=10).records) == 3
    assert first is not None and unrelated == first
    assert used != first
    assert after_used.get_status(RAW, "seq_000") == StaleStatus.STALE
