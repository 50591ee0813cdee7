"""Streaming downloads into an S3 bucket: moto's standalone server and the demo server, both on 127.0.0.1."""
from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from dataset_assets.core.errors import InvalidInputError
from dataset_assets.core.manifest import ManifestEntry, parse_manifest
from dataset_assets.core.s3 import MIB, MIN_PART_SIZE, MultipartSettings, S3Destination, S3Url
from dataset_assets.core.s3_resume import RECORD_SUFFIX, UploadRecord
from dataset_assets.core.transfer import (
    DownloadReport,
    TransferError,
    TransferSettings,
    download_entries,
    transfer_entries,
)
from dataset_assets.demo.server import DemoServer
from dataset_assets_tests import s3_fixtures
from dataset_assets_tests.s3_fixtures import S3Bucket

moto_endpoint = s3_fixtures.moto_endpoint
moto_client = s3_fixtures.moto_client
s3_bucket = s3_fixtures.s3_bucket

BIG = "big/seq_000/shards-0000.tar"
BIG_SIZE = 6 * MIN_PART_SIZE + 123_457
PARTS = MultipartSettings(part_size=MIN_PART_SIZE, concurrency=4)
FAST = TransferSettings(workers=4, max_attempts=3, backoff_initial_seconds=0.01, backoff_max_seconds=0.1)


