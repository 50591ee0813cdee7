"""Partition scale: registering, listing and backfilling thousands of sequence partitions (never run in CI).

For each size (default 1,000 then 10,000 sequences) a synthetic ATEK manifest is written (fake
signed links: registering partitions downloads nothing) with a catalog naming it, on a fresh
instance: SQLite in a temp DAGSTER_HOME, or with `--storage postgres` deploy/dagster.yaml on a
throwaway local Postgres. Runs are queued, never executed. Measured:

- register (asset): `<ds>/url_manifest` materialized in process on an empty instance (parse,
  save, one `get_dynamic_partitions`, one batched `add_dynamic_partitions`); then again with every
  sequence known (re-register);
- register (sensor): one tick of `<ds>_manifest_sensor` on another dataset of the same manifest,
  plus applying its partition request, as the daemon would;
- list (GraphQL): dagster-webserver's `/graphql` answering the queries of the UI's partitions page
  (`partitionKeysByDimension`, `assetPartitionStatuses`), median of 3;
- launch backfill: the `launchPartitionBackfill` mutation over all partitions of the partitioned
  assets, then the backfill daemon's first iteration (it submits the first runs); once more with
  `DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS=true`.

The smallest size is the reference: a cost linear in the number of partitions shows a ratio close
to the ratio of the sizes. `--results FILE` replaces FILE's "## Partition scale" section.

    .venv/bin/python benchmarks/partitions.py --storage postgres --results benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml
from dagster import AssetKey, DagsterInstance, Definitions, RunsFilter, SensorResult, build_sensor_context
from dagster._core.storage.tags import BACKFILL_ID_TAG
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.backfill import execute_backfill_iteration
from results import replace_section

from dataset_assets.core.catalog import CATALOG_ENV, load_catalog
from dataset_assets.defs.builder import build_definitions
from dataset_assets.defs.materialize import QUIET_RUN_CONFIG
from dataset_assets.defs.partitions import sequence_partitions
from dataset_assets.defs.resources import DatasetHome, TransferResource
from dataset_assets.scale.backfill import below_manifest
from dataset_assets.scale.graphql import DagsterGraphQL
from dataset_assets.scale.local_services import free_port, postgres_bin, running_postgres, stop_all
from dataset_assets.scale.stack import (
    DEPLOY,
    local_url,
    patched_environ,
    postgres_env,
    start_webserver,
    wait_for_webserver,
)

SECTION = "## Partition scale"
ASSET_DATASET = "bench"
SENSOR_DATASET = "bench_sensor"
CONFIGS = ("cubercnn", "efm")
SHARDS_PER_SEQUENCE = 2
# Dagster's switch for one "materialization planned" event per asset of a range run, not one per partition.
PLANNED_SUBSET_ENV = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"
QUEUED_ONLY = """telemetry: {enabled: false}
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
"""


def _entry(config: str, sequence: str, shard: int, expires: int) -> dict[str, object]:
    name = f"shards-{shard:04d}.tar"
    digest = hashlib.sha1(f"{config}/{sequence}/{name}".encode()).hexdigest()
    return {"filename": name, "sha1sum": digest, "file_size_bytes": 1_000_000 + shard,
            "download_url": f"https://data.example.invalid/{config}/{sequence}/{name}"
                            f"?Expires={expires}&Signature={digest}"}


def write_manifest(path: Path, sequences: int) -> None:
    """An ATEK manifest of `sequences` sequences, each with two shards in each config."""
    expires = int(time.time()) + 7 * 24 * 3600
    body = {config: {"wds_file_urls": {
        f"seq_{index:05d}": {f"shards-{shard:04d}_tar": _entry(config, f"seq_{index:05d}", shard, expires)
                             for shard in range(SHARDS_PER_SEQUENCE)}
        for index in range(sequences)}} for config in CONFIGS}
    path.write_text(json.dumps({"atek_data_for_all_configs": body}))


def write_catalog(path: Path, manifest: Path) -> None:
    """Two datasets of the same manifest: one registered by its asset, one by its sensor."""
    dataset = {"kind": "signed_url", "manifest": {"path": str(manifest)},
               "preprocess": {"small": {"source_config": "cubercnn", "image_size": [48, 36]},
                              "depth": {"source_config": "efm"}}}
    path.write_text(yaml.safe_dump({"datasets": {ASSET_DATASET: dataset, SENSOR_DATASET: dataset}}))


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def median_of(repeats: int, action: Callable[[], object]) -> float:
    return statistics.median(timed(action) for _ in range(repeats))


@contextmanager
def sqlite_instance(folder: Path) -> Iterator[dict[str, str]]:
    """A fresh SQLite DAGSTER_HOME whose runs only queue; yields the environment naming it."""
    folder.mkdir(parents=True)
    (folder / "dagster.yaml").write_text(QUEUED_ONLY)
    yield {"DAGSTER_HOME": str(folder)}


@contextmanager
def postgres_instance(folder: Path) -> Iterator[dict[str, str]]:
    """deploy/dagster.yaml on a throwaway local Postgres (its QueuedRunCoordinator only queues)."""
    bindir = postgres_bin()
    if bindir is None:
        raise SystemExit("--storage postgres needs the postgres binaries (apt-get install postgresql)")
    folder.mkdir(parents=True)
    shutil.copy(DEPLOY / "dagster.yaml", folder / "dagster.yaml")
    with running_postgres(bindir) as postgres:
        yield {"DAGSTER_HOME": str(folder), **postgres_env(postgres)}


def register_by_asset(defs: Definitions, instance: DagsterInstance) -> float:
    job = defs.resolve_implicit_global_asset_job_def()
    key = AssetKey([ASSET_DATASET, "url_manifest"])
    return timed(lambda: job.execute_in_process(instance=instance, asset_selection=[key], run_config=QUIET_RUN_CONFIG))


def register_by_sensor(defs: Definitions, instance: DagsterInstance) -> tuple[float, int]:
    """One manifest sensor tick plus applying its partition request; returns (seconds, run requests)."""
    sensor = defs.resolve_sensor_def(f"{SENSOR_DATASET}_manifest_sensor")
    started = time.perf_counter()
    with build_sensor_context(instance=instance, resources={"transfer": TransferResource()}) as context:
        result = sensor(context)
    assert isinstance(result, SensorResult)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return time.perf_counter() - started, len(result.run_requests or [])


def first_backfill_iteration(instance: DagsterInstance, backfill_id: str) -> tuple[float, int]:
    """The backfill daemon's first iteration, in process; returns (seconds, runs it submitted)."""
    target = ModuleTarget(module_name="dataset_assets.definitions", attribute=None, working_directory=None,
                          location_name=None)
    with WorkspaceProcessContext(instance, target) as context:
        seconds = timed(lambda: list(execute_backfill_iteration(context, logging.getLogger("backfill"))))
    return seconds, instance.get_runs_count(RunsFilter(tags={BACKFILL_ID_TAG: backfill_id}))


