"""Faults matrix: every fault the loopback source injects, through the real transfer engine.

Each case arms faults on one file of a sequence (the demo server on 127.0.0.1, real sockets)
and downloads the whole sequence. A case ends either with the verified bytes at the final
path or with a specific error naming the file, and then: nothing at the final path, the other
files downloaded exactly once, and a rerun with fresh links fetching only the bytes not already
held (the server's byte counters prove there is no duplicate full download). Disk full is a real
tiny tmpfs when this process may mount one (root); the S3 case stops and restarts moto's server.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from dataset_assets.core import storage
from dataset_assets.core.catalog import PACKAGED_CATALOG, load_catalog
from dataset_assets.core.errors import DatasetAssetsError
from dataset_assets.core.manifest import ManifestEntry, UrlManifest, parse_manifest
from dataset_assets.core.pipeline import preprocess_sequence
from dataset_assets.core.s3 import MIN_PART_SIZE, MultipartSettings, S3Destination, S3Url
from dataset_assets.core.transfer import (
    ChecksumMismatch,
    LinkExpired,
    PermanentTransferError,
    TransferError,
    TransferSettings,
    download_entries,
)
from dataset_assets.demo.server import DemoServer
from dataset_assets_tests.s3_fixtures import DUMMY_AWS_ENV

FAST = TransferSettings(workers=4, max_attempts=5, backoff_initial_seconds=0.01, backoff_max_seconds=0.5)
SEQUENCE = "seq_000"
TARGET = f"cubercnn/{SEQUENCE}/shards-0000.tar"


def fetch_manifest(server: DemoServer) -> UrlManifest:
    return parse_manifest(httpx.get(server.manifest_url).json(), server.manifest_url)


def sequence_entries(manifest: UrlManifest) -> list[ManifestEntry]:
    return [entry for config in ("cubercnn", "efm") for entry in manifest.entries(config, SEQUENCE)]


def key(entry: ManifestEntry) -> str:
    return f"{entry.config}/{entry.relative_path}"


def url_path(entry: ManifestEntry) -> str:
    return f"/files/{key(entry)}"


def folders(root: Path) -> dict[str, Path]:
    return {"cubercnn": root / "cubercnn", "efm": root / "efm"}


def final_path(root: Path, entry: ManifestEntry) -> Path:
    return root / entry.config / entry.relative_path


def held_bytes(root: Path, entry: ManifestEntry) -> int:
    part = root / entry.config / f"{entry.relative_path}.part"
    return part.stat().st_size if part.exists() else 0


class ClockJump:
    """A `TransferProgress` that moves the server's clock past every link's expiry once the target's bytes flow."""

    def __init__(self, server: DemoServer, target: str) -> None:
        self._server, self._target, self._done = server, target, threading.Event()

    def start(self, key: str, total: int | None, done: int) -> None:
        pass

    def advance(self, key: str, nbytes: int) -> None:
        if key == self._target and not self._done.is_set():
            self._done.set()
            self._server.advance_clock(self._server.link_ttl_seconds + 60)

    def finish(self, key: str, status: str) -> None:
        pass


@dataclass(frozen=True)
class Arm:
    """Faults to inject on the target file: `apply` arms them, `count` is how many it arms."""

    count: int
    apply: Callable[[DemoServer, ManifestEntry], None]

    def __add__(self, other: Arm) -> Arm:
        def apply(server: DemoServer, entry: ManifestEntry) -> None:
            self.apply(server, entry)
            other.apply(server, entry)

        return Arm(self.count + other.count, apply)


@dataclass(frozen=True)
class Fault:
    """One row of the matrix.

    `error`/`message`: the exception and text expected (None: the download must succeed). `extra`
    is the exact number of target bytes a successful case may fetch beyond one copy (a server
    ignoring Range forces it); `bound` caps the target bytes a failing case may have fetched, in
    file sizes. `expire_mid_transfer` moves the server's clock past the links' expiry (one more
    fault) once the target's first bytes arrive; `refresh` lets the engine fetch fresh links.
    `permanent`: no later try with the same links can cure the failure, so the run raises
    `PermanentTransferError`.
    """

    name: str
    arm: Arm
    error: type[Exception] | None = None
    message: str = ""
    extra: Callable[[ManifestEntry], int] = lambda entry: 0
    bound: int = 1
    expire_mid_transfer: bool = False
    refresh: bool = False
    min_seconds: float = 0.0
    permanent: bool = False

    @property
    def injected(self) -> int:
        return self.arm.count + int(self.expire_mid_transfer)


