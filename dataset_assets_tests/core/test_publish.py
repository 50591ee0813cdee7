"""Publishing versions to moto's standalone S3 server, and the round trip back over its public HTTP URLs."""
from __future__ import annotations

import _thread
import hashlib
import json
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError

from dataset_assets.core.errors import DatasetAssetsError
from dataset_assets.core.publish import PublishReport, list_published_versions, publish_folder, version_destination
from dataset_assets.core.s3 import MIB
from dataset_assets.core.storage import StorageError
from dataset_assets.core.versioned import PublishSpec, download_components, load_annotations, pack_assets
from dataset_assets_tests import s3_fixtures
from dataset_assets_tests.core.handlers.helpers import write_catalog
from dataset_assets_tests.core.test_versioned import DS, FAST, V1, V2, make_version, packed_tree, tree, versioned_body
from dataset_assets_tests.s3_fixtures import S3Bucket

moto_endpoint = s3_fixtures.moto_endpoint
moto_client = s3_fixtures.moto_client
s3_bucket = s3_fixtures.s3_bucket

UPLOADS = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")
FILES = ["assets.tar", "features.tar", "annotations.json.gz"]


class S3Calls:
    """Counts the S3 operations a client sends (boto3 event hooks, removed on exit); can fail one part upload."""

    def __init__(self, client: Any, fail_part: int | None = None) -> None:
        self.counts: Counter[str] = Counter()
        self.fail_part = fail_part
        self._events = client.meta.events

    def __enter__(self) -> S3Calls:
        self._events.register("before-call.s3", self.count)
        self._events.register("before-parameter-build.s3.UploadPart", self.fail)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._events.unregister("before-call.s3", self.count)
        self._events.unregister("before-parameter-build.s3.UploadPart", self.fail)

    def count(self, model: Any, **kwargs: Any) -> None:
        self.counts[model.name] += 1

    def fail(self, params: dict[str, Any], **kwargs: Any) -> None:
        if params["PartNumber"] == self.fail_part:
            raise EndpointConnectionError(endpoint_url=f"injected failure of part {self.fail_part}")

    @property
    def uploads(self) -> int:
        return sum(self.counts[name] for name in UPLOADS)


def spec_for(bucket: S3Bucket, part_size_mib: int = 5, concurrency: int = 3) -> PublishSpec:
    return PublishSpec(bucket.name, "public", part_size_mib, concurrency, bucket.endpoint_url)


def big_version(folder: Path) -> Path:
    """A packed version whose assets.tar spans three 5 MiB parts."""
    (folder / "assets" / "big").mkdir(parents=True)
    (folder / "assets" / "big" / "mesh.glb").write_bytes(hashlib.shake_256(b"mesh").digest(11 * MIB))
    (folder / "assets" / "big" / "annotations.json").write_text(json.dumps({"uid": "big", "category": "sofa"}))
    return make_version(folder)


def make_public(bucket: S3Bucket) -> str:
    """Allow anonymous GetObject, as a public R2/S3 bucket does; return the bucket's public base URL."""
    statement = {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                 "Resource": f"arn:aws:s3:::{bucket.name}/*"}
    bucket.client.put_bucket_policy(Bucket=bucket.name,
                                    Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]}))
    return f"{bucket.endpoint_url}/{bucket.name}"


def test_publish_uploads_parts_in_parallel_and_stores_size_and_checksum(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    folder = big_version(tmp_path / V1)
    with S3Calls(s3_bucket.client) as calls:
        report = publish_folder(folder, FILES, version_destination(spec_for(s3_bucket), DS, V1, s3_bucket.client))

    assert [(file.name, file.status) for file in report.files] == [(name, "uploaded") for name in FILES]
    assert calls.counts["UploadPart"] == 3 and calls.counts["CompleteMultipartUpload"] == 1
    for name in FILES:
        key = f"public/{DS}/{V1}/{name}"
        data = (folder / name).read_bytes()
        head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=key)
        assert head["ContentLength"] == len(data)
        assert head["Metadata"]["sha1"] == hashlib.sha1(data).hexdigest()
        assert s3_bucket.read(key) == data
    assert report.metadata()["sha256"]["assets.tar"] == hashlib.sha256((folder / "assets.tar").read_bytes()).hexdigest()
    assert s3_bucket.multipart_uploads() == []