@dataclass
class Measurements:
    """Seconds per step and counts (run requests, runs queued) of one size."""

    seconds: dict[str, float]
    counts: dict[str, int]


def measure_graphql(graphql: DagsterGraphQL, defs: Definitions, sequences: int, into: Measurements) -> None:
    raw = AssetKey([ASSET_DATASET, "raw_shards"])
    keys = graphql.partition_keys(raw)
    if len(keys) != sequences:
        raise SystemExit(f"GraphQL listed {len(keys)} partitions, expected {sequences}")
    into.seconds["list: partition keys (GraphQL)"] = median_of(3, lambda: graphql.partition_keys(raw))
    into.seconds["list: partition statuses (GraphQL)"] = median_of(3, lambda: graphql.partition_statuses(raw))
    assets = below_manifest(defs, ASSET_DATASET, partitioned_only=True)
    started = time.perf_counter()
    backfill_id = graphql.launch_backfill(assets)
    into.seconds["backfill: launchPartitionBackfill (GraphQL)"] = time.perf_counter() - started
    with DagsterInstance.get() as instance:
        seconds, runs = first_backfill_iteration(instance, backfill_id)
        into.seconds["backfill: daemon's first iteration"] = seconds
        into.counts["runs queued by the first iteration"] = runs
        with patched_environ({PLANNED_SUBSET_ENV: "true"}):
            seconds, _ = first_backfill_iteration(instance, graphql.launch_backfill(assets))
        into.seconds[f"backfill: daemon's first iteration, {PLANNED_SUBSET_ENV}=true"] = seconds


