"""One backfill of 20 demo sequences on Postgres + Redis + two Celery workers, from the deploy/ files.

The whole stack runs once per module (see `dataset_assets.scale.stack`): the URL manifest is a
queued run, then a GraphQL `launchPartitionBackfill` covers every sequence partition of the
partitioned assets, exactly as the UI launches it; dagster-daemon drives the backfill and each
run's steps execute on the Celery workers. The tests then read what happened from the instance.
"""
from __future__ import annotations

import importlib.util
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus

from dataset_assets.cli import DEMO_URL_ENV
from dataset_assets.core.catalog import PACKAGED_CATALOG, load_catalog
from dataset_assets.defs.builder import build_definitions
from dataset_assets.demo.generate import generate_demo_source, sequence_name
from dataset_assets.demo.server import DemoServer
from dataset_assets.scale.backfill import BackfillReport, below_manifest, materialize_dataset_by_backfill
from dataset_assets.scale.local_services import missing_binaries
from dataset_assets_tests.defs.conftest import DEMO

SEQUENCES = 20
WORKERS = 2
# Bounds that keep a stuck stack from eating CI's budget; on 2 cores shared with other jobs (load
# average 4 to 7) the module takes 4 to 6 minutes.
TIMEOUT_SECONDS = 900
BACKFILL_TIMEOUT_SECONDS = 720
ENABLE_ENV = "DATASET_ASSETS_SCALE_TESTS"

pytestmark = [pytest.mark.scale, pytest.mark.timeout(TIMEOUT_SECONDS)]


def _missing() -> list[str]:
    """Why the stack cannot start here, as install hints (empty when it can)."""
    missing = missing_binaries()
    if importlib.util.find_spec("dagster_celery") is None or importlib.util.find_spec("dagster_postgres") is None:
        missing.append("dagster-celery / dagster-postgres (pip install -e '.[scale]')")
    return missing


@dataclass(frozen=True)
class Outcome:
    """What the backfill left in the instance, read before the stack stopped."""

    report: BackfillReport
    asset_keys: tuple[AssetKey, ...]
    materializations: Counter[tuple[AssetKey, str]]
    workers: tuple[str, ...]


def _materializations(instance: DagsterInstance, keys: list[AssetKey]) -> Counter[tuple[AssetKey, str]]:
    counts: Counter[tuple[AssetKey, str]] = Counter()
    for key in keys:
        records = instance.fetch_materializations(AssetRecordsFilter(asset_key=key), limit=10 * SEQUENCES).records
        counts.update((key, str(record.partition_key)) for record in records)
    return counts


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    if os.environ.get(ENABLE_ENV) != "1":
        pytest.skip(f"takes minutes and starts Postgres, Redis and Celery workers: `make test-scale` ({ENABLE_ENV}=1)")
    missing = _missing()
    if missing:
        pytest.skip(f"scale test needs {'; '.join(missing)}")
    from dataset_assets.scale.stack import running_stack  # imports celery, part of the `scale` extra

    root = tmp_path_factory.mktemp("scale")
    generate_demo_source(root / "source", sequences=SEQUENCES)
    keys = below_manifest(build_definitions(load_catalog(PACKAGED_CATALOG)), DEMO, partitioned_only=True)
    with DemoServer(root / "source") as server:
        with running_stack(root / "home", WORKERS, {DEMO_URL_ENV: server.base_url}) as stack:
            with DagsterInstance.get() as instance:
                report = materialize_dataset_by_backfill(stack.graphql, instance, DEMO, keys,
                                                         BACKFILL_TIMEOUT_SECONDS)
                yield Outcome(report, tuple(keys), _materializations(instance, keys), stack.workers)


def test_backfill_of_every_sequence_succeeds(outcome: Outcome) -> None:
    assert outcome.report.failures == ()
    assert outcome.report.status.value == "COMPLETED_SUCCESS"
    assert {status for _, _, status in outcome.report.runs} == {DagsterRunStatus.SUCCESS}


def test_each_partition_of_each_asset_is_materialized_exactly_once(outcome: Outcome) -> None:
    expected = {(key, sequence_name(index)) for key in outcome.asset_keys for index in range(SEQUENCES)}
    assert set(outcome.materializations) == expected, set(outcome.materializations) ^ expected
    assert set(outcome.materializations.values()) == {1}


def test_each_partition_runs_once_and_each_step_executes_once(outcome: Outcome) -> None:
    assert outcome.report.runs_per_partition() == Counter({sequence_name(i): 1 for i in range(SEQUENCES)})
    executions = Counter((step.run_id, step.step_key) for step in outcome.report.steps)
    assert set(executions.values()) == {1}


def test_both_celery_workers_execute_steps(outcome: Outcome) -> None:
    per_worker = outcome.report.steps_per_worker()
    assert {worker.split("@")[0] for worker in per_worker} == set(outcome.workers)
    assert all(steps > 0 for steps in per_worker.values())