@pytest.fixture(scope="module")
def big_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A source folder with one file of more than six 5 MiB parts and a few small ones."""
    folder = tmp_path_factory.mktemp("big_source")
    (folder / BIG).parent.mkdir(parents=True)
    (folder / BIG).write_bytes(hashlib.shake_256(b"big").digest(BIG_SIZE))
    for index in range(3):
        (folder / f"big/seq_001/shards-{index:04d}.tar").parent.mkdir(parents=True, exist_ok=True)
        (folder / f"big/seq_001/shards-{index:04d}.tar").write_bytes(bytes([index]) * 70_000)
    return folder


@pytest.fixture
def source_server(big_source: Path) -> Iterator[DemoServer]:
    with DemoServer(big_source) as server:
        yield server


def entries_of(server: DemoServer, sequence: str = "seq_000") -> list[ManifestEntry]:
    manifest = parse_manifest(httpx.get(server.manifest_url).json(), server.manifest_url)
    return list(manifest.entries("big", sequence))


def destination(bucket: S3Bucket, settings: MultipartSettings = PARTS) -> S3Destination:
    return S3Destination(bucket.client, S3Url(bucket.name, "mirror/raw"), settings)


class PartCalls:
    """boto3 event hooks counting UploadPart calls in flight (and optionally failing one part)."""

    def __init__(self, client: Any, fail_part: int | None = None) -> None:
        self.lock = threading.Lock()
        self.active = self.peak = self.calls = 0
        self.fail_part = fail_part
        self._client = client
        client.meta.events.register("before-parameter-build.s3.UploadPart", self.before)
        client.meta.events.register("after-call.s3.UploadPart", self.after)

    def before(self, params: dict[str, Any], **kwargs: Any) -> None:
        if params["PartNumber"] == self.fail_part:
            raise EndpointConnectionError(endpoint_url=f"injected failure of part {self.fail_part}")
        with self.lock:
            self.calls += 1
            self.active += 1
            self.peak = max(self.peak, self.active)

    def after(self, **kwargs: Any) -> None:
        with self.lock:
            self.active -= 1

    def remove(self) -> None:
        self._client.meta.events.unregister("before-parameter-build.s3.UploadPart", self.before)
        self._client.meta.events.unregister("after-call.s3.UploadPart", self.after)


@pytest.fixture
def part_calls(s3_bucket: S3Bucket) -> Iterator[PartCalls]:
    calls = PartCalls(s3_bucket.client)
    yield calls
    calls.remove()


def test_large_file_streams_to_s3_in_parts_with_several_in_flight(
    source_server: DemoServer, big_source: Path, s3_bucket: S3Bucket, part_calls: PartCalls
) -> None:
    [entry] = entries_of(source_server)
    key = "mirror/raw/seq_000/shards-0000.tar"
    # An upload a killed run left behind: its hash state is gone, so it is aborted, not continued.
    s3_bucket.client.create_multipart_upload(Bucket=s3_bucket.name, Key=key)

    report = download_entries([entry], {"big": destination(s3_bucket)}, FAST)

    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=key)
    assert part_calls.calls == 7 and part_calls.peak >= 2
    assert s3_bucket.read(key) == (big_source / BIG).read_bytes()
    assert head["Metadata"] == {"sha1": entry.sha1}
    assert head["ETag"].endswith('-7"')
    assert report.results[0].sha256 == hashlib.sha256((big_source / BIG).read_bytes()).hexdigest()
    assert s3_bucket.multipart_uploads() == []


def test_source_failure_mid_upload_leaves_no_object_and_no_multipart_upload(
    source_server: DemoServer, s3_bucket: S3Bucket, part_calls: PartCalls
) -> None:
    [entry] = entries_of(source_server)
    source_server.faults.drop_after_bytes(4 * MIN_PART_SIZE)

    with pytest.raises(TransferError, match="seq_000/shards-0000.tar: RemoteProtocolError"):
        download_entries([entry], {"big": destination(s3_bucket)}, TransferSettings(max_attempts=1))

    assert part_calls.calls >= 3
    assert s3_bucket.keys() == []
    assert s3_bucket.multipart_uploads() == []


def test_part_upload_failure_aborts_the_upload_and_names_the_object(source_server: DemoServer, s3_bucket: S3Bucket
                                                                    ) -> None:
    [entry] = entries_of(source_server)
    failing = PartCalls(s3_bucket.client, fail_part=3)
    try:
        with pytest.raises(TransferError, match="s3://.*/mirror/raw/seq_000/shards-0000.tar: S3 upload_part failed"):
            download_entries([entry], {"big": destination(s3_bucket)}, FAST)
    finally:
        failing.remove()

    assert s3_bucket.keys() == []
    assert s3_bucket.multipart_uploads() == []


def test_dropped_connection_continues_the_same_multipart_upload(
    source_server: DemoServer, big_source: Path, s3_bucket: S3Bucket
) -> None:
    [entry] = entries_of(source_server)
    cut = 2 * MIN_PART_SIZE + 1000
    source_server.faults.drop_after_bytes(cut)

    report = download_entries([entry], {"big": destination(s3_bucket)}, FAST)

    files = [r for r in source_server.stats.requests if r.path.startswith("/files/")]
    assert [r.range_header for r in files] == [None, f"bytes={cut}-"]
    assert source_server.stats.body_bytes_sent() == BIG_SIZE
    assert report.results[0].status == "resumed"
    assert s3_bucket.read("mirror/raw/seq_000/shards-0000.tar") == (big_source / BIG).read_bytes()


def test_two_runs_of_the_same_partition_at_once_both_succeed_leaving_one_object_and_no_upload(
    source_server: DemoServer, big_source: Path, s3_bucket: S3Bucket
) -> None:
    [entry] = entries_of(source_server)
    source_server.faults.trickle(BIG_SIZE)  # about a second per run, so the two uploads overlap
    reports: dict[str, DownloadReport] = {}

    def run(name: str) -> None:
        reports[name] = transfer_entries([entry], {"big": destination(s3_bucket)}, FAST)

    first = threading.Thread(target=run, args=("first",))
    first.start()
    while not s3_bucket.multipart_uploads():
        time.sleep(0.01)
    second = threading.Thread(target=run, args=("second",))
    second.start()
    first.join()
    second.join()

    assert reports["first"].failures == {} and reports["second"].failures == {}
    assert s3_bucket.read("mirror/raw/seq_000/shards-0000.tar") == (big_source / BIG).read_bytes()
    assert s3_bucket.multipart_uploads() == []


def test_small_files_are_single_puts_carrying_sha1_and_sha256_and_no_upload_record_is_looked_for(
    source_server: DemoServer, big_source: Path, s3_bucket: S3Bucket, part_calls: PartCalls
) -> None:
    entries = entries_of(source_server, "seq_001")
    gets: list[str] = []

    def count_get(params: dict[str, Any], **kwargs: Any) -> None:
        gets.append(params["Key"])

    with s3_bucket.hooked("before-parameter-build.s3.GetObject", count_get):
        download_entries(entries, {"big": destination(s3_bucket)}, FAST)

    assert part_calls.calls == 0
    assert gets == []  # smaller than a part: no upload record is looked for
    for entry in entries:
        data = (big_source / "big" / entry.relative_path).read_bytes()
        head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=f"mirror/raw/{entry.relative_path}")
        assert head["Metadata"] == {"sha1": hashlib.sha1(data).hexdigest(),
                                    "sha256": hashlib.sha256(data).hexdigest()}


def test_a_multipart_object_keeps_both_digests_for_later_runs_also_without_a_manifest_sha1(
    source_server: DemoServer, big_source: Path, s3_bucket: S3Bucket
) -> None:
    [entry] = entries_of(source_server)
    unchecked = dataclasses.replace(entry, sha1=None)
    data = (big_source / BIG).read_bytes()
    digests = {"sha1": hashlib.sha1(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest()}

    first = download_entries([unchecked], {"big": destination(s3_bucket)}, FAST)
    second = download_entries([unchecked], {"big": destination(s3_bucket)}, FAST)

    tags = s3_bucket.client.get_object_tagging(Bucket=s3_bucket.name, Key="mirror/raw/seq_000/shards-0000.tar")
    assert {tag["Key"]: tag["Value"] for tag in tags["TagSet"]} == digests
    assert [result.status for result in first.results + second.results] == ["downloaded", "skipped"]
    for report in (first, second):
        assert {"sha1": report.results[0].sha1, "sha256": report.results[0].sha256} == digests
    assert second.data_version == first.data_version


def test_a_missing_object_hidden_behind_403_is_uploaded(source_server: DemoServer, big_source: Path,
                                                        s3_bucket: S3Bucket) -> None:
    """S3 answers a HEAD of a missing key with 403 to credentials without s3:ListBucket. moto does
    not model that permission, so a boto3 hook answers a HEAD of a missing key that way."""
    forbidden = ClientError({"Error": {"Code": "403", "Message": "Forbidden"}}, "HeadObject")
    heads = 0

    def refuse_head(params: dict[str, Any], **kwargs: Any) -> None:
        nonlocal heads
        heads += 1
        if params["Key"] not in s3_bucket.keys():
            raise forbidden

    with s3_bucket.hooked("before-parameter-build.s3.HeadObject", refuse_head):
        report = download_entries(entries_of(source_server, "seq_001"), {"big": destination(s3_bucket)}, FAST)

    assert report.count("downloaded") == 3 and heads >= 6
    for result in report.results:
        source = big_source / "big" / result.relative_path
        assert s3_bucket.read(f"mirror/raw/{result.relative_path}") == source.read_bytes()


def test_verified_objects_are_skipped_and_mismatching_ones_replaced(source_server: DemoServer,
                                                                    s3_bucket: S3Bucket) -> None:
    entries = entries_of(source_server, "seq_001")
    target = destination(s3_bucket)
    download_entries(entries, {"big": target}, FAST)
    stale = f"mirror/raw/{entries[0].relative_path}"
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=stale, Body=b"\0" * 70_000, Metadata={"sha1": "0" * 40})
    source_server.stats.reset()

    report = download_entries(entries, {"big": target}, FAST)

    assert [r.path for r in source_server.stats.requests] == [f"/files/big/{entries[0].relative_path}"]
    assert report.count("skipped") == 2
    assert s3_bucket.read(stale) == bytes([0]) * 70_000


def test_a_run_that_skips_a_verified_object_aborts_the_incomplete_upload_a_killed_run_left_for_it(
    source_server: DemoServer, big_source: Path, s3_bucket: S3Bucket
) -> None:
    """A run killed while it re-uploaded a file leaves parts S3 bills for; the next run finds the object already
    published and verified, skips it without fetching it, and must still clean up behind it."""
    entries = entries_of(source_server, "seq_001")
    target = destination(s3_bucket)
    download_entries(entries, {"big": target}, FAST)
    key = f"mirror/raw/{entries[0].relative_path}"
    s3_bucket.leave_incomplete_upload(key)
    source_server.stats.reset()

    report = download_entries(entries, {"big": target}, FAST)

    assert [result.status for result in report.results] == ["skipped"] * 3
    assert source_server.stats.requests == []
    assert [upload for upload in s3_bucket.multipart_uploads() if upload["Key"] == key] == []
    assert s3_bucket.read(key) == (big_source / "big" / entries[0].relative_path).read_bytes()


def test_a_file_uploaded_in_one_put_aborts_the_incomplete_upload_an_earlier_run_left_for_it(
    source_server: DemoServer, big_source: Path, s3_bucket: S3Bucket
) -> None:
    """An earlier run with smaller parts was killed mid-upload of a small file; this run sends it in one
    PutObject, and the earlier run's parts go too."""
    [entry] = entries_of(source_server, "seq_001")[:1]
    key = f"mirror/raw/{entry.relative_path}"
    s3_bucket.leave_incomplete_upload(key)

    report = download_entries([entry], {"big": destination(s3_bucket)}, FAST)

    assert [result.status for result in report.results] == ["downloaded"]
    assert s3_bucket.multipart_uploads() == []
    assert s3_bucket.read(key) == (big_source / "big" / entry.relative_path).read_bytes()


