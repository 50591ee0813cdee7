"""Versioned datasets in a real DagsterInstance: one partition per version, from a loopback provider to moto S3."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    SensorResult,
    build_sensor_context,
)

from dataset_assets.core.catalog import Catalog
from dataset_assets.core.errors import UnsafeArchiveError
from dataset_assets.core.publish import publish_folder, version_destination
from dataset_assets.core.versioned import DEFAULT_MAX_EXTRACT_BYTES, pack_assets
from dataset_assets.defs.builder import build_definitions
from dataset_assets.defs.resources import DatasetHome, TransferResource
from dataset_assets_tests import s3_fixtures
from dataset_assets_tests.core.handlers.helpers import write_catalog
from dataset_assets_tests.core.test_publish import FILES, make_public, spec_for
from dataset_assets_tests.core.test_versioned import (
    DS,
    V1,
    V2,
    _member,
    crafted_tar,
    make_version,
    packed_tree,
    serve_version,
    tree,
    versioned_body,
)
from dataset_assets_tests.s3_fixtures import S3Bucket
from dataset_assets_tests.static_server import StaticServer

moto_endpoint = s3_fixtures.moto_endpoint
moto_client = s3_fixtures.moto_client
s3_bucket = s3_fixtures.s3_bucket
DOWNLOADS = ("annotations", "assets", "features", "base_data")


def publish_section(bucket: S3Bucket) -> dict:
    return {"bucket": bucket.name, "prefix": "public", "part_size_mib": 5, "concurrency": 2,
            "endpoint_url": bucket.endpoint_url}


def make_defs(catalog: Catalog, tmp_path: Path) -> Definitions:
    home = DatasetHome(root=str(tmp_path / "home"), versioned_root=str(tmp_path / "cache"))
    return build_definitions(catalog, home=home, transfer=TransferResource(max_attempts=1))


def run(defs: Definitions, instance: DagsterInstance, version: str, *names: str,
        raise_on_error: bool = True) -> ExecuteInProcessResult:
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(instance=instance, partition_key=version, raise_on_error=raise_on_error,
                                  asset_selection=[AssetKey([DS, name]) for name in names])


def metadata(instance: DagsterInstance, name: str, version: str) -> dict:
    [record] = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey([DS, name]), asset_partitions=[version]), limit=1).records
    assert record.asset_materialization is not None
    return {key: value.value for key, value in record.asset_materialization.metadata.items()}


def test_each_version_partition_materializes_into_its_own_folder_then_publishes_once(
        static_server: StaticServer, s3_bucket: S3Bucket, tmp_path: Path, instance: DagsterInstance) -> None:
    produced = {version: serve_version(static_server.folder, tmp_path / "producer", version) for version in (V1, V2)}
    catalog = write_catalog(tmp_path, {DS: versioned_body(static_server.base_url, publish=publish_section(s3_bucket))})
    defs = make_defs(catalog, tmp_path)

    for version in (V1, V2):
        assert run(defs, instance, version, *DOWNLOADS, "published").success
    for version, producer in produced.items():
        folder = tmp_path / "cache" / DS / version
        assert tree(folder / "assets") == packed_tree(producer / "assets")
        assert metadata(instance, "annotations", version)["objects"] == 3
        assert metadata(instance, "assets", version)["members"] == len(packed_tree(producer / "assets"))
        assert metadata(instance, "published", version)["status"] == dict.fromkeys(FILES, "uploaded")
        assert s3_bucket.read(f"public/{DS}/{version}/assets.tar") == (producer / "assets.tar").read_bytes()
    assert tree(tmp_path / "cache" / DS / V1 / "assets") != tree(tmp_path / "cache" / DS / V2 / "assets")

    assert run(defs, instance, V1, "published").success
    assert metadata(instance, "published", V1)["status"] == dict.fromkeys(FILES, "skipped")
    assert metadata(instance, "published", V1)["uploaded_bytes"] == 0


def test_a_crafted_assets_tar_fails_its_version_partition_and_extracts_nothing(
        static_server: StaticServer, tmp_path: Path, instance: DagsterInstance) -> None:
    serve_version(static_server.folder, tmp_path / "producer", V1)
    crafted_tar(static_server.folder / V1 / "assets.tar", _member("/etc/cron.d/evil"), b"x")
    defs = make_defs(write_catalog(tmp_path, {DS: versioned_body(static_server.base_url)}), tmp_path)

    with pytest.raises(UnsafeArchiveError, match="absolute"):
        run(defs, instance, V1, "assets")
    assert not (tmp_path / "cache" / DS / V1 / "assets").exists()
    assert run(defs, instance, V1, "annotations").success


def test_an_assets_tar_over_the_catalogs_extract_limit_fails_its_partition_until_the_catalog_raises_it(
        static_server: StaticServer, tmp_path: Path, instance: DagsterInstance) -> None:
    producer = serve_version(static_server.folder, tmp_path / "producer", V1)
    body = versioned_body(static_server.base_url)
    strict = make_defs(write_catalog(tmp_path, {DS: {**body, "extract": {"max_members": 3}}}), tmp_path)
    description = strict.resolve_assets_def(AssetKey([DS, "assets"])).descriptions_by_key[AssetKey([DS, "assets"])]
    assert f"(at most {DEFAULT_MAX_EXTRACT_BYTES} bytes and 3 members: the catalog's extract limits)" in description

    with pytest.raises(UnsafeArchiveError, match="more than 3 members .raise extract.max_members in the catalog"):
        run(strict, instance, V1, "assets")
    assert not (tmp_path / "cache" / DS / V1 / "assets").exists()

    raised = make_defs(write_catalog(tmp_path, {DS: {**body, "extract": {"max_members": 100}}}), tmp_path)
    assert run(raised, instance, V1, "assets").success
    assert tree(tmp_path / "cache" / DS / V1 / "assets") == packed_tree(producer / "assets")


def test_dynamic_versions_are_added_by_the_sensor_from_the_bucket_and_download_from_it(
        s3_bucket: S3Bucket, tmp_path: Path, instance: DagsterInstance) -> None:
    public = make_public(s3_bucket)
    producer = make_version(tmp_path / "producer" / V2)
    publish_folder(producer, FILES, version_destination(spec_for(s3_bucket), DS, V2, s3_bucket.client))
    body = versioned_body(f"{public}/public/{DS}", "dynamic", publish_section(s3_bucket),
                          annotations={}, assets={}, features={})
    defs = make_defs(write_catalog(tmp_path, {DS: body}), tmp_path)
    sensor = defs.resolve_sensor_def(f"{DS}_versions_sensor")

    result = sensor(build_sensor_context(instance=instance))
    assert isinstance(result, SensorResult)
    assert [request.partition_key for request in result.run_requests or []] == [V2]
    assert [list(request.partition_keys) for request in result.dynamic_partitions_requests or []] == [[V2]]
    instance.add_dynamic_partitions(f"{DS}_versions", [V2])
    assert run(defs, instance, V2, "annotations", "assets", "features").success
    assert tree(tmp_path / "cache" / DS / V2 / "assets") == packed_tree(producer / "assets")

    again = sensor(build_sensor_context(instance=instance))
    assert isinstance(again, SensorResult) and not again.run_requests


def test_published_check_passes_after_publishing_and_fails_naming_an_object_that_changed(
        static_server: StaticServer, s3_bucket: S3Bucket, tmp_path: Path, instance: DagsterInstance) -> None:
    serve_version(static_server.folder, tmp_path / "producer", V1)
    catalog = write_catalog(tmp_path, {DS: versioned_body(static_server.base_url, publish=publish_section(s3_bucket))})
    defs = make_defs(catalog, tmp_path)
    published = run(defs, instance, V1, *DOWNLOADS, "published")
    assert [(e.check_name, e.passed) for e in published.get_asset_check_evaluations()] == [
        ("objects_match_local", True)]

    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=f"public/{DS}/{V1}/assets.tar", Body=b"not the tar")
    check = AssetCheckKey(AssetKey([DS, "published"]), "objects_match_local")
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection=set(), asset_check_selection={check})
    result = job.execute_in_process(instance=instance, partition_key=V1, raise_on_error=False)
    [evaluation] = result.get_asset_check_evaluations()

    assert not evaluation.passed
    assert f"public/{DS}/{V1}/assets.tar: missing, or not" in (evaluation.description or "")


def test_publishing_annotations_that_describe_other_objects_than_the_repacked_assets_fails_uploading_nothing(
        s3_bucket: S3Bucket, tmp_path: Path, instance: DagsterInstance) -> None:
    folder = make_version(tmp_path / "cache" / DS / V1)
    shutil.rmtree(folder / "assets" / "obj001")
    pack_assets(folder / "assets", folder / "assets.tar")
    catalog = write_catalog(tmp_path, {DS: versioned_body("http://127.0.0.1:1", publish=publish_section(s3_bucket))})

    published = run(make_defs(catalog, tmp_path), instance, V1, "published", raise_on_error=False)

    assert not published.success
    [failure] = [event.step_failure_data for event in published.all_events if event.event_type_value == "STEP_FAILURE"]
    assert failure.user_failure_data is not None and failure.error is not None
    assert "only in annotations.json.gz: obj001" in failure.error.message
    assert s3_bucket.keys() == []


def test_asset_descriptions_name_the_source_without_its_credentials(tmp_path: Path) -> None:
    secret = "s3cr3t-t0ken"
    catalog = write_catalog(tmp_path, {DS: versioned_body(f"https://mirror:{secret}@downloads.example/objathor")})
    defs = make_defs(catalog, tmp_path)

    descriptions = {key: defs.resolve_assets_def(key).descriptions_by_key[key]
                    for key in (AssetKey([DS, name]) for name in DOWNLOADS)}

    assert all("https://downloads.example/objathor/" in text for text in descriptions.values())
    assert not any(secret in text or "mirror:" in text for text in descriptions.values())


def test_asset_descriptions_put_the_component_path_before_a_redacted_query_token(tmp_path: Path) -> None:
    secret = "s3cr3t-t0ken"
    catalog = write_catalog(tmp_path, {DS: versioned_body(f"https://downloads.example/objathor?sig={secret}")})
    defs = make_defs(catalog, tmp_path)

    description = defs.resolve_assets_def(AssetKey([DS, "assets"])).descriptions_by_key[AssetKey([DS, "assets"])]

    assert "https://downloads.example/objathor/{version}/assets.tar?<redacted>" in description
    assert secret not in description


def test_publish_descriptions_name_the_real_key_prefix_when_the_catalog_has_none(tmp_path: Path) -> None:
    publish = {"bucket": "releases", "endpoint_url": "http://127.0.0.1:1"}
    catalog = write_catalog(tmp_path, {DS: versioned_body("https://downloads.example/objathor", "dynamic", publish)})
    defs = make_defs(catalog, tmp_path)

    published = defs.resolve_assets_def(AssetKey([DS, "published"])).descriptions_by_key[AssetKey([DS, "published"])]
    sensor = defs.resolve_sensor_def(f"{DS}_versions_sensor").description or ""

    assert f"s3://releases/{DS}/<version>/" in published
    assert f"s3://releases/{DS}/," in sensor
    assert "//" + DS not in published + sensor
