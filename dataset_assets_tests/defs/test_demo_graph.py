"""The whole demo graph materialized into a real DagsterInstance, read back with `webdataset`."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import webdataset as wds
import yaml
from dagster import AssetKey, DagsterInstance
from PIL import Image

from dataset_assets.core.catalog import Catalog
from dataset_assets.core.loading import load_yaml_and_extract_tar_list
from dataset_assets.core.manifest import load_manifest_file
from dataset_assets.defs.materialize import materialize_dataset
from dataset_assets.demo.server import DemoServer
from dataset_assets_tests.defs.conftest import DEMO, make_defs


def latest_metadata(instance: DagsterInstance, key: AssetKey, partition: str | None = None) -> dict:
    event = instance.get_latest_materialization_event(key) if partition is None else None
    if partition is not None:
        records = instance.fetch_materializations(key, limit=100).records
        event = next(r.event_log_entry for r in records if r.partition_key == partition)
    assert event is not None and event.asset_materialization is not None
    return {name: value.value for name, value in event.asset_materialization.metadata.items()}


def read_with_webdataset(paths: list[str]) -> list[dict]:
    return list(wds.WebDataset(paths, shardshuffle=False, empty_check=False))


def test_full_demo_graph_materializes_and_shards_read_back(demo_catalog: Catalog, home: Path,
                                                           instance: DagsterInstance) -> None:
    defs = make_defs(demo_catalog, home)
    summary = materialize_dataset(defs, instance, DEMO)

    manifest = load_manifest_file(home / DEMO / "url_manifest.json")
    sequences = manifest.all_sequences()
    assert len(sequences) >= 6
    assert summary.failed_partitions == ()
    assert sorted(instance.get_dynamic_partitions(f"{DEMO}_sequences")) == sequences

    for entry in manifest.all_entries():
        raw = home / DEMO / "raw" / entry.config / entry.relative_path
        assert hashlib.sha1(raw.read_bytes()).hexdigest() == entry.sha1
        assert raw.stat().st_size == entry.size

    for config in demo_catalog.dataset(DEMO).preprocess.values():
        shards_key = AssetKey([DEMO, f"shards__{config.name}"])
        for sequence in sequences:
            raw_paths = [str(home / DEMO / "raw" / config.source_config / e.relative_path)
                         for e in manifest.entries(config.source_config, sequence)]
            folder = home / DEMO / "shards" / config.name / sequence
            shard_paths = sorted(str(p) for p in folder.glob("*.tar"))
            metadata = latest_metadata(instance, shards_key, sequence)
            samples = read_with_webdataset(shard_paths)
            assert len(samples) == metadata["sample_count"] == len(read_with_webdataset(raw_paths))
            assert sum(Path(p).stat().st_size for p in shard_paths) == metadata["bytes"]
            assert metadata["config_hash"] == config.hash
            lineage = json.loads((folder / "_lineage.json").read_text())
            assert lineage["config_hash"] == config.hash and lineage["source"]["sequence"] == sequence
            first = samples[0]
            image_ext = "jpg" if config.image_format == "jpeg" else "png"
            image = Image.open(io.BytesIO(first[image_ext]))
            expected_size = config.image_size or (config.crop[2] - config.crop[0], config.crop[3] - config.crop[1])
            assert image.size == tuple(expected_size)
            if config.tensor_dtype:
                assert np.load(io.BytesIO(first["npy"]), allow_pickle=False).dtype == np.dtype(config.tensor_dtype)
            if config.keep:
                assert {k for k in first if not k.startswith("__")} == set(config.keep)

        split_meta = latest_metadata(instance, AssetKey([DEMO, f"splits__{config.name}"]))
        shard_set = home / DEMO / "shards" / config.name
        train = yaml.safe_load((shard_set / "local_train_tars.yaml").read_text())["tars"]
        validation = yaml.safe_load((shard_set / "local_validation_tars.yaml").read_text())["tars"]
        everything = yaml.safe_load((shard_set / "local_all_tars.yaml").read_text())["tars"]
        assert set(train).isdisjoint(validation)
        assert set(train) | set(validation) == set(everything) == set(sequences)
        assert split_meta["train_sequences"] == len(train) == int(len(sequences) * 0.75)
        tar_list = load_yaml_and_extract_tar_list(shard_set / "local_train_tars.yaml")
        assert all(Path(path).is_absolute() and Path(path).exists() for path in tar_list)
        assert split_meta["train_samples"] == len(read_with_webdataset(tar_list))
        streamable = yaml.safe_load((shard_set / "streamable_all_tars.yaml").read_text())["tars"]
        assert set(streamable) == set(sequences)
        assert all(url.startswith("http://127.0.0.1:") for urls in streamable.values() for url in urls)
        assert "?" not in (shard_set / "local_all_tars.yaml").read_text()


def test_rematerializing_skips_verified_files(
    demo_catalog: Catalog, home: Path, instance: DagsterInstance, demo_server: DemoServer
) -> None:
    defs = make_defs(demo_catalog, home)
    materialize_dataset(defs, instance, DEMO)
    demo_server.stats.reset()
    materialize_dataset(defs, instance, DEMO)
    assert demo_server.stats.body_bytes_sent("/files/") == 0
    metadata = latest_metadata(instance, AssetKey([DEMO, "raw_shards"]), "seq_000")
    assert metadata["skipped"] == metadata["files"] > 0
