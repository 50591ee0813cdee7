"""The manifest and link-refresh sensors, evaluated with `build_sensor_context` against a real instance.

Run requests are executed the way the daemon would: dynamic partition requests first, then the
requested job in-process with the request's partition and tags.
"""
import dataclasses
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    RunRequest,
    SensorResult,
    build_sensor_context,
    instance_for_test,
)
from dagster._core.definitions.instigation_logger import get_instigation_log_records
from dagster._core.definitions.partitions.context import partition_loading_context
from dagster._core.definitions.sensor_definition import SensorExecutionData
from dagster._grpc.impl import get_external_sensor_execution
from sqlalchemy import event
from sqlalchemy.engine import Engine

from dataset_assets.cli import DEMO_URL_ENV
from dataset_assets.core.catalog import PACKAGED_CATALOG, Catalog, ManifestSource, load_catalog
from dataset_assets.core.transfer import fetch_manifest
from dataset_assets.defs.materialize import materialize_dataset
from dataset_assets.defs.sensors import REFRESH_MARGIN_ENV, TRIGGER_TAG
from dataset_assets.demo.server import DemoServer
from dataset_assets_tests.defs.conftest import DEMO, make_defs

MANIFEST = AssetKey([DEMO, "url_manifest"])
RAW = AssetKey([DEMO, "raw_shards"])
SHARDS = [AssetKey([DEMO, "shards__cubercnn_small"]), AssetKey([DEMO, "shards__efm_png"])]
MANIFEST_SENSOR = f"{DEMO}_manifest_sensor"
REFRESH_SENSOR = f"{DEMO}_link_refresh_sensor"


def tick(defs: Definitions, instance: DagsterInstance, sensor_name: str, cursor: str | None = None) -> SensorResult:
    """One sensor evaluation with the Definitions' resources, as the daemon would run it."""
    with build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=defs.resources) as context:
        result = defs.resolve_sensor_def(sensor_name)(context)
    assert isinstance(result, SensorResult)
    return result


def add_requested_partitions(result: SensorResult, instance: DagsterInstance) -> None:
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys or []))


def execute(defs: Definitions, instance: DagsterInstance, request: RunRequest) -> ExecuteInProcessResult:
    job = defs.resolve_job_def(request.job_name or "")
    return job.execute_in_process(instance=instance, partition_key=request.partition_key, tags=request.tags,
                                  raise_on_error=False)


def materialize(defs: Definitions, instance: DagsterInstance, key: AssetKey,
                partition: str | None = None) -> ExecuteInProcessResult:
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[key], partition_key=partition, raise_on_error=False)


def requested(result: SensorResult) -> list[tuple[str | None, str | None]]:
    return sorted((request.job_name, request.partition_key) for request in result.run_requests or [])


def added(result: SensorResult) -> list[str]:
    return sorted(key for request in result.dynamic_partitions_requests or [] for key in request.partition_keys or [])


@pytest.fixture
def source(tmp_path: Path, demo_source: Path) -> Path:
    """A private copy of the demo source that a test may grow or change."""
    return Path(shutil.copytree(demo_source, tmp_path / "source"))


@pytest.fixture
def own_server(source: Path) -> Iterator[DemoServer]:
    with DemoServer(source) as server:
        yield server


def demo_catalog_at(server: DemoServer, monkeypatch: pytest.MonkeyPatch) -> Catalog:
    """The packaged catalog with its demo dataset pointed at `server`."""
    monkeypatch.setenv(DEMO_URL_ENV, server.base_url)
    return load_catalog(PACKAGED_CATALOG)