def stop_after_two_recorded_parts(server: DemoServer, bucket: S3Bucket, entry: ManifestEntry) -> DownloadReport:
    """Transfer `entry` from a trickling source and set the stop once its upload's record holds two parts."""
    key = f"mirror/raw/{entry.relative_path}"
    server.faults.trickle(BIG_SIZE)  # about a second for the file
    stop = threading.Event()
    reports: list[DownloadReport] = []
    run = threading.Thread(target=lambda: reports.append(
        transfer_entries([entry], {"big": destination(bucket)}, FAST, stop=stop)))
    run.start()
    deadline = time.monotonic() + 30
    while bucket.recorded_bytes(key) < 2 * MIN_PART_SIZE and run.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    run.join()
    server.faults.clear()
    server.stats.reset()
    return reports[0]


def test_a_stopped_upload_is_left_with_its_record_and_the_next_run_continues_it(
    source_server: DemoServer, big_source: Path, s3_bucket: S3Bucket
) -> None:
    [entry] = entries_of(source_server)
    key = f"mirror/raw/{entry.relative_path}"

    stopped = stop_after_two_recorded_parts(source_server, s3_bucket, entry)

    left = s3_bucket.upload_record(key)
    assert stopped.interrupted == (f"big/{entry.relative_path}",)
    assert left is not None and left.held >= 2 * MIN_PART_SIZE and left.sha1 == entry.sha1
    assert [upload["UploadId"] for upload in s3_bucket.multipart_uploads()] == [left.upload_id]

    report = download_entries([entry], {"big": destination(s3_bucket)}, FAST)

    assert [result.status for result in report.results] == ["resumed"]
    assert [r.range_header for r in source_server.stats.requests] == [f"bytes={left.held}-"]
    assert source_server.stats.body_bytes_sent() == BIG_SIZE - left.held
    assert s3_bucket.read(key) == (big_source / BIG).read_bytes()
    assert report.results[0].sha256 == hashlib.sha256((big_source / BIG).read_bytes()).hexdigest()
    assert s3_bucket.multipart_uploads() == [] and s3_bucket.keys() == [key]


