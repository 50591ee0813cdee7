"""kill -9 of a Dagster run process mid-download, mid-preprocess and mid-split-write.

Each test materializes with `dagster asset materialize` in a subprocess against the test's real
sqlite instance and dataset home, waits for evidence that the run is inside the stage (a `.part`
holding bytes, a staging folder holding an open shard, a half-written YAML `.part`), SIGKILLs the
process group it started, then re-materializes in-process, which must also remove the staging
folder or `.part` the killed run left behind. An `OutputReader` thread reads every
file at a final path the whole time; no version it saw may be partial or differ from what the
stage publishes. Downloads are slowed by the demo server's trickle fault; preprocessing and split
writing by the delay wrapper in `crash_helpers` (fault injection around the real functions).
"""
from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import yaml
from dagster import AssetKey, DagsterInstance, DagsterRunStatus

from dataset_assets.core.catalog import Catalog
from dataset_assets.core.index import INDEX_FILE
from dataset_assets.core.manifest import load_manifest_file
from dataset_assets.core.preprocess import LINEAGE_FILE
from dataset_assets.core.shards import verify_shard_set
from dataset_assets.core.tar_lists import split_overlap
from dataset_assets.demo.server import DemoServer
from dataset_assets_tests.defs import conftest as defs_conftest
from dataset_assets_tests.defs.conftest import DEMO, make_defs
from dataset_assets_tests.reliability.crash_helpers import (
    OutputReader,
    RunProcess,
    dagster_env,
    sha256_of,
    size_or_zero,
)

instance = defs_conftest.instance
home = defs_conftest.home
demo_catalog = defs_conftest.demo_catalog

MANIFEST = AssetKey([DEMO, "url_manifest"])
RAW = AssetKey([DEMO, "raw_shards"])
CONFIG = "cubercnn_small"
SHARDS = AssetKey([DEMO, f"shards__{CONFIG}"])
SPLITS = AssetKey([DEMO, f"splits__{CONFIG}"])
YAMLS = [f"{kind}_{part}_tars.yaml" for kind in ("local", "streamable") for part in ("train", "validation", "all")]


def run_ids(instance: DagsterInstance) -> set[str]:
    return {run.run_id for run in instance.get_runs()}


def assert_killed_run_recorded_as_started(instance: DagsterInstance, known: set[str]) -> None:
    """The subprocess was a Dagster run of this instance, killed mid-step: it never reported an end."""
    [killed] = [run for run in instance.get_runs() if run.run_id not in known]
    assert killed.status == DagsterRunStatus.STARTED


def assert_only_final_versions_seen(reader: OutputReader, finals: dict[Path, set[str]]) -> None:
    """The reader found no partial file, and every version it read is one the stage publishes."""
    assert reader.problems == []
    unexpected = {path: seen - finals.get(path, set()) for path, seen in reader.seen.items()}
    assert {path: seen for path, seen in unexpected.items() if seen} == {}


def test_kill_9_mid_download_then_rematerialization_fetches_only_missing_bytes_and_no_partial_tar_is_visible(
    demo_catalog: Catalog, home: Path, instance: DagsterInstance, demo_server: DemoServer, tmp_path: Path
) -> None:
    sequence = "seq_001"
    run = RunProcess(f"{DEMO}/raw_shards", dagster_env(Path(instance.root_directory), home, demo_server),
                     tmp_path / "run.log", partition=sequence)
    job = make_defs(demo_catalog, home).resolve_implicit_global_asset_job_def()
    job.execute_in_process(instance=instance, asset_selection=[MANIFEST])
    manifest = load_manifest_file(home / DEMO / "url_manifest.json")
    raw = home / DEMO / "raw"
    fast = [raw / "cubercnn" / entry.relative_path for entry in manifest.entries("cubercnn", sequence)]
    slow = {raw / "efm" / entry.relative_path: entry for entry in manifest.entries("efm", sequence)}
    parts = [path.with_name(path.name + ".part") for path in slow]
    demo_server.faults.trickle(8_000, path_contains=f"/files/efm/{sequence}/")
    known = run_ids(instance)

    with OutputReader([raw]) as reader, run:
        run.go()
        run.wait_for(lambda: set(fast) <= reader.paths() and all(size_or_zero(part) > 0 for part in parts),
                     "published cubercnn shards and efm .part bytes")
        assert run.kill() == -signal.SIGKILL
        held = {path: path.with_name(path.name + ".part").stat().st_size for path in slow}
        assert_killed_run_recorded_as_started(instance, known)
        assert not any(path.exists() for path in slow)

        demo_server.faults.clear()
        demo_server.stats.reset()
        assert job.execute_in_process(instance=instance, asset_selection=[RAW], partition_key=sequence).success

    assert demo_server.stats.body_bytes_sent() == sum(entry.size or 0 for entry in slow.values()) - sum(held.values())
    ranges = sorted(r.range_header or "" for r in demo_server.stats.requests if r.path.startswith("/files/"))
    assert ranges == sorted(f"bytes={size}-" for size in held.values())
    entries = {raw / entry.config / entry.relative_path: entry
               for config in ("cubercnn", "efm") for entry in manifest.entries(config, sequence)}
    for path, entry in entries.items():
        assert hashlib.sha1(path.read_bytes()).hexdigest() == entry.sha1
    for config in ("cubercnn", "efm"):
        assert sorted(p.name for p in (raw / config / sequence).iterdir()) == ["shards-0000.tar", "shards-0001.tar"]
    assert set(reader.seen) == set(entries)
    assert_only_final_versions_seen(reader, {path: {sha256_of(path)} for path in entries})
    print(f"kill -9 mid-download: 1 run process; {reader.summary()}")