def size(entry: ManifestEntry) -> int:
    assert entry.size is not None
    return entry.size


def drop(at: Callable[[int], int], times: int = 1) -> Arm:
    def apply(server: DemoServer, entry: ManifestEntry) -> None:
        server.faults.drop_after_bytes(at(size(entry)), times=times, path_contains=url_path(entry))

    return Arm(times, apply)


def status(code: int, times: int, retry_after: float | None = None) -> Arm:
    return Arm(times, lambda server, entry: server.faults.fail_with_status(code, times, retry_after, url_path(entry)))


def replaced(content: Callable[[bytes], bytes]) -> Arm:
    return Arm(1, lambda server, entry: server.faults.replace_content(
        url_path(entry), content((server.root / key(entry)).read_bytes())))


IGNORE_RANGE = Arm(1, lambda server, entry: server.faults.ignore_range())


def flipped(data: bytes) -> bytes:
    return bytes(byte ^ 0xFF for byte in data)


EXPIRED = r"signed links expired for \d+ file.*Refresh the URL manifest"
FAULTS: list[Fault] = [
    Fault("drop_before_first_byte", drop(lambda n: 0)),
    Fault("drop_after_first_byte", drop(lambda n: 1)),
    Fault("drop_mid_file", drop(lambda n: n // 2)),
    Fault("drop_before_last_byte", drop(lambda n: n - 1)),
    Fault("drop_three_times", drop(lambda n: n // 5, times=3)),
    *[Fault(f"burst_of_{code}", status(code, 2)) for code in (408, 500, 502, 503, 504)],
    Fault("429_with_retry_after", status(429, 1, 0.3), min_seconds=0.3),
    Fault("503_retry_after_then_drop", status(503, 1, 0.05) + drop(lambda n: n // 3)),
    Fault("server_ignores_range_after_drop", drop(lambda n: n // 2) + IGNORE_RANGE,
          extra=lambda entry: size(entry) // 2),
    Fault("persistent_503", status(503, FAST.max_attempts), TransferError, r"RetryableStatus: .*HTTP 503", bound=0),
    Fault("retry_after_beyond_its_cap", status(503, 1, FAST.retry_after_max_seconds * 2), TransferError,
          r"RetryAfterTooLong: .*HTTP 503.*asked to retry after \d+ s", bound=0),
    Fault("refused_link_403", status(403, 1), LinkExpired, EXPIRED, bound=0),
    Fault("gone_404", status(404, 1), TransferError, r"TransferError: .*HTTP 404", bound=0, permanent=True),
    Fault("truncated_upstream_file", replaced(lambda data: data[: len(data) // 2]), ChecksumMismatch,
          r"ChecksumMismatch: .*server announces \d+ bytes, manifest says \d+", permanent=True),
    Fault("wrong_bytes_sha1_mismatch", replaced(flipped), ChecksumMismatch,
          r"ChecksumMismatch: .*got \d+ bytes with sha1 [0-9a-f]{40}, manifest says", permanent=True),
    Fault("wrong_bytes_after_a_resume", replaced(flipped) + drop(lambda n: n // 2), ChecksumMismatch,
          r"ChecksumMismatch: .*got \d+ bytes with sha1 [0-9a-f]{40}, manifest says", bound=2, permanent=True),
    Fault("link_expires_mid_transfer", drop(lambda n: n // 2), LinkExpired, EXPIRED,
          expire_mid_transfer=True),
    Fault("link_expires_mid_transfer_refreshed", drop(lambda n: n // 2), expire_mid_transfer=True, refresh=True),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
def test_fault_ends_verified_or_with_a_specific_error_and_never_downloads_a_file_twice(
    demo_server: DemoServer, tmp_path: Path, fault: Fault
) -> None:
    entries = sequence_entries(fetch_manifest(demo_server))
    target = next(entry for entry in entries if key(entry) == TARGET)
    demo_server.stats.reset()
    fault.arm.apply(demo_server, target)
    progress = ClockJump(demo_server, TARGET) if fault.expire_mid_transfer else None
    refresh = (lambda stop: fetch_manifest(demo_server)) if fault.refresh else None

    started = time.monotonic()
    if fault.error is None:
        assert download_entries(entries, folders(tmp_path), FAST, progress, refresh=refresh).ok
        assert time.monotonic() - started >= fault.min_seconds
        wasted = fault.extra(target)
    else:
        with pytest.raises(TransferError) as raised:
            download_entries(entries, folders(tmp_path), FAST, progress, refresh=refresh)
        message = str(raised.value)
        lasting = PermanentTransferError if fault.permanent else TransferError
        assert type(raised.value) is (LinkExpired if fault.error is LinkExpired else lasting)
        assert TARGET in message and re.search(fault.message, message), message
        assert not final_path(tmp_path, target).exists()
        for path in tmp_path.rglob("*"):
            stem = path.name.removesuffix(".json").removesuffix(".part")
            assert path.is_dir() or path.name == stem or not (path.parent / stem).exists(), path
        sent = demo_server.stats.body_bytes_sent(url_path(target))
        assert sent <= fault.bound * size(target)
        wasted = sent - held_bytes(tmp_path, target)
        demo_server.faults.clear()
        rerun = download_entries(sequence_entries(fetch_manifest(demo_server)), folders(tmp_path), FAST)
        assert rerun.ok

    for entry in entries:
        assert hashlib.sha1(final_path(tmp_path, entry).read_bytes()).hexdigest() == entry.sha1
        expected = size(entry) + (wasted if entry is target else 0)
        assert demo_server.stats.body_bytes_sent(url_path(entry)) == expected, key(entry)
    assert not list(tmp_path.rglob("*.part*"))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 512 KiB tmpfs: disk full comes from the kernel, not from a mock. Needs mount rights (root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mount)]
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(command, capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root; disk full cannot be produced for real here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill(disk: Path, keep: int) -> Path:
    """Fill `disk` with one file until only about `keep` bytes stay free."""
    stats = os.statvfs(disk)
    filler = disk / "filler.bin"
    filler.write_bytes(bytes(max(stats.f_bavail * stats.f_frsize - keep, 0)))
    return filler


def test_disk_full_mid_download_fails_naming_the_file_then_resumes_from_the_held_bytes(
    demo_server: DemoServer, small_disk: Path
) -> None:
    entries = sequence_entries(fetch_manifest(demo_server))
    filler = fill(small_disk, keep=sum(size(entry) for entry in entries) // 2)

    with pytest.raises(TransferError) as raised:
        download_entries(entries, folders(small_disk), FAST)

    failed = [entry for entry in entries if key(entry) in str(raised.value)]
    assert failed and "No space left on device" in str(raised.value)
    for entry in entries:
        final = final_path(small_disk, entry)
        if entry in failed:
            assert not final.exists()
            held = (small_disk / entry.config / f"{entry.relative_path}.part")
            if held.exists():
                assert (demo_server.root / key(entry)).read_bytes().startswith(held.read_bytes())
        else:
            assert hashlib.sha1(final.read_bytes()).hexdigest() == entry.sha1
    held = {key(entry): held_bytes(small_disk, entry) for entry in failed}
    filler.unlink()
    demo_server.stats.reset()

    report = download_entries(entries, folders(small_disk), FAST)

    assert report.count("skipped") == len(entries) - len(failed)
    assert demo_server.stats.body_bytes_sent() == sum(size(entry) - held[key(entry)] for entry in failed)
    for entry in entries:
        assert hashlib.sha1(final_path(small_disk, entry).read_bytes()).hexdigest() == entry.sha1


def test_disk_full_while_publishing_a_shard_set_or_yaml_keeps_the_previous_one_and_no_partial_file(
    demo_server: DemoServer, small_disk: Path
) -> None:
    config = load_catalog(PACKAGED_CATALOG).dataset("demo_aria").preprocess["cubercnn_small"]
    raw = demo_server.root / config.source_config
    downloaded = {f"{SEQUENCE}/{path.name}": storage.digest_file(path) for path in (raw / SEQUENCE).glob("*.tar")}
    shard_set = small_disk / "shards" / SEQUENCE
    preprocess_sequence(downloaded, config, SEQUENCE, raw, shard_set)
    before = {path.name: path.read_bytes() for path in shard_set.iterdir()}
    yaml_path = small_disk / "local_all_tars.yaml"
    storage.write_bytes_atomic(yaml_path, b"tars: {}\n")
    filler = fill(small_disk, keep=4096)

    with pytest.raises(DatasetAssetsError, match=r"shards-0000\.tar: cannot write shard \(No space left on device\)"):
        preprocess_sequence(downloaded, config, SEQUENCE, raw, shard_set)
    with pytest.raises(OSError) as yaml_error:
        storage.write_bytes_atomic(yaml_path, b"tars: {seq_000: [a.tar]}\n" * 1000)

    assert yaml_error.value.errno == errno.ENOSPC and "No space left on device" in str(yaml_error.value)
    assert {path.name: path.read_bytes() for path in shard_set.iterdir()} == before
    assert yaml_path.read_bytes() == b"tars: {}\n"
    assert sorted(path.name for path in small_disk.iterdir()) == [
        "filler.bin", "local_all_tars.yaml", "shards"]
    assert sorted(path.name for path in (small_disk / "shards").iterdir()) == [SEQUENCE]
    filler.unlink()


class RestartableMoto:
    """Moto's S3 server on a loopback port that can be stopped and started again on the same port.

    Moto keeps its buckets in this process's memory, so state survives the restart, as a real S3
    does when only the network path to it was down.
    """

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.stop()

    def restart(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[RestartableMoto]:
    for name, value in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    server = RestartableMoto()
    try:
        yield server
    finally:
        server.stop()


def test_s3_server_stopped_mid_multipart_fails_cleanly_then_a_rerun_completes_with_no_upload_left(
    tmp_path: Path, moto: RestartableMoto
) -> None:
    source = tmp_path / "source"
    data = hashlib.shake_256(b"big").digest(3 * MIN_PART_SIZE + 4321)
    (source / "big" / SEQUENCE).mkdir(parents=True)
    (source / "big" / SEQUENCE / "shards-0000.tar").write_bytes(data)
    # Few client retries and short timeouts: the server is really gone, so waiting longer only slows the test.
    client = boto3.session.Session().client("s3", endpoint_url=moto.endpoint, region_name="us-east-1",
                                            config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    bucket = f"faults-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    destination = S3Destination(client, S3Url(bucket, "mirror"), MultipartSettings(MIN_PART_SIZE, concurrency=1))
    stopped = threading.Event()

    def stop_after_first_part(**kwargs: Any) -> None:
        if not stopped.is_set():
            stopped.set()
            moto.stop()

    client.meta.events.register("after-call.s3.UploadPart", stop_after_first_part)
    with DemoServer(source) as server:
        manifest = fetch_manifest(server)
        entries = list(manifest.entries("big", SEQUENCE))
        with pytest.raises(TransferError) as raised:
            download_entries(entries, {"big": destination}, TransferSettings(max_attempts=2,
                                                                             backoff_initial_seconds=0.01))
        assert stopped.is_set()
        message = str(raised.value)
        assert f"big/{SEQUENCE}/shards-0000.tar" in message and "Could not connect to the endpoint URL" in message
        assert "StorageError" in message and f"s3://{bucket}/mirror/{SEQUENCE}/shards-0000.tar" in message

        moto.restart()
        key_name = f"mirror/{SEQUENCE}/shards-0000.tar"
        assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
        assert [upload["Key"] for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])] == [
            key_name]
        report = download_entries(entries, {"big": destination}, FAST)

    assert report.count("downloaded") == 1
    assert client.get_object(Bucket=bucket, Key=key_name)["Body"].read() == data
    assert client.head_object(Bucket=bucket, Key=key_name)["Metadata"]["sha1"] == hashlib.sha1(data).hexdigest()
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
