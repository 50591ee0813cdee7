"""Secrets never leave through Dagster or the files we write.

One real DagsterInstance sees the demo graph materialized end to end, a run failing on expired
links, and a run streaming raw shards to S3 (moto on 127.0.0.1) with explicit credentials. Then
every event of every run (serialized whole: metadata, errors, log messages) and every file under
the data home and DAGSTER_HOME (the sqlite event log, captured compute logs, shards, YAMLs) is
searched for the signing secret, every signature the server issued, signed query strings and the
AWS secret key and session token. The only files exempt are those whose purpose is the live links:
`url_manifest.json` and the `streamable_*_tars.yaml` manifests, which must be private (mode 0600).
"""
from __future__ import annotations

import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from dagster import AssetKey, instance_for_test, serialize_value
from dagster_aws.s3 import S3Resource

from dataset_assets.cli import DEMO_URL_ENV
from dataset_assets.core.catalog import PACKAGED_CATALOG, load_catalog
from dataset_assets.core.manifest import load_manifest_file
from dataset_assets.defs.builder import build_definitions
from dataset_assets.defs.materialize import materialize_dataset
from dataset_assets.defs.resources import DatasetHome, TransferResource
from dataset_assets.demo.server import DemoServer
from dataset_assets_tests import s3_fixtures
from dataset_assets_tests.s3_fixtures import S3Bucket

moto_endpoint = s3_fixtures.moto_endpoint
moto_client = s3_fixtures.moto_client
s3_bucket = s3_fixtures.s3_bucket

DEMO = "demo_aria"
SEQUENCES = ["seq_000", "seq_001", "seq_002"]
SIGNED_QUERY_MARKERS = ("Signature=", "X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token")
MIN_FILES_SCANNED = 50
MIN_EVENTS_SCANNED = 150


def exempt(path: Path) -> bool:
    """Files whose purpose is the live links."""
    return path.name == "url_manifest.json" or (path.name.startswith("streamable_") and path.suffix == ".yaml")


@pytest.fixture
def secret_server(demo_source: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[DemoServer, bytes]]:
    secret = secrets.token_hex(24).encode()
    with DemoServer(demo_source, secret=secret) as server:
        monkeypatch.setenv(DEMO_URL_ENV, server.base_url)
        yield server, secret


@pytest.mark.slow
def test_no_secret_reaches_dagster_events_metadata_logs_or_written_files(
    tmp_path: Path, secret_server: tuple[DemoServer, bytes], s3_bucket: S3Bucket, capsys: pytest.CaptureFixture[str]
) -> None:
    server, secret = secret_server
    home, dagster_home = tmp_path / "home", tmp_path / "dagster_home"
    dagster_home.mkdir()
    aws_secret, aws_token = f"awsSECRET{secrets.token_hex(16)}", f"awsTOKEN{secrets.token_hex(16)}"
    catalog = load_catalog(PACKAGED_CATALOG)
    local = build_definitions(catalog, home=DatasetHome(root=str(home)), transfer=TransferResource(
        max_attempts=2, backoff_initial_seconds=0.01, backoff_max_seconds=0.05))
    to_s3 = build_definitions(catalog, home=DatasetHome(root=str(home)), transfer=TransferResource(
        destination=f"s3://{s3_bucket.name}/mirror", backoff_initial_seconds=0.01,
        s3=S3Resource(endpoint_url=s3_bucket.endpoint_url, region_name="us-east-1", aws_access_key_id="AKIDRELIABILITY",
                      aws_secret_access_key=aws_secret, aws_session_token=aws_token)))
    raw = AssetKey([DEMO, "raw_shards"])

    with instance_for_test(temp_dir=str(dagster_home)) as instance:
        summary = materialize_dataset(local, instance, DEMO, partitions=SEQUENCES[:2])
        manifest = load_manifest_file(home / DEMO / "url_manifest.json")
        to_s3_run = to_s3.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=[raw], partition_key=SEQUENCES[0])
        server.advance_clock(server.link_ttl_seconds + 60)
        expired = local.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=[raw], partition_key=SEQUENCES[2], raise_on_error=False)
        events = [serialize_value(entry) for run in instance.get_runs() for entry in instance.all_logs(run.run_id)]
        run_count = len(instance.get_runs())

    assert summary.failed_partitions == () and to_s3_run.success and not expired.success
    assert any("signed links expired" in event for event in events)
    assert len(s3_bucket.keys()) == 4
    signatures = {parse_qs(urlsplit(entry.url).query)["Signature"][0] for entry in manifest.all_entries()}
    forbidden = [secret.decode(), *signatures, *SIGNED_QUERY_MARKERS, aws_secret, aws_token]
    assert stat.S_IMODE((home / DEMO / "url_manifest.json").stat().st_mode) == 0o600
    streamable = list(home.rglob("streamable_*_tars.yaml"))
    assert streamable and {stat.S_IMODE(path.stat().st_mode) for path in streamable} == {0o600}
    assert any(signature in (home / DEMO / "url_manifest.json").read_text() for signature in signatures)

    files = [path for root in (home, dagster_home) for path in root.rglob("*") if path.is_file() and not exempt(path)]
    leaks = [(str(path), text) for path in files for text in forbidden if text.encode() in path.read_bytes()]
    leaks += [(f"event {index}", text) for index, event in enumerate(events) for text in forbidden if text in event]
    with capsys.disabled():
        print(f"\nsecrets scan: {len(forbidden)} secrets in {len(events)} events of {run_count} runs "
              f"and {len(files)} files")
    assert leaks == []
    assert len(files) >= MIN_FILES_SCANNED and len(events) >= MIN_EVENTS_SCANNED