def test_kill_9_mid_preprocess_keeps_the_published_shard_set_whole_and_rematerialization_reuses_raw_bytes(
    demo_catalog: Catalog, home: Path, instance: DagsterInstance, demo_server: DemoServer, tmp_path: Path
) -> None:
    sequence = "seq_002"
    run = RunProcess(f"{DEMO}/shards__{CONFIG}", dagster_env(Path(instance.root_directory), home, demo_server),
                     tmp_path / "run.log", partition=sequence, slow=("preprocess", 0.3))
    job = make_defs(demo_catalog, home).resolve_implicit_global_asset_job_def()
    job.execute_in_process(instance=instance, asset_selection=[MANIFEST])
    job.execute_in_process(instance=instance, asset_selection=[RAW, SHARDS], partition_key=sequence)
    shard_sets = home / DEMO / "shards"
    folder = shard_sets / CONFIG / sequence
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    demo_server.stats.reset()
    known = run_ids(instance)

    with OutputReader([shard_sets]) as reader, run:
        run.go()
        run.wait_for(lambda: any(folder.parent.glob(f".{sequence}.*.staging/shards-0000.tar")),
                     "a shard open in the staging folder")
        assert run.kill() == -signal.SIGKILL
        assert_killed_run_recorded_as_started(instance, known)
        [staging] = folder.parent.glob(f".{sequence}.*.staging")
        assert (staging / "shards-0000.tar").exists() and not (staging / INDEX_FILE).exists()
        assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
        assert verify_shard_set(folder).problems == ()

        assert job.execute_in_process(instance=instance, asset_selection=[SHARDS], partition_key=sequence).success
        assert not staging.exists(), "the killed run's staging folder outlived the next publish"

    after = {path.name: path.read_bytes() for path in folder.iterdir()}
    assert {name: data for name, data in after.items() if name != LINEAGE_FILE} == {
        name: data for name, data in before.items() if name != LINEAGE_FILE}
    assert verify_shard_set(folder).problems == ()
    assert demo_server.stats.body_bytes_sent() == 0
    published = {folder / name for name in after}
    assert published <= set(reader.seen)
    finals = {path: {sha256_of(path)} for path in published}
    finals[folder / LINEAGE_FILE].add(hashlib.sha256(before[LINEAGE_FILE]).hexdigest())
    assert_only_final_versions_seen(reader, finals)
    print(f"kill -9 mid-preprocess: 1 run process; {reader.summary()}")


def test_kill_9_mid_split_write_leaves_whole_disjoint_split_yamls_and_rematerialization_writes_the_new_split(
    demo_catalog: Catalog, home: Path, instance: DagsterInstance, demo_server: DemoServer, tmp_path: Path
) -> None:
    run = RunProcess(f"{DEMO}/splits__{CONFIG}", dagster_env(Path(instance.root_directory), home, demo_server),
                     tmp_path / "run.log", slow=("split-write", 1.0))
    job = make_defs(demo_catalog, home).resolve_implicit_global_asset_job_def()
    job.execute_in_process(instance=instance, asset_selection=[MANIFEST])
    for sequence in ("seq_000", "seq_001"):
        job.execute_in_process(instance=instance, asset_selection=[RAW, SHARDS], partition_key=sequence)
    job.execute_in_process(instance=instance, asset_selection=[SPLITS])
    job.execute_in_process(instance=instance, asset_selection=[RAW, SHARDS], partition_key="seq_002")
    shard_set = home / DEMO / "shards" / CONFIG
    old = {name: sha256_of(shard_set / name) for name in YAMLS}
    known = run_ids(instance)

    with OutputReader([shard_set]) as reader, run:
        run.go()
        # The part exists from when `atomic_file` creates it; its first half lands a moment later.
        half_written = ".local_validation_tars.yaml.*.part"
        run.wait_for(lambda: any(size_or_zero(part) > 0 for part in shard_set.glob(half_written)),
                     "local_validation_tars.yaml half-written in its .part")
        assert run.kill() == -signal.SIGKILL
        assert_killed_run_recorded_as_started(instance, known)
        [half] = shard_set.glob(half_written)
        assert half.stat().st_size > 0
        assert split_overlap(shard_set / "local_train_tars.yaml", shard_set / "local_validation_tars.yaml") == []

        assert job.execute_in_process(instance=instance, asset_selection=[SPLITS]).success
        assert not half.exists(), "the killed run's YAML .part outlived the next write"

    new = {name: sha256_of(shard_set / name) for name in YAMLS}
    assert set(yaml.safe_load((shard_set / "local_all_tars.yaml").read_text())["tars"]) == {
        "seq_000", "seq_001", "seq_002"}
    assert {shard_set / name for name in YAMLS} <= set(reader.seen)
    # all_ YAMLs are written once, old or new; train/validation may also pass through a shrunk version
    # (see core.splits.write_split_yamls), each whole, which the reader checks.
    assert_only_final_versions_seen(reader, {shard_set / name: {old[name], new[name]} for name in YAMLS
                                             if "_all_" in name} | {
        shard_set / name: reader.seen.get(shard_set / name, set()) for name in YAMLS if "_all_" not in name} | {
        path: {sha256_of(path)} for path in reader.seen if path.suffix != ".yaml"})
    print(f"kill -9 mid-split-write: 1 run process; {reader.summary()}")