def measure_registration(defs: Definitions, sequences: int, into: Measurements) -> None:
    with DagsterInstance.get() as instance:
        into.seconds["register: url_manifest asset, empty instance"] = register_by_asset(defs, instance)
        into.seconds["re-register: url_manifest asset, all known"] = register_by_asset(defs, instance)
        seconds, requests = register_by_sensor(defs, instance)
        into.seconds["register: manifest sensor tick + partition request"] = seconds
        into.counts["run requests of that sensor tick"] = requests
        for dataset in (ASSET_DATASET, SENSOR_DATASET):
            registered = len(instance.get_dynamic_partitions(sequence_partitions(dataset).name))
            if registered != sequences:
                raise SystemExit(f"{dataset}: {registered} partitions registered, expected {sequences}")


def measure_size(work: Path, sequences: int, storage: str) -> Measurements:
    """Every measurement for one size, on a fresh instance."""
    folder = work / f"{sequences}"
    folder.mkdir()
    write_manifest(folder / "manifest.json", sequences)
    write_catalog(folder / "catalog.yaml", folder / "manifest.json")
    opener = postgres_instance if storage == "postgres" else sqlite_instance
    measurements = Measurements({}, {})
    with ExitStack() as stack:
        env = stack.enter_context(opener(folder / "dagster_home"))
        stack.enter_context(patched_environ({**env, CATALOG_ENV: str(folder / "catalog.yaml")}))
        defs = build_definitions(load_catalog(folder / "catalog.yaml"), home=DatasetHome(root=str(folder / "home")))
        measure_registration(defs, sequences, measurements)
        port = free_port()
        webserver = start_webserver(port, folder)
        stack.callback(stop_all, [webserver])
        wait_for_webserver(webserver, port)
        measure_graphql(DagsterGraphQL(f"{local_url(port)}/graphql"), defs, sequences, measurements)
    return measurements


def table(sizes: Sequence[int], results: Sequence[Measurements]) -> str:
    """One row per step, one column per size, and the largest size's ratio to the smallest."""
    lines = ["| step | " + " | ".join(f"{size:,} sequences" for size in sizes) + " | ratio |",
             "|" + "---|" * (len(sizes) + 2)]
    first, last = results[0], results[-1]
    for name in first.seconds:
        cells = [f"{result.seconds[name]:.2f} s" for result in results]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {last.seconds[name] / first.seconds[name]:.1f}x |")
    for name in first.counts:
        cells = [f"{result.counts[name]:,}" for result in results]
        lines.append(f"| {name} | " + " | ".join(cells) + " | |")
    return "\n".join(lines)


def machine() -> str:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average at the end {load}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="sequences per manifest")
    parser.add_argument("--storage", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--results", type=Path, default=None, help=f"markdown file whose '{SECTION}' to replace")
    args = parser.parse_args(argv)
    logging.getLogger("dagster").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="partitions-bench-"))
    results = []
    try:
        for size in args.sizes:
            results.append(measure_size(work, size, args.storage))
            print(f"{size:,} sequences: {results[-1]}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = " ".join(shlex.quote(part) for part in [".venv/bin/python", "benchmarks/partitions.py", *sys.argv[1:]])
    note = f"Command: `{command}` — {args.storage} instance; one run per size, GraphQL reads median of 3. {machine()}."
    body = "\n\n".join([SECTION, note, table(args.sizes, results)])
    print(body)
    if args.results is not None:
        replace_section(args.results, SECTION, body)


if __name__ == "__main__":
    main()