def test_an_upload_ended_by_an_expired_link_is_left_for_the_run_with_fresh_links_to_continue(
    big_source: Path, s3_bucket: S3Bucket
) -> None:
    key = "mirror/raw/seq_000/shards-0000.tar"
    with DemoServer(big_source, secret=b"expiring") as server:
        [entry] = entries_of(server)
        cut = 3 * MIN_PART_SIZE + 1000
        server.faults.drop_after_bytes(cut)

        def expire_links_once_streaming(nbytes: int) -> None:
            server.advance_clock(2 * server.link_ttl_seconds)  # the retry after the drop finds its link expired

        report = transfer_entries([entry], {"big": destination(s3_bucket)}, FAST, progress=expire_links_once_streaming)
        assert report.expired == (f"big/{entry.relative_path}",)
        left = s3_bucket.upload_record(key)
        assert left is not None and left.held == 3 * MIN_PART_SIZE
        assert [upload["UploadId"] for upload in s3_bucket.multipart_uploads()] == [left.upload_id]

        server.stats.reset()
        [fresh] = entries_of(server)
        report = download_entries([fresh], {"big": destination(s3_bucket)}, FAST)

    assert [result.status for result in report.results] == ["resumed"]
    assert [r.range_header for r in server.stats.requests if r.path.startswith("/files/")] == [
        f"bytes={left.held}-"]
    assert s3_bucket.read(key) == (big_source / BIG).read_bytes()
    assert s3_bucket.multipart_uploads() == [] and s3_bucket.keys() == [key]


