"""Materialize a dataset on a running stack through the UI's own calls, and report where each step ran.

The URL manifest is one queued run (it registers the sequence partitions); then one asset backfill
covers every sequence partition. A step's worker is what dagster-celery recorded when the step
started there: the engine event "Executing steps ... in celery worker" names the worker's Celery
hostname (`worker-1@<host>`).
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TypeVar

from dagster import (
    AssetKey,
    AssetSelection,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    RunsFilter,
)
from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES, BulkActionStatus
from dagster._core.storage.dagster_run import FINISHED_STATUSES
from dagster._core.storage.tags import BACKFILL_ID_TAG, PARTITION_NAME_TAG
from dagster._utils.error import SerializableErrorInfo

from dataset_assets.core.errors import DatasetAssetsError
from dataset_assets.defs.partitions import sequence_partitions
from dataset_assets.scale.graphql import DagsterGraphQL

CELERY_WORKER_KEY = "Celery worker"
POLL_SECONDS = 1.0
T = TypeVar("T")


class BackfillError(DatasetAssetsError):
    """A run or backfill did not finish in time, or did not succeed."""


@dataclass(frozen=True)
class StepExecution:
    """One step of one run and the Celery worker that executed it."""

    run_id: str
    partition: str | None
    step_key: str
    worker: str


@dataclass(frozen=True)
class BackfillReport:
    """What a finished backfill did: its status, its runs' partitions and statuses, and its steps."""

    backfill_id: str
    status: BulkActionStatus
    runs: tuple[tuple[str, str | None, DagsterRunStatus], ...]
    steps: tuple[StepExecution, ...]
    failures: tuple[str, ...]
    seconds: float

    def runs_per_partition(self) -> Counter[str]:
        return Counter(partition for _, partition, _ in self.runs if partition is not None)

    def steps_per_worker(self) -> Counter[str]:
        return Counter(step.worker for step in self.steps)


def below_manifest(defs: Definitions, dataset: str, partitioned_only: bool = False) -> list[AssetKey]:
    """Every asset of `dataset` downstream of its URL manifest (optionally only the partitioned ones)."""
    graph = defs.resolve_asset_graph()
    selection = AssetSelection.assets(AssetKey([dataset, "url_manifest"])).downstream(include_self=False)
    keys = sorted(selection.resolve(graph))
    return [key for key in keys if not partitioned_only or graph.get(key).is_partitioned]


def _wait_for(status: Callable[[], T | None], finished: Collection[T], timeout: float, what: str) -> T:
    """Poll `status` until it is one of `finished`; return it."""
    deadline = time.monotonic() + timeout
    while (current := status()) not in finished:
        if time.monotonic() > deadline:
            raise BackfillError(f"{what} not finished after {timeout:.0f} s (status {current})")
        time.sleep(POLL_SECONDS)
    assert current is not None
    return current


def wait_for_run(instance: DagsterInstance, run_id: str, timeout: float) -> DagsterRunStatus:
    def status() -> DagsterRunStatus | None:
        run = instance.get_run_by_id(run_id)
        return run.status if run is not None else None

    return _wait_for(status, FINISHED_STATUSES, timeout, f"run {run_id}")


def wait_for_backfill(instance: DagsterInstance, backfill_id: str, timeout: float) -> BulkActionStatus:
    def status() -> BulkActionStatus | None:
        backfill = instance.get_backfill(backfill_id)
        return backfill.status if backfill is not None else None

    return _wait_for(status, BULK_ACTION_TERMINAL_STATUSES, timeout, f"backfill {backfill_id}")


def celery_steps(instance: DagsterInstance, run_id: str, partition: str | None) -> list[StepExecution]:
    """The steps of a run that dagster-celery handed to a worker, with that worker's hostname."""
    steps = []
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        metadata = event.engine_event_data.metadata if event is not None and event.engine_event_data else {}
        if CELERY_WORKER_KEY in metadata and entry.step_key is not None:
            steps.append(StepExecution(run_id, partition, entry.step_key, str(metadata[CELERY_WORKER_KEY].value)))
    return steps


def root_cause(error: SerializableErrorInfo) -> str:
    """The innermost error's `Class: message`, where Dagster's wrapping errors say what really failed."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


def failure_messages(instance: DagsterInstance, run_id: str) -> list[str]:
    """`<run id> <step>: <innermost error>` for every step or run failure of a run."""
    messages = []
    for entry in instance.all_logs(run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}):
        event = entry.dagster_event
        error = event.event_specific_data.error if event is not None and event.event_specific_data else None
        detail = root_cause(error) if error is not None else entry.message
        messages.append(f"{run_id[:8]} {entry.step_key or 'run'}: {detail}")
    return messages


def backfill_report(instance: DagsterInstance, backfill_id: str, seconds: float) -> BackfillReport:
    backfill = instance.get_backfill(backfill_id)
    if backfill is None:
        raise BackfillError(f"backfill {backfill_id} does not exist")
    runs = instance.get_runs(filters=RunsFilter(tags={BACKFILL_ID_TAG: backfill_id}))
    summary = tuple((run.run_id, run.tags.get(PARTITION_NAME_TAG), run.status) for run in runs)
    steps = tuple(step for run_id, partition, _ in summary for step in celery_steps(instance, run_id, partition))
    failures = tuple(message for run_id, _, status in summary if status != DagsterRunStatus.SUCCESS
                     for message in failure_messages(instance, run_id))
    return BackfillReport(backfill_id, backfill.status, summary, steps, failures, seconds)


def materialize_dataset_by_backfill(graphql: DagsterGraphQL, instance: DagsterInstance, dataset: str,
                                    assets: Sequence[AssetKey], timeout: float = 1800.0) -> BackfillReport:
    """Run `<dataset>/url_manifest`, then backfill every sequence partition of `assets` (and their
    unpartitioned children in `assets`, such as the split manifests)."""
    manifest_run = graphql.launch_run([AssetKey([dataset, "url_manifest"])])
    status = wait_for_run(instance, manifest_run, timeout)
    if status != DagsterRunStatus.SUCCESS:
        raise BackfillError(f"url_manifest run {manifest_run} ended {status.value}")
    partitions = instance.get_dynamic_partitions(sequence_partitions(dataset).name)
    started = time.monotonic()
    backfill_id = graphql.launch_backfill(assets, partitions)
    wait_for_backfill(instance, backfill_id, timeout)
    return backfill_report(instance, backfill_id, time.monotonic() - started)
