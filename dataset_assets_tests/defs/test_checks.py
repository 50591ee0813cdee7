"""Shard and split asset checks on real materializations: they pass on good data and fail on bad.

The demo graph is materialized once (one sequence, which the 0.75 split puts in validation) into a
real DagsterInstance; each failure test corrupts a copy of the home folder and runs only the
checks against that copy.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from dagster import AssetCheckEvaluation, AssetCheckKey, AssetKey, DagsterEventType, DagsterInstance, instance_for_test

from dataset_assets.cli import DEMO_URL_ENV
from dataset_assets.core.catalog import PACKAGED_CATALOG, Catalog, load_catalog
from dataset_assets.core.index import ShardIndex, read_index, write_index
from dataset_assets.defs.checks import build_shard_checks
from dataset_assets.defs.materialize import materialize_dataset
from dataset_assets.demo.server import DemoServer
from dataset_assets_tests.defs.conftest import DEMO, make_defs

SEQUENCES = ["seq_000"]
CONFIG = "cubercnn_small"
SHARDS = AssetKey([DEMO, f"shards__{CONFIG}"])
SPLITS = AssetKey([DEMO, f"splits__{CONFIG}"])
SHARD_CHECKS = ("sample_count_matches_index", "index_entries_resolve")
SPLIT_CHECKS = ("train_validation_disjoint", "yaml_paths_exist")


@dataclass(frozen=True)
class Materialized:
    catalog: Catalog
    home: Path
    instance: DagsterInstance
    run_ids: tuple[str, ...]


@pytest.fixture(scope="module")
def materialized(demo_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Materialized]:
    root = tmp_path_factory.mktemp("checks")
    (root / "dagster").mkdir()
    with DemoServer(demo_source) as server, pytest.MonkeyPatch.context() as patch:
        patch.setenv(DEMO_URL_ENV, server.base_url)
        catalog = load_catalog(PACKAGED_CATALOG)
        with instance_for_test(temp_dir=str(root / "dagster")) as instance:
            summary = materialize_dataset(make_defs(catalog, root / "home"), instance, DEMO, partitions=SEQUENCES)
            assert summary.failed_partitions == ()
            yield Materialized(catalog, root / "home", instance, summary.run_ids)


def evaluations(instance: DagsterInstance, run_ids: tuple[str, ...]) -> list[AssetCheckEvaluation]:
    events = [event for run_id in run_ids
              for event in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)]
    return [event.dagster_event.event_specific_data for event in events]


def run_checks(materialized: Materialized, home: Path, key: AssetKey, names: tuple[str, ...],
               partition: str | None = None) -> dict[str, AssetCheckEvaluation]:
    job = make_defs(materialized.catalog, home).resolve_implicit_global_asset_job_def()
    subset = job.get_subset(asset_selection=set(), asset_check_selection={AssetCheckKey(key, n) for n in names})
    result = subset.execute_in_process(instance=materialized.instance, partition_key=partition, raise_on_error=False)
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


@pytest.fixture
def home_copy(materialized: Materialized, tmp_path: Path) -> Path:
    return Path(shutil.copytree(materialized.home, tmp_path / "home"))


def shard_set(home: Path, sequence: str = "seq_000") -> Path:
    return home / DEMO / "shards" / CONFIG / sequence


def test_every_check_is_blocking() -> None:
    catalog = load_catalog(PACKAGED_CATALOG)
    specs = [spec for check in build_shard_checks(catalog.dataset(DEMO)) for spec in check.check_specs]

    assert {spec.name for spec in specs} == set(SHARD_CHECKS + SPLIT_CHECKS)
    assert len(specs) == 4 * len(catalog.dataset(DEMO).preprocess)
    assert all(spec.blocking for spec in specs)


def test_checks_pass_on_freshly_materialized_shards_and_splits(materialized: Materialized) -> None:
    results = evaluations(materialized.instance, materialized.run_ids)

    by_check: dict[tuple[str, str], list[bool]] = {}
    for evaluation in results:
        by_check.setdefault((evaluation.asset_key.path[-1], evaluation.check_name), []).append(evaluation.passed)
    for config in materialized.catalog.dataset(DEMO).preprocess:
        for name in SHARD_CHECKS:
            assert by_check[(f"shards__{config}", name)] == [True] * len(SEQUENCES)
        for name in SPLIT_CHECKS:
            assert by_check[(f"splits__{config}", name)] == [True]


def test_rerunning_checks_on_untouched_data_passes(materialized: Materialized, home_copy: Path) -> None:
    shards = run_checks(materialized, home_copy, SHARDS, SHARD_CHECKS, "seq_000")
    splits = run_checks(materialized, home_copy, SPLITS, SPLIT_CHECKS)

    assert {name: e.passed for name, e in {**shards, **splits}.items()} == dict.fromkeys(SHARD_CHECKS + SPLIT_CHECKS,
                                                                                         True)
    assert shards["sample_count_matches_index"].metadata["counts"].value["seq_000"]["samples"] > 0


def test_flipped_byte_in_a_shard_fails_index_entries_resolve(materialized: Materialized, home_copy: Path) -> None:
    shard = shard_set(home_copy) / "shards-0000.tar"
    data = bytearray(shard.read_bytes())
    data[read_index(shard.parent).entries[1].members[0][1] + 10] ^= 0xFF
    shard.write_bytes(bytes(data))

    results = run_checks(materialized, home_copy, SHARDS, SHARD_CHECKS, "seq_000")

    assert results["sample_count_matches_index"].passed
    assert not results["index_entries_resolve"].passed
    assert "sha256" in results["index_entries_resolve"].description


def test_truncated_shard_fails_both_shard_checks(materialized: Materialized, home_copy: Path) -> None:
    shard = shard_set(home_copy) / "shards-0000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])

    results = run_checks(materialized, home_copy, SHARDS, SHARD_CHECKS, "seq_000")

    assert not results["sample_count_matches_index"].passed
    assert not results["index_entries_resolve"].passed
    assert "truncated" in " ".join(results["index_entries_resolve"].metadata["problems"].value)


def test_index_missing_a_row_fails_sample_count(materialized: Materialized, home_copy: Path) -> None:
    folder = shard_set(home_copy)
    index = read_index(folder)
    write_index(folder, ShardIndex(index.shards, index.entries[:-1], index.blocks))

    results = run_checks(materialized, home_copy, SHARDS, SHARD_CHECKS, "seq_000")

    assert not results["sample_count_matches_index"].passed
    counts = results["sample_count_matches_index"].metadata["counts"].value["seq_000"]
    assert counts["index_rows"] == counts["samples"] - 1


def test_sequence_in_train_and_validation_fails_disjoint(materialized: Materialized, home_copy: Path) -> None:
    folder = home_copy / DEMO / "shards" / CONFIG
    validation = yaml.safe_load((folder / "local_validation_tars.yaml").read_text())
    train_path = folder / "local_train_tars.yaml"
    assert yaml.safe_load(train_path.read_text()) == {"tars": {}}
    train_path.write_text(yaml.dump(validation))

    results = run_checks(materialized, home_copy, SPLITS, SPLIT_CHECKS)

    assert not results["train_validation_disjoint"].passed
    assert "seq_000" in results["train_validation_disjoint"].metadata["in_both"].value
    assert results["yaml_paths_exist"].passed


def test_deleted_shard_fails_yaml_paths_exist(materialized: Materialized, home_copy: Path) -> None:
    missing = shard_set(home_copy) / "shards-0001.tar"
    missing.unlink()

    results = run_checks(materialized, home_copy, SPLITS, SPLIT_CHECKS)

    assert not results["yaml_paths_exist"].passed
    assert str(missing) in results["yaml_paths_exist"].description
    assert results["train_validation_disjoint"].passed


def test_streamable_url_in_train_and_validation_fails_disjoint_without_leaking_its_signed_query(
    materialized: Materialized, home_copy: Path
) -> None:
    folder = home_copy / DEMO / "shards" / CONFIG
    validation = yaml.safe_load((folder / "streamable_validation_tars.yaml").read_text())
    signed = validation["tars"]["seq_000"][0]
    assert "?" in signed
    (folder / "streamable_train_tars.yaml").write_text(yaml.dump({"tars": {"leaked": [signed]}}))

    results = run_checks(materialized, home_copy, SPLITS, SPLIT_CHECKS)

    disjoint = results["train_validation_disjoint"]
    assert not disjoint.passed
    reported = [disjoint.description or "", *disjoint.metadata["in_both"].value]
    assert signed.split("?")[0] + "?<redacted>" in reported
    assert not any(signed.split("?")[1] in text for text in reported)