def _other_sha1(bucket: S3Bucket, key: str, record: UploadRecord) -> None:
    bucket.client.put_object(Bucket=bucket.name, Key=key + RECORD_SUFFIX,
                             Body=dataclasses.replace(record, sha1="0" * 40).to_json())


def _upload_gone(bucket: S3Bucket, key: str, record: UploadRecord) -> None:
    bucket.client.abort_multipart_upload(Bucket=bucket.name, Key=key, UploadId=record.upload_id)


def _other_parts(bucket: S3Bucket, key: str, record: UploadRecord) -> None:
    first = dataclasses.replace(record.parts[0], etag='"0123456789abcdef0123456789abcdef"')
    bucket.client.put_object(Bucket=bucket.name, Key=key + RECORD_SUFFIX,
                             Body=dataclasses.replace(record, parts=(first, *record.parts[1:])).to_json())


def _garbled(bucket: S3Bucket, key: str, record: UploadRecord) -> None:
    bucket.client.put_object(Bucket=bucket.name, Key=key + RECORD_SUFFIX, Body=record.to_json()[:-9])


def _tiny_parts(bucket: S3Bucket, key: str, record: UploadRecord) -> None:
    bucket.client.put_object(Bucket=bucket.name, Key=key + RECORD_SUFFIX,
                             Body=dataclasses.replace(record, part_size=0).to_json())


@pytest.mark.parametrize("spoil", [_other_sha1, _upload_gone, _other_parts, _garbled, _tiny_parts])
def test_an_upload_whose_record_does_not_fit_is_not_continued_and_is_cleaned_up_after_a_fresh_upload(
    source_server: DemoServer, big_source: Path, s3_bucket: S3Bucket,
    spoil: Callable[[S3Bucket, str, UploadRecord], None]
) -> None:
    [entry] = entries_of(source_server)
    key = f"mirror/raw/{entry.relative_path}"
    stop_after_two_recorded_parts(source_server, s3_bucket, entry)
    left = s3_bucket.upload_record(key)
    assert left is not None
    spoil(s3_bucket, key, left)

    report = download_entries([entry], {"big": destination(s3_bucket)}, FAST)

    assert [result.status for result in report.results] == ["downloaded"]
    assert [r.range_header for r in source_server.stats.requests] == [None]
    assert s3_bucket.read(key) == (big_source / BIG).read_bytes()
    assert s3_bucket.multipart_uploads() == [] and s3_bucket.keys() == [key]


def test_an_upload_whose_parts_may_not_be_listed_is_not_continued_and_the_file_still_uploads(
    source_server: DemoServer, big_source: Path, s3_bucket: S3Bucket, caplog: pytest.LogCaptureFixture
) -> None:
    """Credentials without s3:ListMultipartUploadParts: the record cannot be checked, so a fresh upload is made."""
    [entry] = entries_of(source_server)
    key = f"mirror/raw/{entry.relative_path}"
    stop_after_two_recorded_parts(source_server, s3_bucket, entry)

    def deny(**kwargs: Any) -> None:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "ListParts")

    with s3_bucket.hooked("before-call.s3.ListParts", deny):
        report = download_entries([entry], {"big": destination(s3_bucket)}, FAST)

    assert [result.status for result in report.results] == ["downloaded"]
    assert f"s3://{s3_bucket.name}/{key}: not continuing the upload of an earlier run: its parts could not be listed" \
        in caplog.text and "AccessDenied" in caplog.text
    assert s3_bucket.read(key) == (big_source / BIG).read_bytes()
    assert s3_bucket.multipart_uploads() == [] and s3_bucket.keys() == [key]


@pytest.mark.parametrize("url", ["http://bucket/x", "s3://", "s3://bucket/x?y=1"])
def test_bad_s3_url_is_refused_naming_the_value(url: str) -> None:
    with pytest.raises(InvalidInputError, match=r"field 'destination' must look like s3://bucket/prefix"):
        S3Url.parse(url)


def test_parts_smaller_than_the_s3_minimum_are_refused() -> None:
    with pytest.raises(InvalidInputError, match=r"field 'part_size' must be at least 5242880 bytes .*got 1048576"):
        MultipartSettings(part_size=MIB)