def test_manifest_sensor_adds_exactly_the_new_partitions_and_requests_each_run_once(
    own_server: DemoServer, source: Path, home: Path, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    defs = make_defs(demo_catalog_at(own_server, monkeypatch), home)
    first = tick(defs, instance, MANIFEST_SENSOR)
    sequences = [f"seq_{index:03d}" for index in range(8)]
    assert added(first) == sequences
    assert requested(first) == [(f"{DEMO}_sequence", sequence) for sequence in sequences]
    add_requested_partitions(first, instance)
    assert requested(tick(defs, instance, MANIFEST_SENSOR, first.cursor)) == []

    for config in ("cubercnn", "efm"):
        shutil.copytree(source / config / "seq_000", source / config / "seq_100")
    with open(source / "efm" / "seq_002" / "shards-0000.tar", "ab") as changed:
        changed.write(b"\0" * 512)
    grown = tick(defs, instance, MANIFEST_SENSOR, first.cursor)
    assert added(grown) == ["seq_100"]
    assert requested(grown) == [(f"{DEMO}_sequence", "seq_002"), (f"{DEMO}_sequence", "seq_100")]
    assert {request.tags[TRIGGER_TAG] for request in grown.run_requests or []} == {"new_or_changed_sequence"}
    add_requested_partitions(grown, instance)
    again = tick(defs, instance, MANIFEST_SENSOR, grown.cursor)
    assert requested(again) == [] and added(again) == []


def defs_after_seq_000_ran(demo_server: DemoServer, home: Path, instance: DagsterInstance,
                           monkeypatch: pytest.MonkeyPatch) -> Definitions:
    """The demo's definitions once a first manifest tick registered the sequences and seq_000's run succeeded."""
    defs = make_defs(demo_catalog_at(demo_server, monkeypatch), home)
    first = tick(defs, instance, MANIFEST_SENSOR)
    add_requested_partitions(first, instance)
    seq_000 = next(request for request in first.run_requests or [] if request.partition_key == "seq_000")
    assert execute(defs, instance, seq_000).success
    return defs


def test_manifest_sensor_without_cursor_skips_sequences_already_downloaded_with_the_same_files(
    demo_server: DemoServer, home: Path, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    defs = defs_after_seq_000_ran(demo_server, home, instance, monkeypatch)
    assert {record.partition_key for record in instance.fetch_materializations(RAW, limit=10).records} == {"seq_000"}

    reset = tick(defs, instance, MANIFEST_SENSOR)
    assert added(reset) == []
    assert [partition for _, partition in requested(reset)] == [f"seq_{index:03d}" for index in range(1, 8)]


def test_manifest_sensor_without_cursor_requests_a_downloaded_sequence_whose_shard_sets_were_never_made(
    demo_server: DemoServer, home: Path, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    defs = defs_after_seq_000_ran(demo_server, home, instance, monkeypatch)
    assert materialize(defs, instance, RAW, "seq_001").success
    assert [record.partition_key for record in instance.fetch_materializations(SHARDS[1], limit=10).records] == [
        "seq_000"]

    reset = tick(defs, instance, MANIFEST_SENSOR)
    assert [partition for _, partition in requested(reset)] == [f"seq_{index:03d}" for index in range(1, 8)]


@contextmanager
def event_log_queries() -> Iterator[list[str]]:
    """Every SQL statement on Dagster's event log that any engine of this process executes inside the block."""
    statements: list[str] = []

    def record(connection: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if "event_logs" in statement:
            statements.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def report_downloads(instance: DagsterInstance, server: DemoServer, stale: str) -> None:
    """A `raw_shards` materialization per known sequence, each with the sha1s the manifest lists,
    except `stale`'s: its files changed since; and its shard sets, made from that download."""
    manifest, _ = fetch_manifest(f"{server.base_url}/manifest.json")
    for sequence in instance.get_dynamic_partitions(f"{DEMO}_sequences"):
        entries = [entry for config in ("cubercnn", "efm") for entry in manifest.entries(config, sequence)]
        sha1 = {} if sequence == stale else {f"{entry.config}/{entry.relative_path}": entry.sha1 for entry in entries}
        version = f"files-of-{sequence}"
        instance.report_runless_asset_event(AssetMaterialization(
            RAW, partition=sequence, metadata={"sha1": sha1, "files_version": version}))
        for shards in SHARDS:
            instance.report_runless_asset_event(AssetMaterialization(
                shards, partition=sequence, metadata={"source": {"raw_data_version": version}}))


@dataclass(frozen=True)
class TwoTicks:
    """A first tick on an empty instance and a cursorless tick once every sequence was downloaded,
    each with the number of event log queries it made."""

    first: SensorResult
    first_queries: int
    again: SensorResult
    again_queries: int


def first_and_cursorless_tick(defs: Definitions, instance: DagsterInstance, server: DemoServer) -> TwoTicks:
    with event_log_queries() as first_queries:
        first = tick(defs, instance, MANIFEST_SENSOR)
    add_requested_partitions(first, instance)
    report_downloads(instance, server, stale="seq_001")
    with event_log_queries() as again_queries:
        again = tick(defs, instance, MANIFEST_SENSOR)
    return TwoTicks(first, len(first_queries), again, len(again_queries))


def test_manifest_sensor_reads_no_materialization_for_new_sequences_and_batches_the_known_ones(
    own_server: DemoServer, source: Path, home: Path, instance: DagsterInstance, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    defs = make_defs(demo_catalog_at(own_server, monkeypatch), home)
    small = first_and_cursorless_tick(defs, instance, own_server)
    for index in range(100, 140):
        for config in ("cubercnn", "efm"):
            shutil.copytree(source / config / "seq_000", source / config / f"seq_{index:03d}")
    (tmp_path / "large_instance").mkdir()
    with instance_for_test(temp_dir=str(tmp_path / "large_instance")) as large_instance:
        large = first_and_cursorless_tick(defs, large_instance, own_server)

    assert len(added(large.first)) == len(requested(large.first)) == 48
    assert requested(small.again) == requested(large.again) == [(f"{DEMO}_sequence", "seq_001")]
    assert small.first_queries == large.first_queries == 0
    assert 0 < small.again_queries == large.again_queries


def test_link_refresh_sensor_requests_one_manifest_refresh_once_links_are_within_the_margin(
    demo_source: Path, home: Path, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    with DemoServer(demo_source, link_ttl_seconds=600) as server:
        catalog = demo_catalog_at(server, monkeypatch)
        monkeypatch.setenv(REFRESH_MARGIN_ENV, "300")
        relaxed = make_defs(catalog, home)
        assert materialize(relaxed, instance, MANIFEST).success
        assert requested(tick(relaxed, instance, REFRESH_SENSOR)) == []

        monkeypatch.setenv(REFRESH_MARGIN_ENV, "900")
        defs = make_defs(catalog, home)
        first = tick(defs, instance, REFRESH_SENSOR)
        assert requested(first) == [(f"{DEMO}_refresh_links", None)]
        assert requested(tick(defs, instance, REFRESH_SENSOR, first.cursor)) == []

        before = (home / DEMO / "url_manifest.json").read_bytes()
        server.advance_clock(60)  # links are signed to the second: a refresh in the same second is identical
        refresh = execute(defs, instance, (first.run_requests or [])[0])
        assert refresh.success
        assert (home / DEMO / "url_manifest.json").read_bytes() != before
        refreshed = {event.asset_key for event in refresh.get_asset_materialization_events()}
        assert refreshed == {MANIFEST, AssetKey([DEMO, "splits__cubercnn_small"]), AssetKey([DEMO, "splits__efm_png"])}


def test_link_refresh_sensor_requests_the_refresh_again_once_the_refresh_it_requested_has_failed(
    demo_source: Path, home: Path, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    with DemoServer(demo_source, link_ttl_seconds=600) as server:
        monkeypatch.setenv(REFRESH_MARGIN_ENV, "900")
        defs = make_defs(demo_catalog_at(server, monkeypatch), home, max_attempts=1)
        assert materialize(defs, instance, MANIFEST).success
        first = tick(defs, instance, REFRESH_SENSOR)
        assert requested(first) == [(f"{DEMO}_refresh_links", None)]
        # the requested run's worker dies: run monitoring marks it failed (a failing step would first
        # wait out the job's step retries, 10 s and more)
        run = instance.create_run_for_job(defs.resolve_job_def(f"{DEMO}_refresh_links"),
                                          tags=(first.run_requests or [])[0].tags)
        instance.report_run_failed(run)

        second = tick(defs, instance, REFRESH_SENSOR, first.cursor)
        assert requested(second) == [(f"{DEMO}_refresh_links", None)]
        again = (second.run_requests or [])[0]
        assert again.run_key != (first.run_requests or [])[0].run_key
        assert [request.run_key for request in tick(defs, instance, REFRESH_SENSOR, second.cursor).run_requests
                or []] == [again.run_key]  # until that run is launched, the same run key: launched once
        before = (home / DEMO / "url_manifest.json").read_bytes()
        server.advance_clock(60)
        assert execute(defs, instance, again).success
        assert (home / DEMO / "url_manifest.json").read_bytes() != before


def test_link_refresh_sensor_refreshes_split_links_that_expire_after_url_manifest_alone_got_fresh_links(
    demo_source: Path, home: Path, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    with DemoServer(demo_source, link_ttl_seconds=600) as server:  # the split YAMLs' links: within the margin
        monkeypatch.setenv(REFRESH_MARGIN_ENV, "900")
        defs = make_defs(demo_catalog_at(server, monkeypatch), home)
        materialize_dataset(defs, instance, DEMO, ["seq_000", "seq_001"])
        server.advance_clock(3000)  # links issued from now on expire in 3,600 s by the sensor's clock
        assert materialize(defs, instance, MANIFEST).success  # fresh links for the manifest only, as from the CLI
        first = tick(defs, instance, REFRESH_SENSOR)
        assert requested(first) == [(f"{DEMO}_refresh_links", None)]

        assert execute(defs, instance, (first.run_requests or [])[0]).success
        assert requested(tick(defs, instance, REFRESH_SENSOR, first.cursor)) == []


def test_link_refresh_sensor_re_requests_only_partitions_that_failed_on_expired_links(
    demo_catalog: Catalog, demo_server: DemoServer, home: Path, instance: DagsterInstance
) -> None:
    defs = make_defs(demo_catalog, home, max_attempts=1)
    assert materialize(defs, instance, MANIFEST).success
    demo_server.faults.fail_with_status(500, times=100, path_contains="/seq_002/")
    demo_server.advance_clock(demo_server.link_ttl_seconds + 60)
    assert not materialize(defs, instance, RAW, "seq_001").success  # links expired by the server's clock
    assert not materialize(defs, instance, RAW, "seq_002").success  # HTTP 500: not an expiry

    first = tick(defs, instance, REFRESH_SENSOR)
    assert requested(first) == [(f"{DEMO}_sequence", "seq_001")]
    assert (first.run_requests or [])[0].tags[TRIGGER_TAG] == "expired_links"
    assert requested(tick(defs, instance, REFRESH_SENSOR, first.cursor)) == []

    retry = execute(defs, instance, (first.run_requests or [])[0])
    assert retry.success
    assert {(event.asset_key, event.partition) for event in retry.get_asset_materialization_events()} >= {
        (MANIFEST, None), (RAW, "seq_001")}
    assert requested(tick(defs, instance, REFRESH_SENSOR, first.cursor)) == []
    assert requested(tick(defs, instance, REFRESH_SENSOR)) == []


def fail_on_expired_links(defs: Definitions, instance: DagsterInstance, server: DemoServer, sequences: list[str]
                          ) -> None:
    """Save the manifest, let its links expire, then run `raw_shards` of each of `sequences` (failing) in turn."""
    assert materialize(defs, instance, MANIFEST).success
    server.advance_clock(server.link_ttl_seconds + 60)
    for sequence in sequences:
        assert not materialize(defs, instance, RAW, sequence).success


def test_link_refresh_sensor_requests_one_retry_per_partition_however_many_runs_of_it_failed_on_expired_links(
    demo_catalog: Catalog, demo_server: DemoServer, home: Path, instance: DagsterInstance
) -> None:
    defs = make_defs(demo_catalog, home, max_attempts=1)
    fail_on_expired_links(defs, instance, demo_server, ["seq_001", "seq_001", "seq_003"])

    first = tick(defs, instance, REFRESH_SENSOR)

    assert requested(first) == [(f"{DEMO}_sequence", "seq_001"), (f"{DEMO}_sequence", "seq_003")]


def test_an_unreadable_saved_manifest_does_not_stop_the_link_refresh_sensor_re_requesting_expired_downloads(
    demo_catalog: Catalog, demo_server: DemoServer, home: Path, instance: DagsterInstance
) -> None:
    defs = make_defs(demo_catalog, home, max_attempts=1)
    fail_on_expired_links(defs, instance, demo_server, ["seq_001"])
    (home / DEMO / "url_manifest.json").write_text('{"atek_data_for_all_configs": {"cubercnn": ')

    first = tick(defs, instance, REFRESH_SENSOR)

    assert requested(first) == [(f"{DEMO}_sequence", "seq_001")]


def test_link_refresh_sensor_skips_a_failed_partition_that_was_deleted_since(
    demo_catalog: Catalog, demo_server: DemoServer, home: Path, instance: DagsterInstance
) -> None:
    defs = make_defs(demo_catalog, home, max_attempts=1)
    fail_on_expired_links(defs, instance, demo_server, ["seq_001", "seq_003"])
    instance.delete_dynamic_partition(f"{DEMO}_sequences", "seq_003")

    # As the daemon evaluates a tick: run requests resolved against the partitions that exist now.
    with partition_loading_context(dynamic_partitions_store=instance), build_sensor_context(
            instance=instance, definitions=defs, resources=defs.resources) as context:
        first = defs.resolve_sensor_def(REFRESH_SENSOR).evaluate_tick(context)

    assert sorted((request.job_name, request.partition_key) for request in first.run_requests or []) == [
        (f"{DEMO}_sequence", "seq_001")]


def test_manifest_sensor_without_cursor_skips_downloaded_sequences_of_a_manifest_that_publishes_no_sha1(
    demo_catalog: Catalog, demo_server: DemoServer, home: Path, instance: DagsterInstance, tmp_path: Path
) -> None:
    published = json.loads(fetch_manifest(f"{demo_server.base_url}/manifest.json")[1])
    for config in published["atek_data_for_all_configs"].values():
        for files in config["wds_file_urls"].values():
            for entry in files.values():
                del entry["sha1sum"]
    without_sha1 = tmp_path / "manifest.json"
    without_sha1.write_text(json.dumps(published))
    spec = demo_catalog.dataset(DEMO)
    catalog = dataclasses.replace(demo_catalog, datasets={
        DEMO: dataclasses.replace(spec, manifest=ManifestSource(path=without_sha1))})
    defs = make_defs(catalog, home)
    first = tick(defs, instance, MANIFEST_SENSOR)
    add_requested_partitions(first, instance)
    seq_000 = next(request for request in first.run_requests or [] if request.partition_key == "seq_000")
    assert execute(defs, instance, seq_000).success

    reset = tick(defs, instance, MANIFEST_SENSOR)
    published["atek_data_for_all_configs"]["efm"]["wds_file_urls"]["seq_000"]["shards-0000_tar"][
        "file_size_bytes"] += 512
    without_sha1.write_text(json.dumps(published))
    resized = tick(defs, instance, MANIFEST_SENSOR)

    assert [partition for _, partition in requested(reset)] == [f"seq_{index:03d}" for index in range(1, 8)]
    assert [partition for _, partition in requested(resized)] == [f"seq_{index:03d}" for index in range(8)]


SECRET = "Signature=0123456789abcdef"
UNREADABLE_CURSORS = [
    f"https://example.invalid/shards-0000.tar?{SECRET}",  # not JSON
    "null", "42", f'"{SECRET}"', f'["{SECRET}"]', "[" * 100_000,
]
UNREADABLE_DIGESTS = [*UNREADABLE_CURSORS, '{"seq_000": 5}', f'{{"seq_000": ["{SECRET}"]}}']
NOW = "2026-01-01T00:00:00+00:00"
UNREADABLE_REFRESH_CURSORS = [
    *UNREADABLE_CURSORS, "{}", f'{{"failures_until": "{NOW}"}}',
    f'{{"failures_until": "{SECRET}", "refreshed_expiry": ""}}',
    '{"failures_until": "2026-01-01T00:00:00", "refreshed_expiry": ""}',  # no UTC offset
    '{"failures_until": 0, "refreshed_expiry": ""}', f'{{"failures_until": "{NOW}", "refreshed_expiry": 1}}',
    f'{{"failures_until": "{NOW}", "refreshed_expiry": "", "{SECRET}": ""}}',
]


def daemon_tick(defs: Definitions, instance: DagsterInstance, sensor_name: str, cursor: str | None,
                log_key: list[str]) -> SensorExecutionData:
    """One evaluation the way the code server runs it for a daemon tick, its log captured under `log_key`;
    a sensor that raises comes back as a `SensorExecutionErrorSnap`, a failed tick."""
    result = get_external_sensor_execution(defs.get_repository_def(), None, instance.get_ref(), sensor_name,
                                           None, None, cursor, log_key, None)
    assert isinstance(result, SensorExecutionData), result
    return result


def tick_log(instance: DagsterInstance, log_key: list[str]) -> tuple[list[str], str]:
    """The warnings a tick logged (as the UI shows them), and its whole captured log."""
    records = get_instigation_log_records(instance, log_key)
    warnings = [record["msg"] for record in records if record["levelname"] == "WARNING"]
    stderr = instance.compute_log_manager.get_log_data(log_key).stderr or b""
    return warnings, stderr.decode()


def assert_ticks_as_if_fresh(defs: Definitions, instance: DagsterInstance, sensor_name: str,
                             cursors: list[str]) -> None:
    """Each of `cursors` gives a successful tick requesting what a tick without cursor requests, with one
    warning that names the sensor and says the cursor was ignored, and nothing of the cursor in the log."""
    fresh = daemon_tick(defs, instance, sensor_name, None, ["fresh"])
    for index, cursor in enumerate(cursors):
        log_key = [sensor_name, f"tick_{index}"]
        result = daemon_tick(defs, instance, sensor_name, cursor, log_key)
        warnings, log = tick_log(instance, log_key)
        assert (result.run_requests, result.dynamic_partitions_requests, result.skip_message) == (
            fresh.run_requests, fresh.dynamic_partitions_requests, fresh.skip_message), cursor
        assert result.cursor == fresh.cursor, cursor
        assert len(warnings) == 1 and sensor_name in warnings[0] and "cursor ignored" in warnings[0], warnings
        assert SECRET not in log and "example.invalid" not in log


def test_manifest_sensor_ignores_an_unreadable_cursor_with_a_warning_and_ticks_as_if_it_had_none(
    demo_catalog: Catalog, home: Path, instance: DagsterInstance
) -> None:
    defs = make_defs(demo_catalog, home)

    assert_ticks_as_if_fresh(defs, instance, MANIFEST_SENSOR, UNREADABLE_DIGESTS)


def test_link_refresh_sensor_ignores_an_unreadable_cursor_with_a_warning_and_ticks_as_if_it_had_none(
    demo_catalog: Catalog, demo_server: DemoServer, home: Path, instance: DagsterInstance
) -> None:
    defs = make_defs(demo_catalog, home, max_attempts=1)
    fail_on_expired_links(defs, instance, demo_server, ["seq_001"])
    assert requested(tick(defs, instance, REFRESH_SENSOR)) == [(f"{DEMO}_sequence", "seq_001")]

    assert_ticks_as_if_fresh(defs, instance, REFRESH_SENSOR, UNREADABLE_REFRESH_CURSORS)