def test_republish_uploads_nothing_and_a_changed_file_is_uploaded_again(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    folder = big_version(tmp_path / V1)
    destination = version_destination(spec_for(s3_bucket), DS, V1, s3_bucket.client)
    publish_folder(folder, FILES, destination)
    with S3Calls(s3_bucket.client) as calls:
        again = publish_folder(folder, FILES, destination)
    assert [file.status for file in again.files] == ["skipped"] * 3
    assert calls.uploads == 0 and calls.counts["HeadObject"] == 3

    (folder / "assets" / "obj000" / "albedo.jpg").write_bytes(b"new texture")
    pack_assets(folder / "assets", folder / "assets.tar")
    changed = publish_folder(folder, FILES, destination)
    assert [file.status for file in changed.files] == ["uploaded", "skipped", "skipped"]


def test_a_publish_that_skips_an_object_aborts_the_incomplete_upload_a_killed_run_left_for_it(
        tmp_path: Path, s3_bucket: S3Bucket) -> None:
    """A run killed while it re-uploaded a file leaves parts S3 bills for; the next run finds the object
    already published and verified, skips it, and must still clean up behind it."""
    folder = big_version(tmp_path / V1)
    destination = version_destination(spec_for(s3_bucket), DS, V1, s3_bucket.client)
    publish_folder(folder, FILES, destination)
    for name in FILES:
        s3_bucket.leave_incomplete_upload(f"public/{DS}/{V1}/{name}")

    again = publish_folder(folder, FILES, destination)

    assert [file.status for file in again.files] == ["skipped"] * 3
    for name in FILES:
        key = f"public/{DS}/{V1}/{name}"
        listed = s3_bucket.client.list_multipart_uploads(Bucket=s3_bucket.name, Prefix=key)
        assert listed.get("Uploads", []) == [], key
        assert s3_bucket.read(key) == (folder / name).read_bytes()


def test_a_publish_goes_on_with_the_upload_a_killed_run_left_uploading_only_the_rest(
        tmp_path: Path, s3_bucket: S3Bucket) -> None:
    """The killed run is played in this process: a sink is fed the first parts of assets.tar and then
    dropped without being closed, which leaves in the bucket what a killed process leaves."""
    folder = big_version(tmp_path / V1)
    destination = version_destination(spec_for(s3_bucket, concurrency=1), DS, V1, s3_bucket.client)
    data = (folder / "assets.tar").read_bytes()
    key = f"public/{DS}/{V1}/assets.tar"
    killed = destination.open("assets.tar", hashlib.sha1(data).hexdigest())
    killed.restart(None, len(data))
    killed.write(data[:2 * 5 * MIB + 1000])
    deadline = time.monotonic() + 20
    while s3_bucket.recorded_bytes(key) < 2 * 5 * MIB:
        assert time.monotonic() < deadline, "no record of two parts"
        time.sleep(0.01)

    with S3Calls(s3_bucket.client) as calls:
        report = publish_folder(folder, FILES, destination)

    assert [file.status for file in report.files] == ["uploaded"] * 3
    assert calls.counts["UploadPart"] == 1 and calls.counts["CreateMultipartUpload"] == 0
    assert s3_bucket.read(key) == data
    assert s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=key)["Metadata"]["sha1"] == hashlib.sha1(
        data).hexdigest()
    assert s3_bucket.multipart_uploads() == []
    assert sorted(s3_bucket.keys()) == sorted(f"public/{DS}/{V1}/{name}" for name in FILES)


def test_ctrl_c_mid_publish_keeps_the_upload_and_the_next_publish_continues_it(
        tmp_path: Path, s3_bucket: S3Bucket) -> None:
    """The SIGINT is raised in this (the main) thread by `_thread.interrupt_main`, once two parts are uploaded."""
    folder = big_version(tmp_path / V1)
    destination = version_destination(spec_for(s3_bucket, concurrency=1), DS, V1, s3_bucket.client)
    key = f"public/{DS}/{V1}/assets.tar"
    data = (folder / "assets.tar").read_bytes()
    uploaded: list[object] = []

    def interrupt_after_two_parts(**kwargs: Any) -> None:
        uploaded.append(kwargs)
        if len(uploaded) == 2:
            _thread.interrupt_main()

    with s3_bucket.hooked("after-call.s3.UploadPart", interrupt_after_two_parts), pytest.raises(KeyboardInterrupt):
        publish_folder(folder, FILES, destination)
    left = s3_bucket.upload_record(key)
    assert left is not None
    assert [upload["UploadId"] for upload in s3_bucket.multipart_uploads()] == [left.upload_id]
    assert key not in s3_bucket.keys()

    with S3Calls(s3_bucket.client) as calls:
        report = publish_folder(folder, FILES, destination)

    assert [file.status for file in report.files] == ["uploaded"] * 3
    assert calls.counts["CreateMultipartUpload"] == 0 and calls.counts["UploadPart"] == 3 - len(left.parts)
    assert s3_bucket.read(key) == data
    assert s3_bucket.multipart_uploads() == []
    assert sorted(s3_bucket.keys()) == sorted(f"public/{DS}/{V1}/{name}" for name in FILES)


def test_a_file_uploaded_in_one_put_aborts_the_incomplete_upload_an_earlier_run_left_for_it(
        tmp_path: Path, s3_bucket: S3Bucket) -> None:
    """An earlier run with smaller parts was killed mid-upload of annotations.json.gz; this run sends the
    small file in one PutObject, and the earlier run's parts go too."""
    folder = big_version(tmp_path / V1)
    key = f"public/{DS}/{V1}/annotations.json.gz"
    s3_bucket.leave_incomplete_upload(key)

    report = publish_folder(folder, ["annotations.json.gz"],
                            version_destination(spec_for(s3_bucket), DS, V1, s3_bucket.client))

    assert [file.status for file in report.files] == ["uploaded"]
    assert s3_bucket.multipart_uploads() == []
    assert s3_bucket.read(key) == (folder / "annotations.json.gz").read_bytes()


