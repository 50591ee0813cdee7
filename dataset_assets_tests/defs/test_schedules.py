"""The link-refresh and verification schedules, evaluated with `build_schedule_context` on a real instance."""
from datetime import datetime, timezone
from pathlib import Path

import pytest
from dagster import DagsterInstance, Definitions, RunRequest, SkipReason, build_schedule_context

from dataset_assets.core.catalog import Catalog
from dataset_assets.defs.sensors import TRIGGER_TAG
from dataset_assets.demo.server import DemoServer
from dataset_assets_tests.defs.conftest import DEMO, make_defs
from dataset_assets_tests.defs.test_sensors import MANIFEST, RAW, demo_catalog_at, materialize

REFRESH_SCHEDULE = f"{DEMO}_link_refresh_schedule"
VERIFY_SCHEDULE = f"{DEMO}_verify_schedule"


def evaluate(defs: Definitions, instance: DagsterInstance, schedule_name: str) -> RunRequest | SkipReason:
    with build_schedule_context(instance=instance, resources=defs.resources,
                                scheduled_execution_time=datetime.now(timezone.utc)) as context:
        result = defs.resolve_schedule_def(schedule_name)(context)
    assert isinstance(result, (RunRequest, SkipReason))
    return result


def test_link_refresh_schedule_refreshes_only_links_expiring_before_the_next_tick_plus_margin(
    demo_source: Path, home: Path, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    with DemoServer(demo_source, link_ttl_seconds=3600) as long_lived, DemoServer(
            demo_source, link_ttl_seconds=1800) as short_lived:
        defs = make_defs(demo_catalog_at(long_lived, monkeypatch), home)
        nothing_saved = evaluate(defs, instance, REFRESH_SCHEDULE)
        assert isinstance(nothing_saved, SkipReason) and "no manifest saved" in (nothing_saved.skip_message or "")
        assert materialize(defs, instance, MANIFEST).success
        valid = evaluate(defs, instance, REFRESH_SCHEDULE)
        assert isinstance(valid, SkipReason) and "links valid until" in (valid.skip_message or "")

        defs = make_defs(demo_catalog_at(short_lived, monkeypatch), home)
        assert materialize(defs, instance, MANIFEST).success
        due = evaluate(defs, instance, REFRESH_SCHEDULE)
    assert isinstance(due, RunRequest) and due.tags[TRIGGER_TAG] == "scheduled_link_refresh"
    assert defs.resolve_schedule_def(REFRESH_SCHEDULE).job_name == f"{DEMO}_refresh_links"


def test_verify_schedule_checks_every_downloaded_sequence_once_something_is_downloaded(
    demo_catalog: Catalog, home: Path, instance: DagsterInstance
) -> None:
    defs = make_defs(demo_catalog, home)
    assert materialize(defs, instance, MANIFEST).success
    assert isinstance(evaluate(defs, instance, VERIFY_SCHEDULE), SkipReason)
    for sequence in ("seq_000", "seq_003"):
        assert materialize(defs, instance, RAW, sequence).success

    request = evaluate(defs, instance, VERIFY_SCHEDULE)
    assert isinstance(request, RunRequest)
    run = defs.resolve_job_def(f"{DEMO}_verify").execute_in_process(instance=instance, tags=request.tags)
    results = {evaluation.check_name: evaluation for evaluation in run.get_asset_check_evaluations()}
    assert all(evaluation.passed for evaluation in results.values())
    assert set(results) == {"well_formed", "links_unexpired", "files_complete", "checksums_match"}
    assert results["checksums_match"].metadata["sequences_checked"].value == 2
    assert results["checksums_match"].metadata["files_verified"].value == 8


def test_link_refresh_schedule_refreshes_a_saved_manifest_it_cannot_read(
    demo_catalog: Catalog, home: Path, instance: DagsterInstance
) -> None:
    defs = make_defs(demo_catalog, home)
    assert materialize(defs, instance, MANIFEST).success
    (home / DEMO / "url_manifest.json").write_text('{"atek_data_for_all_configs": {"cubercnn": ')

    due = evaluate(defs, instance, REFRESH_SCHEDULE)

    assert isinstance(due, RunRequest) and due.tags[TRIGGER_TAG] == "scheduled_link_refresh"
