"""Two runs materializing the same partition at once: neither corrupts it, and the bytes are fetched once.

Raw files are guarded by a per-file lock (`core.storage`): the run that takes it downloads into
the `.part`, the other waits and then finds the verified file and skips it. Shard sets are
folders swapped in under a per-folder lock, so two publishers of one set both succeed, last wins.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, DagsterInstance

from dataset_assets.core.catalog import Catalog
from dataset_assets.core.manifest import load_manifest_file
from dataset_assets.core.shards import verify_shard_set
from dataset_assets.demo.server import DemoServer
from dataset_assets_tests.defs import conftest as defs_conftest
from dataset_assets_tests.defs.conftest import DEMO, make_defs
from dataset_assets_tests.reliability.crash_helpers import PROJECT, OutputReader, RunProcess, dagster_env, sha256_of

instance = defs_conftest.instance
home = defs_conftest.home
demo_catalog = defs_conftest.demo_catalog

SEQUENCE = "seq_003"
CONFIG = "cubercnn_small"
RAW = AssetKey([DEMO, "raw_shards"])
RAW_STEP = f"{DEMO}__raw_shards"
# Publishes the shard-set folder `argv[1]` `argv[3]` times, each a pair of files tagged `argv[2]`.
PUBLISH_LOOP = """
import json, sys
from pathlib import Path
from dataset_assets.core.storage import atomic_folder

folder, tag, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for number in range(count):
    with atomic_folder(folder) as staging:
        for name in ("a.json", "b.json"):
            (staging / name).write_text(json.dumps({"tag": tag, "number": number, "pad": "x" * 4096}))
"""


def event_times(instance: DagsterInstance, run_ids: list[str], kind: DagsterEventType) -> list[float]:
    """When each run logged `kind` for its raw_shards step."""
    return [entry.timestamp for run_id in run_ids for entry in instance.all_logs(run_id, of_type=kind)
            if entry.step_key == RAW_STEP]


def test_two_runs_of_one_partition_at_once_download_each_byte_once_and_both_publish_verified_shards(
    demo_catalog: Catalog, home: Path, instance: DagsterInstance, demo_server: DemoServer, tmp_path: Path
) -> None:
    env = dagster_env(Path(instance.root_directory), home, demo_server)
    select = f"{DEMO}/raw_shards,{DEMO}/shards__{CONFIG}"
    runs = [RunProcess(select, env, tmp_path / f"run_{n}.log", partition=SEQUENCE) for n in (1, 2)]
    job = make_defs(demo_catalog, home).resolve_implicit_global_asset_job_def()
    job.execute_in_process(instance=instance, asset_selection=[AssetKey([DEMO, "url_manifest"])])
    manifest = load_manifest_file(home / DEMO / "url_manifest.json")
    entries = {home / DEMO / "raw" / entry.config / entry.relative_path: entry
               for config in ("cubercnn", "efm") for entry in manifest.entries(config, SEQUENCE)}
    # Slow enough (about 2 s a file) that both runs are inside the download step together.
    demo_server.faults.trickle(15_000, path_contains=f"/{SEQUENCE}/")
    known = {run.run_id for run in instance.get_runs()}

    with OutputReader([home / DEMO]) as reader, runs[0], runs[1]:
        for run in runs:
            run.go()
        for run in runs:
            run.finish()

    run_ids = [run.run_id for run in instance.get_runs() if run.run_id not in known]
    assert len(run_ids) == 2
    assert max(event_times(instance, run_ids, DagsterEventType.STEP_START)) < min(
        event_times(instance, run_ids, DagsterEventType.ASSET_MATERIALIZATION)), "the two runs did not overlap"
    assert demo_server.stats.body_bytes_sent() == sum(entry.size or 0 for entry in entries.values())
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=RAW, asset_partitions=[SEQUENCE]), limit=10).records
    outcomes = [(r.asset_materialization.metadata["downloaded"].value,  # type: ignore[union-attr]
                 r.asset_materialization.metadata["skipped"].value) for r in records]  # type: ignore[union-attr]
    # Each file downloaded by exactly one run and reused by the other (which run wins may differ per file).
    assert [downloaded + skipped for downloaded, skipped in outcomes] == [len(entries)] * 2
    assert sum(downloaded for downloaded, _ in outcomes) == len(entries)
    for path, entry in entries.items():
        assert hashlib.sha1(path.read_bytes()).hexdigest() == entry.sha1
        assert sorted(p.name for p in path.parent.iterdir()) == ["shards-0000.tar", "shards-0001.tar"]
    shard_set = home / DEMO / "shards" / CONFIG
    assert verify_shard_set(shard_set / SEQUENCE).problems == ()
    assert [p.name for p in shard_set.iterdir()] == [SEQUENCE]
    assert reader.problems == []
    tars = [path for path in reader.seen if path.suffix == ".tar"]
    assert set(entries) <= set(tars)
    assert {path: seen for path, seen in reader.seen.items() if path in tars and seen != {sha256_of(path)}} == {}
    print(f"2 concurrent run processes, {len(entries)} files each fetched once; {reader.summary()}")


def test_two_processes_publishing_one_shard_set_folder_at_once_both_succeed_and_leave_one_whole_set(
    tmp_path: Path
) -> None:
    folder = tmp_path / "shards" / CONFIG / SEQUENCE
    count = 150

    with OutputReader([folder.parent]) as reader:
        publishers = [subprocess.Popen([sys.executable, "-c", PUBLISH_LOOP, str(folder), tag, str(count)],
                                       cwd=PROJECT, stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
        errors = [publisher.communicate(timeout=120)[1] for publisher in publishers]

    assert [publisher.returncode for publisher in publishers] == [0, 0], errors
    published = [json.loads((folder / name).read_text()) for name in ("a.json", "b.json")]
    assert published[0] == published[1] and published[0]["number"] == count - 1
    assert [p.name for p in folder.parent.iterdir()] == [SEQUENCE]
    assert reader.problems == [] and reader.checked >= 2
    print(f"{2 * count} concurrent swaps of one folder by 2 processes; {reader.summary()}")
