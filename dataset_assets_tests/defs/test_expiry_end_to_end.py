"""Links expire in the middle of a download run: the run fails at once on the expired links, the
link-refresh sensor re-requests the sequence, and the retry completes without fetching a byte twice.
A failure no later retry can cure fails the run at once too."""
import hashlib
import threading
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance

from dataset_assets.core.catalog import Catalog
from dataset_assets.core.manifest import load_manifest_file
from dataset_assets.defs.builder import build_definitions
from dataset_assets.defs.resources import DatasetHome, TransferResource
from dataset_assets.demo.server import DemoServer
from dataset_assets_tests.defs.conftest import DEMO
from dataset_assets_tests.defs.test_sensors import MANIFEST, RAW, REFRESH_SENSOR, execute, materialize, requested, tick

SEQUENCE = "seq_000"


def expire_links_once_requested(server: DemoServer, path: str, stop: threading.Event) -> threading.Thread:
    """Advance the server's clock past the link TTL as soon as `path` starts being served."""

    def watch() -> None:
        while not stop.is_set():
            if any(record.path == path for record in server.stats.requests):
                server.advance_clock(server.link_ttl_seconds + 60)
                return
            stop.wait(0.005)

    watcher = threading.Thread(target=watch, name="expire-links", daemon=True)
    watcher.start()
    return watcher


def test_links_expiring_mid_run_fail_fast_then_the_sensor_retry_completes_without_losing_bytes(
    demo_catalog: Catalog, demo_server: DemoServer, home: Path, instance: DagsterInstance
) -> None:
    # One file at a time, so the clock jumps while the first file is in flight and the rest are still to come.
    transfer = TransferResource(workers=1, max_attempts=3, backoff_initial_seconds=0.01, backoff_max_seconds=0.1)
    defs = build_definitions(demo_catalog, home=DatasetHome(root=str(home)), transfer=transfer)
    assert materialize(defs, instance, MANIFEST).success
    manifest = load_manifest_file(home / DEMO / "url_manifest.json")
    entries = [entry for config in ("cubercnn", "efm") for entry in manifest.entries(config, SEQUENCE)]
    first = entries[0]
    first_path, cut = f"/files/cubercnn/{first.relative_path}", (first.size or 0) // 3
    demo_server.faults.trickle(20_000, path_contains=first_path)
    demo_server.faults.drop_after_bytes(cut, path_contains=first_path)

    stop = threading.Event()
    watcher = expire_links_once_requested(demo_server, first_path, stop)
    failed = defs.resolve_job_def(f"{DEMO}_sequence").execute_in_process(
        instance=instance, partition_key=SEQUENCE, raise_on_error=False)
    stop.set()
    watcher.join()
    demo_server.faults.clear()

    assert not failed.success
    failures = [event for event in failed.all_events if event.event_type == DagsterEventType.STEP_FAILURE]
    assert [event.step_key for event in failures] == [RAW.to_python_identifier()]
    assert "signed links expired for 4 file(s)" in failures[0].step_failure_data.error.message
    assert not any(event.event_type == DagsterEventType.STEP_UP_FOR_RETRY for event in failed.all_events)
    raw = home / DEMO / "raw"
    assert (raw / "cubercnn" / f"{first.relative_path}.part").stat().st_size == cut

    retry_tick = tick(defs, instance, REFRESH_SENSOR)
    assert requested(retry_tick) == [(f"{DEMO}_sequence", SEQUENCE)]
    retried = execute(defs, instance, (retry_tick.run_requests or [])[0])
    assert retried.success
    assert requested(tick(defs, instance, REFRESH_SENSOR, retry_tick.cursor)) == []

    assert demo_server.stats.body_bytes_sent() == sum(entry.size or 0 for entry in entries)
    for entry in entries:
        assert hashlib.sha1((raw / entry.config / entry.relative_path).read_bytes()).hexdigest() == entry.sha1
    metadata = next(event.materialization.metadata for event in retried.get_asset_materialization_events()
                    if event.asset_key == RAW)
    assert (metadata["resumed"].value, metadata["downloaded"].value) == (1, 3)


def test_a_failure_retrying_cannot_cure_fails_the_download_step_without_step_retries(
    demo_catalog: Catalog, demo_server: DemoServer, home: Path, instance: DagsterInstance
) -> None:
    transfer = TransferResource(max_attempts=2, backoff_initial_seconds=0.01, backoff_max_seconds=0.1)
    defs = build_definitions(demo_catalog, home=DatasetHome(root=str(home)), transfer=transfer)
    assert materialize(defs, instance, MANIFEST).success
    first = load_manifest_file(home / DEMO / "url_manifest.json").entries("cubercnn", SEQUENCE)[0]
    demo_server.faults.fail_with_status(404, times=100, path_contains=f"/files/cubercnn/{first.relative_path}")

    failed = defs.resolve_job_def(f"{DEMO}_sequence").execute_in_process(
        instance=instance, partition_key=SEQUENCE, raise_on_error=False)

    assert not failed.success
    failures = [event for event in failed.all_events if event.event_type == DagsterEventType.STEP_FAILURE]
    assert [event.step_key for event in failures] == [RAW.to_python_identifier()]
    assert f"cubercnn/{first.relative_path}: TransferError" in failures[0].step_failure_data.error.message
    assert "HTTP 404" in failures[0].step_failure_data.error.message
    assert not any(event.event_type == DagsterEventType.STEP_UP_FOR_RETRY for event in failed.all_events)
