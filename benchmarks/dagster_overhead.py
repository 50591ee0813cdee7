"""Dagster's overhead per partition of `raw_shards`, against the core function it wraps (never run in CI).

A source of N sequences of one small file each (default 200 x 4 KiB) is served by the demo server
on 127.0.0.1 behind signed links, and downloaded three ways into fresh folders:

- reference: `core.pipeline.download_sequence` called once per sequence (what the asset body calls);
- one run: `raw_shards` over the whole partition range in one in-process run (its single-run
  backfill policy; the run also executes the asset's checks, which re-hash the downloaded files);
- one run per partition: in-process runs of one partition each (how per-partition backfills and
  sensor-launched runs execute), each with its checks; timed over the first `--sampled-runs`
  partitions (default 20) and reported per partition, since every run costs the same.

Each Dagster path runs on a fresh SQLite instance in a temp DAGSTER_HOME, after `url_manifest`
registered the partitions (not timed); run logs go to the instance only (console logger at WARNING).
Overhead per partition = path time per partition - reference time per partition.
Repetitions interleave the three paths; medians are reported. `--results FILE` replaces FILE's
"## Dagster overhead" section.

    .venv/bin/python benchmarks/dagster_overhead.py --results benchmarks/RESULTS.md
"""
import argparse
import logging
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dagster
from dagster import AssetKey, Definitions, instance_for_test
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from results import replace_section

from dataset_assets.core.catalog import Catalog, load_catalog
from dataset_assets.core.pipeline import download_sequence
from dataset_assets.core.transfer import TransferSettings, fetch_manifest
from dataset_assets.defs.builder import build_definitions
from dataset_assets.defs.resources import DatasetHome, TransferResource
from dataset_assets.demo.server import DemoServer

SECTION = "## Dagster overhead"
DATASET = "bench"
TARGET_SECONDS = 0.5
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
MANIFEST, RAW = AssetKey([DATASET, "url_manifest"]), AssetKey([DATASET, "raw_shards"])
NOTES = """Where the time goes (cProfile of a 100-partition run): in one run, each partition costs Dagster
two event-log writes (its `ASSET_MATERIALIZATION_PLANNED` when the run is created and its
materialization with the per-partition metadata), each a SQLite transaction; the run's fixed cost
(run record, the run's own event-log file, step events, the checks step re-hashing every file) is
spread over all partitions. A run per partition pays that fixed cost every time, seconds on this
machine, so many sequences belong in one range run: `--partition-range` on the CLI, or a UI
backfill (which `raw_shards`' single-run policy turns into one run). The sensors request one run per
new or failed sequence; a burst of hundreds of new sequences is better served by one backfill.
On Postgres storage the per-event cost differs; not measured here."""


def make_source(folder: Path, sequences: int, file_bytes: int) -> list[str]:
    names = [f"seq_{index:04d}" for index in range(sequences)]
    for name in names:
        (folder / "raw" / name).mkdir(parents=True)
        (folder / "raw" / name / "shards-0000.tar").write_bytes(os.urandom(file_bytes))
    return names


def write_catalog(path: Path, manifest_url: str) -> Catalog:
    path.write_text(f"datasets:\n  {DATASET}:\n    kind: signed_url\n    manifest: {{url: \"{manifest_url}\"}}\n"
                    "    preprocess:\n      tiny: {source_config: raw}\n")
    return load_catalog(path)


def reference(manifest_url: str, sequences: list[str], work: Path) -> float:
    """Seconds per sequence of the core download the asset body calls."""
    manifest, _ = fetch_manifest(manifest_url)
    settings = TransferSettings()
    started = time.perf_counter()
    for sequence in sequences:
        download_sequence(manifest, {"raw": work / "raw"}, sequence, settings)
    return (time.perf_counter() - started) / len(sequences)


def dagster_path(catalog: Catalog, sequences: list[str], work: Path,
                 execute: Callable[[Definitions, dagster.DagsterInstance, list[str]], None]) -> float:
    (work / "dagster_home").mkdir(parents=True)
    defs = build_definitions(catalog, home=DatasetHome(root=str(work / "home")), transfer=TransferResource())
    job = defs.resolve_implicit_global_asset_job_def()
    with instance_for_test(temp_dir=str(work / "dagster_home")) as instance:
        job.execute_in_process(instance=instance, asset_selection=[MANIFEST], run_config=QUIET)
        started = time.perf_counter()
        execute(defs, instance, sequences)
        elapsed = time.perf_counter() - started
        assert len(instance.get_materialized_partitions(RAW)) == len(sequences)
    return elapsed / len(sequences)


