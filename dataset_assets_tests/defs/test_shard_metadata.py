"""What shard and split materializations record: counts, bytes, index, config hash, preview, lineage."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, Definitions, MarkdownMetadataValue, PathMetadataValue

from dataset_assets.cli import DEMO_URL_ENV
from dataset_assets.core.catalog import PACKAGED_CATALOG, Catalog, load_catalog
from dataset_assets.core.index import read_index
from dataset_assets.core.manifest import load_manifest_file
from dataset_assets.core.shards import count_samples
from dataset_assets.core.storage import FileDigest, digest_file
from dataset_assets.defs.materialize import materialize_dataset
from dataset_assets.demo.server import DemoServer
from dataset_assets_tests.defs.conftest import DEMO, make_defs

CONFIG = "cubercnn_small"
MANIFEST = AssetKey([DEMO, "url_manifest"])
RAW = AssetKey([DEMO, "raw_shards"])


def latest_metadata(instance: DagsterInstance, key: AssetKey) -> dict[str, object]:
    event = instance.get_latest_materialization_event(key)
    assert event is not None and event.asset_materialization is not None
    return dict(event.asset_materialization.metadata)


def test_shard_and_split_materializations_record_counts_index_hash_and_preview(
    demo_catalog: Catalog, home: Path, instance: DagsterInstance
) -> None:
    materialize_dataset(make_defs(demo_catalog, home), instance, DEMO, partitions=["seq_000"])
    config = demo_catalog.dataset(DEMO).preprocess[CONFIG]
    folder = home / DEMO / "shards" / CONFIG / "seq_000"
    shards = sorted(folder.glob("*.tar"))

    metadata = latest_metadata(instance, AssetKey([DEMO, f"shards__{CONFIG}"]))
    samples = sum(count_samples(shard) for shard in shards)
    assert metadata["sample_count"].value == samples == len(read_index(folder))
    assert metadata["bytes"].value == sum(shard.stat().st_size for shard in shards)
    assert metadata["shard_count"].value == len(shards) > 1
    assert metadata["config_hash"].value == config.hash
    assert isinstance(metadata["index_path"], PathMetadataValue)
    assert Path(metadata["index_path"].value) == folder / "_index.json"
    preview = metadata["preview"]
    assert isinstance(preview, MarkdownMetadataValue)
    header, _, first, *_ = preview.value.splitlines()
    assert header == "| key | jpg | json | npy |"
    assert first == "| seq_000_f0000 | JPEG 48x36 RGB | object, 4 keys | float16 [4, 4] |"

    lineage = json.loads((folder / "_lineage.json").read_text())
    assert lineage["source"]["sequence"] == "seq_000" and lineage["source"]["raw_data_version"]
    assert len(lineage["inputs"]) == len(lineage["source"]["raw_files"]) and lineage["created_at"]

    splits = latest_metadata(instance, AssetKey([DEMO, f"splits__{CONFIG}"]))
    counts = {name: splits[name].value for name in (
        "train_sequences", "validation_sequences", "all_sequences", "train_samples", "validation_samples",
        "all_samples")}
    assert counts == {"train_sequences": 0, "validation_sequences": 1, "all_sequences": 1,
                      "train_samples": 0, "validation_samples": samples, "all_samples": samples}


def test_different_config_gives_different_hash_and_code_version(demo_catalog: Catalog, home: Path) -> None:
    spec = demo_catalog.dataset(DEMO)
    changed = dataclasses.replace(spec.preprocess[CONFIG], image_size=(24, 18))
    other = dataclasses.replace(demo_catalog, datasets={
        DEMO: dataclasses.replace(spec, preprocess={**spec.preprocess, CONFIG: changed})})
    key = AssetKey([DEMO, f"shards__{CONFIG}"])

    versions = [make_defs(catalog, home).resolve_assets_def(key).code_versions_by_key[key]
                for catalog in (demo_catalog, other)]

    assert changed.hash != spec.preprocess[CONFIG].hash
    assert versions == [spec.preprocess[CONFIG].hash, changed.hash]


@pytest.fixture
def source(tmp_path: Path, demo_source: Path) -> Path:
    """A private copy of the demo source that a test may change."""
    return Path(shutil.copytree(demo_source, tmp_path / "source"))


def downloaded_then_republished(source: Path, home: Path, instance: DagsterInstance,
                                monkeypatch: pytest.MonkeyPatch) -> Definitions:
    """Download seq_000, then publish different bytes for one of its files and one file more, and save that
    manifest: what `shards__<config>` meets before the sensor has run `raw_shards` again."""
    with DemoServer(source) as server:
        monkeypatch.setenv(DEMO_URL_ENV, server.base_url)
        defs = make_defs(load_catalog(PACKAGED_CATALOG), home)
        job = defs.resolve_implicit_global_asset_job_def()
        assert job.execute_in_process(instance=instance, asset_selection=[MANIFEST]).success
        assert job.execute_in_process(instance=instance, asset_selection=[RAW], partition_key="seq_000").success
        with open(source / "cubercnn" / "seq_000" / "shards-0000.tar", "ab") as republished:
            republished.write(b"\0" * 512)
        shutil.copy(source / "cubercnn" / "seq_001" / "shards-0000.tar", source / "cubercnn" / "seq_000" / "x.tar")
        assert job.execute_in_process(instance=instance, asset_selection=[MANIFEST]).success
    return defs


def file_digests(folder: Path) -> dict[str, FileDigest]:
    return {path.name: digest_file(path) for path in sorted(folder.glob("*.tar"))}


def test_lineage_records_the_digests_of_the_raw_files_read_not_those_of_a_manifest_changed_since(
    source: Path, home: Path, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    defs = downloaded_then_republished(source, home, instance, monkeypatch)
    shards = AssetKey([DEMO, f"shards__{CONFIG}"])

    run = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[shards], partition_key="seq_000")

    assert run.success
    on_disk = file_digests(home / DEMO / "raw" / "cubercnn" / "seq_000")
    manifest = load_manifest_file(home / DEMO / "url_manifest.json").entries("cubercnn", "seq_000")
    assert {entry.filename: entry.sha1 for entry in manifest} != {name: d.sha1 for name, d in on_disk.items()}
    lineage = json.loads((home / DEMO / "shards" / CONFIG / "seq_000" / "_lineage.json").read_text())
    raw_files = {f"seq_000/{name}": digest.sha1 for name, digest in on_disk.items()}
    assert lineage["source"]["raw_files"] == raw_files
    assert lineage["inputs"] == [{"name": name, "bytes": digest.size, "sha1": digest.sha1, "sha256": digest.sha256}
                                 for name, digest in on_disk.items()]
    assert latest_metadata(instance, shards)["source"].value == lineage["source"]


def test_shards_refuse_raw_files_that_changed_on_disk_since_raw_shards_verified_them(
    demo_catalog: Catalog, home: Path, instance: DagsterInstance
) -> None:
    defs = make_defs(demo_catalog, home)
    materialize_dataset(defs, instance, DEMO, partitions=["seq_000"])
    shard_set = home / DEMO / "shards" / CONFIG / "seq_000"
    published = {path.name: path.read_bytes() for path in shard_set.iterdir()}
    raw = home / DEMO / "raw" / "cubercnn" / "seq_000" / "shards-0000.tar"
    raw.write_bytes(raw.read_bytes()[:-512] + b"\1" * 512)

    run = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[AssetKey([DEMO, f"shards__{CONFIG}"])], partition_key="seq_000",
        raise_on_error=False)

    assert not run.success
    failure = run.get_step_failure_events()[0].step_failure_data.error
    assert failure is not None and f"{raw}" in failure.message and "re-materialize" in failure.message
    assert {path.name: path.read_bytes() for path in shard_set.iterdir()} == published
