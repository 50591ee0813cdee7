"""S3 fixtures: moto's standalone server on 127.0.0.1, reached only through boto3 with `endpoint_url`.

`moto_endpoint` starts one server per test session (dummy credentials in the environment) and
`moto_client` is a boto3 client for it; `s3_bucket` creates a fresh, uniquely named bucket per
test, so tests never see each other's objects. Test modules bind the fixtures by assignment
(`s3_bucket = s3_fixtures.s3_bucket`, and the fixtures it depends on).
"""
from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from moto.server import ThreadedMotoServer

from dataset_assets.core.s3 import MIB, make_s3_client
from dataset_assets.core.s3_resume import RECORD_SUFFIX, UploadRecord

DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Bucket:
    """A bucket on the moto server and a boto3 client for it."""

    name: str
    endpoint_url: str
    client: Any

    def keys(self) -> list[str]:
        return [item["Key"] for item in self.client.list_objects_v2(Bucket=self.name).get("Contents", [])]

    def multipart_uploads(self) -> list[dict[str, Any]]:
        return self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", [])

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def upload_record(self, key: str) -> UploadRecord | None:
        """The record of `key`'s incomplete upload (`core.s3_resume`), if the bucket holds one."""
        if key + RECORD_SUFFIX not in self.keys():
            return None
        return UploadRecord.parse(self.read(key + RECORD_SUFFIX), f"{self.name}/{key}{RECORD_SUFFIX}")

    def recorded_bytes(self, key: str) -> int:
        """How many bytes the record of `key`'s incomplete upload says its parts hold; 0 without a record."""
        record = self.upload_record(key)
        return 0 if record is None else record.held

    @contextlib.contextmanager
    def hooked(self, event: str, handler: Callable[..., None]) -> Iterator[None]:
        """Within the block, botocore calls `handler` on `event` (such as "before-call.s3.ListParts") of every
        call this bucket's client makes."""
        self.client.meta.events.register(event, handler)
        try:
            yield
        finally:
            self.client.meta.events.unregister(event, handler)

    def leave_incomplete_upload(self, key: str) -> None:
        """What a run killed mid-upload leaves: a multipart upload with one part and no CompleteMultipartUpload."""
        upload = self.client.create_multipart_upload(Bucket=self.name, Key=key)
        self.client.upload_part(Bucket=self.name, Key=key, UploadId=upload["UploadId"], PartNumber=1,
                                Body=b"x" * (5 * MIB))


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The `endpoint_url` of a moto S3 server on a random loopback port, with dummy AWS credentials set."""
    saved = {name: os.environ.get(name) for name in DUMMY_AWS_ENV}
    os.environ.update(DUMMY_AWS_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def moto_client(moto_endpoint: str) -> Any:
    """One boto3 client for the session (creating one costs most of a second)."""
    return make_s3_client(endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def s3_bucket(moto_endpoint: str, moto_client: Any) -> S3Bucket:
    name = f"test-{uuid.uuid4().hex[:12]}"
    moto_client.create_bucket(Bucket=name)
    return S3Bucket(name, moto_endpoint, moto_client)
