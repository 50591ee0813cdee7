"""raw_shards streams into an S3 destination (dagster-aws S3Resource on moto) and keeps secrets out of Dagster."""
from __future__ import annotations

import json
import traceback
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance
from dagster_aws.s3 import S3Resource

from dataset_assets.core.catalog import Catalog
from dataset_assets.core.manifest import load_manifest_file
from dataset_assets.defs.builder import build_definitions
from dataset_assets.defs.resources import DatasetHome, TransferResource
from dataset_assets.demo.server import DemoServer
from dataset_assets_tests import s3_fixtures
from dataset_assets_tests.defs.conftest import DEMO
from dataset_assets_tests.s3_fixtures import S3Bucket

moto_endpoint = s3_fixtures.moto_endpoint
moto_client = s3_fixtures.moto_client
s3_bucket = s3_fixtures.s3_bucket

RAW = AssetKey([DEMO, "raw_shards"])
MANIFEST = AssetKey([DEMO, "url_manifest"])


def test_raw_shards_stream_to_the_s3_destination_with_counts_bytes_and_throughput(
    demo_catalog: Catalog, home: Path, instance: DagsterInstance, s3_bucket: S3Bucket
) -> None:
    transfer = TransferResource(destination=f"s3://{s3_bucket.name}/mirror", backoff_initial_seconds=0.01,
                                s3=S3Resource(endpoint_url=s3_bucket.endpoint_url, region_name="us-east-1"))
    defs = build_definitions(demo_catalog, home=DatasetHome(root=str(home)), transfer=transfer)
    job = defs.resolve_implicit_global_asset_job_def()
    job.execute_in_process(instance=instance, asset_selection=[MANIFEST])

    assert job.execute_in_process(instance=instance, asset_selection=[RAW], partition_key="seq_000").success

    expected = sorted(f"mirror/{DEMO}/raw/{config}/seq_000/shards-000{index}.tar"
                      for config in ("cubercnn", "efm") for index in range(2))
    assert sorted(s3_bucket.keys()) == expected
    assert not (home / DEMO / "raw").exists()
    record = instance.fetch_materializations(AssetRecordsFilter(asset_key=RAW, asset_partitions=["seq_000"]),
                                             limit=1).records[0]
    metadata = record.asset_materialization.metadata
    assert (metadata["downloaded"].value, metadata["failed"].value) == (4, 0)
    assert metadata["bytes_fetched"].value == sum(
        s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=key)["ContentLength"] for key in expected)
    assert metadata["throughput_mib_per_second"].value > 0
    assert metadata["destinations"].value["efm"] == f"s3://{s3_bucket.name}/mirror/{DEMO}/raw/efm"


def test_no_signed_query_string_reaches_dagster_logs_errors_or_metadata(
    demo_catalog: Catalog, home: Path, instance: DagsterInstance, demo_server: DemoServer
) -> None:
    defs = build_definitions(demo_catalog, home=DatasetHome(root=str(home)),
                             transfer=TransferResource(backoff_initial_seconds=0.01, max_attempts=3))
    job = defs.resolve_implicit_global_asset_job_def()
    job.execute_in_process(instance=instance, asset_selection=[MANIFEST])
    manifest = load_manifest_file(home / DEMO / "url_manifest.json")
    signatures = {parse_qs(urlsplit(e.url).query)["Signature"][0] for e in manifest.all_entries()}
    demo_server.faults.fail_with_status(500, times=2)
    demo_server.faults.drop_after_bytes(1000)

    ok = job.execute_in_process(instance=instance, asset_selection=[RAW], partition_key="seq_000")
    demo_server.advance_clock(3601)
    expired = job.execute_in_process(instance=instance, asset_selection=[RAW], partition_key="seq_001",
                                     raise_on_error=False)

    assert ok.success and not expired.success
    texts = [json.dumps(str(event)) for run in (ok, expired) for event in instance.all_logs(run.run_id)]
    assert any("signed links expired for 4 file(s)" in text for text in texts)
    assert any("throughput_mib_per_second" in text for text in texts)
    for text in texts:
        assert "Signature=" not in text
        assert not any(signature in text for signature in signatures)


def test_s3_client_settings_without_a_destination_are_refused_instead_of_downloading_to_the_home_folder() -> None:
    with pytest.raises(ValueError, match=r"TransferResource: 's3' is set but 'destination' is not"):
        TransferResource(s3=S3Resource(endpoint_url="http://127.0.0.1:9000", region_name="us-east-1"))


def test_a_refused_transfer_resource_does_not_echo_its_s3_credentials() -> None:
    """Pydantic shows the input of a failed validation in its message: the code location's load error
    (Dagster UI, daemon and CLI output) would print the S3 secret key and session token."""
    s3 = S3Resource(endpoint_url="http://127.0.0.1:9000", region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE",
                    aws_secret_access_key="awsSECRETkey0123456789", aws_session_token="awsTOKEN0123456789")
    with pytest.raises(ValueError, match=r"TransferResource: 's3' is set but 'destination' is not") as raised:
        TransferResource(s3=s3)

    shown = "".join(traceback.format_exception(raised.value))
    assert "awsSECRETkey0123456789" not in shown and "awsTOKEN0123456789" not in shown