def one_run(defs: Definitions, instance: dagster.DagsterInstance, sequences: list[str]) -> None:
    tags = {ASSET_PARTITION_RANGE_START_TAG: sequences[0], ASSET_PARTITION_RANGE_END_TAG: sequences[-1]}
    defs.resolve_implicit_global_asset_job_def().execute_in_process(instance=instance, asset_selection=[RAW],
                                                                    tags=tags, run_config=QUIET)


def run_per_partition(defs: Definitions, instance: dagster.DagsterInstance, sequences: list[str]) -> None:
    job = defs.resolve_implicit_global_asset_job_def()
    for sequence in sequences:
        job.execute_in_process(instance=instance, asset_selection=[RAW], partition_key=sequence, run_config=QUIET)


def measure(sequences: int, file_bytes: int, repeats: int, sampled_runs: int, work: Path) -> dict[str, list[float]]:
    """Seconds per partition of each path, one value per repetition."""
    names = make_source(work / "source", sequences, file_bytes)
    times: dict[str, list[float]] = {"reference": [], "one run": [], "one run per partition": []}
    with DemoServer(work / "source") as server:
        catalog = write_catalog(work / "catalog.yaml", server.manifest_url)
        for repeat in range(repeats):
            times["reference"].append(reference(server.manifest_url, names, work / f"reference-{repeat}"))
            times["one run"].append(dagster_path(catalog, names, work / f"one-run-{repeat}", one_run))
            times["one run per partition"].append(
                dagster_path(catalog, names[:sampled_runs], work / f"per-partition-{repeat}", run_per_partition))
            print(f"repetition {repeat + 1}: " + ", ".join(f"{path} {values[-1]:.3f} s/partition"
                                                           for path, values in times.items()), file=sys.stderr)
    return times


def table(times: dict[str, list[float]], sequences: int, sampled_runs: int) -> str:
    base = statistics.median(times["reference"])
    lines = ["| path | median time per partition | Dagster overhead per partition | target < 0.5 s |",
             "|---|---:|---:|---|",
             f"| core `download_sequence`, once per sequence (reference) | {base:.3f} s | — | — |"]
    for path, label in (("one run", f"`raw_shards`, one run over all {sequences} partitions (single-run backfill)"),
                        ("one run per partition", f"`raw_shards`, one run per partition ({sampled_runs} runs timed)")):
        overhead = statistics.median(times[path]) - base
        verdict = "met" if overhead < TARGET_SECONDS else "**missed**"
        lines.append(f"| {label} | {statistics.median(times[path]):.3f} s | {overhead:.3f} s | {verdict} |")
    return "\n".join(lines)


def machine() -> str:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (f"Python {platform.python_version()}, dagster {dagster.__version__}, {os.cpu_count()} CPUs, "
            f"load average at the end {load}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=200)
    parser.add_argument("--file-bytes", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sampled-runs", type=int, default=20, help="partitions timed one run each")
    parser.add_argument("--results", type=Path, default=None, help="markdown file whose section to replace")
    args = parser.parse_args(argv)
    logging.getLogger("dagster").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="dagster-overhead-"))
    try:
        times = measure(args.sequences, args.file_bytes, args.repeats, args.sampled_runs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = " ".join(shlex.quote(part) for part in [".venv/bin/python", "benchmarks/dagster_overhead.py",
                                                      *sys.argv[1:]])
    raw = "; ".join(f"{path} " + ", ".join(f"{value:.3f}" for value in values) for path, values in times.items())
    body = "\n\n".join([
        SECTION,
        f"Command: `{command}` — {args.sequences} partitions of one {args.file_bytes // 1024} KiB file each, "
        f"served by the demo server on 127.0.0.1; in-process runs on a SQLite instance; medians of "
        f"{args.repeats} interleaved repetitions. {machine()}.",
        table(times, args.sequences, args.sampled_runs),
        f"Raw seconds per partition: {raw}.",
        NOTES,
    ])
    print(body)
    if args.results is not None:
        replace_section(args.results, SECTION, body)


if __name__ == "__main__":
    main()