def test_a_concurrent_publish_of_the_same_version_that_aborts_our_upload_counts_as_published(
        tmp_path: Path, s3_bucket: S3Bucket) -> None:
    """Two runs of one partition (a backfill and a manual run): the first to complete aborts the other's
    multipart upload as stale, and the other then finds the object published and verified."""
    folder = big_version(tmp_path / V1)
    client = boto3.session.Session().client("s3", endpoint_url=s3_bucket.endpoint_url, region_name="us-east-1",
                                            config=Config(retries={"max_attempts": 1}))
    others: list[PublishReport] = []

    def other_run_finishes_first(**kwargs: Any) -> None:
        if not others:
            others.append(publish_folder(folder, FILES, version_destination(spec_for(s3_bucket), DS, V1,
                                                                            s3_bucket.client)))

    client.meta.events.register("before-call.s3.CompleteMultipartUpload", other_run_finishes_first)
    report = publish_folder(folder, FILES, version_destination(spec_for(s3_bucket), DS, V1, client))

    assert [file.status for file in others[0].files] == ["uploaded"] * 3
    assert [file.status for file in report.files] == ["skipped"] * 3
    assert s3_bucket.read(f"public/{DS}/{V1}/assets.tar") == (folder / "assets.tar").read_bytes()
    assert s3_bucket.multipart_uploads() == []


def test_a_failed_part_aborts_the_upload_and_nothing_becomes_visible(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    folder = big_version(tmp_path / V1)
    destination = version_destination(spec_for(s3_bucket), DS, V1, s3_bucket.client)
    with S3Calls(s3_bucket.client, fail_part=2), pytest.raises(
            StorageError, match=rf"s3://{s3_bucket.name}/public/{DS}/{V1}/assets.tar: S3 upload_part"):
        publish_folder(folder, FILES, destination)
    assert s3_bucket.keys() == []
    assert s3_bucket.multipart_uploads() == []


def test_publishing_a_version_with_a_missing_file_names_it_and_uploads_nothing(
        tmp_path: Path, s3_bucket: S3Bucket) -> None:
    folder = make_version(tmp_path / V1)
    (folder / "features.tar").unlink()
    with pytest.raises(DatasetAssetsError, match=rf"missing {folder / 'features.tar'}"):
        publish_folder(folder, FILES, version_destination(spec_for(s3_bucket), DS, V1, s3_bucket.client))
    assert s3_bucket.keys() == []


def test_published_versions_are_those_whose_annotations_exist(s3_bucket: S3Bucket) -> None:
    for key in (f"public/{DS}/{V1}/annotations.json.gz", f"public/{DS}/{V2}/assets.tar",
                f"public/{DS}/latest/annotations.json.gz", f"public/{DS}/2023_02_30/annotations.json.gz",
                "public/other/2024_01_01/annotations.json.gz"):
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=key, Body=b"x")
    assert list_published_versions(spec_for(s3_bucket), DS, s3_bucket.client) == [V1]


def test_listing_versions_at_an_unreachable_endpoint_names_it_without_its_credentials(
        moto_endpoint: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://minio:s3cr3t@127.0.0.1:{port}"
    client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                            config=Config(retries={"max_attempts": 1}))

    with pytest.raises(StorageError, match=f"s3://releases/public/{DS}/: S3 list_objects_v2 failed") as raised:
        list_published_versions(PublishSpec("releases", "public", endpoint_url=endpoint), DS, client)

    assert f"127.0.0.1:{port}" in str(raised.value)
    assert "s3cr3t" not in str(raised.value)


def test_prepare_pack_publish_then_download_gives_the_same_tree_and_annotations(
        tmp_path: Path, s3_bucket: S3Bucket) -> None:
    public = make_public(s3_bucket)
    produced = {V1: big_version(tmp_path / "producer" / V1), V2: make_version(tmp_path / "producer" / V2)}
    spec = spec_for(s3_bucket)
    for version, folder in produced.items():
        publish_folder(folder, FILES, version_destination(spec, DS, version, s3_bucket.client))
    body = versioned_body(f"{public}/public/{DS}", annotations={}, assets={}, features={})
    source = write_catalog(tmp_path, {DS: body}).dataset(DS).versioned
    assert source is not None

    for version, producer in produced.items():
        download_components(DS, source, version, tmp_path / "cache", list(source.components), FAST)
        folder = tmp_path / "cache" / DS / version
        assert (folder / "annotations.json.gz").read_bytes() == (producer / "annotations.json.gz").read_bytes()
        assert load_annotations(folder / "annotations.json.gz") == load_annotations(producer / "annotations.json.gz")
        assert tree(folder / "assets") == packed_tree(producer / "assets")
        assert tree(folder / "features") == packed_tree(producer / "features")
    assert "big/mesh.glb" in tree(tmp_path / "cache" / DS / V1 / "assets")
    assert "big/mesh.glb" not in tree(tmp_path / "cache" / DS / V2 / "assets")
    assert sorted(s3_bucket.keys()) == sorted(f"public/{DS}/{version}/{name}" for version in (V1, V2) for name in FILES)
