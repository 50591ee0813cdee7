"""What shard and split materializations record: counts, bytes, index, config hash, preview, lineage."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from dagster import AssetKey, DagsterInstance, MarkdownMetadataValue, PathMetadataValue

from dataset_assets.core.catalog import Catalog
from dataset_assets.core.index import read_index
from dataset_assets.core.shards import count_samples
from dataset_assets.defs.materialize import materialize_dataset
from dataset_assets_tests.defs.conftest import DEMO, make_defs

CONFIG = "cubercnn_small"


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
