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
from dataset_assets.core.manifest import ManifestEntry, UrlManifest, parse_manifest
from dataset_assets.core.s3 import MIN_PART_SIZE, MultipartSettings, S3Destination, S3Url
from dataset_assets.core.transfer import (
    ChecksumMismatch,
    LinkExpired,
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
class Fault:
    """One row of the matrix.

    `arm` injects faults on the target and returns how many it injected. `error`/`message`: the
    exception and text expected (None: the download must succeed). `extra` is the exact number of
    target bytes a successful case may fetch beyond one copy (a server ignoring Range forces it);
    `bound` caps the target bytes a failing case may have fetched, in units of the file size.
    """

    name: str
    arm: Callable[[DemoServer, ManifestEntry], int]
    error: type[Exception] | None = None
    message: str = ""
    extra: Callable[[ManifestEntry], int] = lambda entry: 0
    bound: int = 1
    expire_mid_transfer: bool = False
    refresh: bool = False
    min_seconds: float = 0.0


def size(entry: ManifestEntry) -> int:
    assert entry.size is not None
    return entry.size


def drop(at: Callable[[int], int], times: int = 1) -> Callable[[DemoServer, ManifestEntry], int]:
    def arm(server: DemoServer, entry: ManifestEntry) -> int:
        server.faults.drop_after_bytes(at(size(entry)), times=times, path_contains=url_path(entry))
        return times
    return arm


def statuses(*bursts: tuple[int, int, float | None]) -> Callable[[DemoServer, ManifestEntry], int]:
    def arm(server: DemoServer, entry: ManifestEntry) -> int:
        for status, times, retry_after in bursts:
            server.faults.fail_with_status(status, times=times, retry_after=retry_after, path_contains=url_path(entry))
        return sum(times for _, times, _ in bursts)
    return arm


def replaced(content: Callable[[bytes], bytes]) -> Callable[[DemoServer, ManifestEntry], int]:
    def arm(server: DemoServer, entry: ManifestEntry) -> int:
        original = (server.root / key(entry)).read_bytes()
        server.faults.replace_content(url_path(entry), content(original))
        return 1
    return arm


def both(*arms: Callable[[DemoServer, ManifestEntry], int]) -> Callable[[DemoServer, ManifestEntry], int]:
    return lambda server, entry: sum(arm(server, entry) for arm in arms)


def ignore_range(server: DemoServer, entry: ManifestEntry) -> int:
    server.faults.ignore_range()
    return 1


def flipped(data: bytes) -> bytes:
    return bytes(byte ^ 0xFF for byte in data)


FAULTS: list[Fault] = [
    Fault("drop_before_first_byte", drop(lambda n: 0)),
    Fault("drop_after_first_byte", drop(lambda n: 1)),
    Fault("drop_mid_file", drop(lambda n: n // 2)),
    Fault("drop_before_last_byte", drop(lambda n: n - 1)),
    Fault("drop_three_times", drop(lambda n: n // 5, times=3)),
    *[Fault(f"burst_of_{status}", statuses((status, 2, None))) for status in (500, 502, 503, 504)],
    Fault("429_with_retry_after", statuses((429, 1, 0.3)), min_seconds=0.3),
    Fault("503_retry_after_then_drop", both(statuses((503, 1, 0.05)), drop(lambda n: n // 3))),
    Fault("server_ignores_range_after_drop", both(drop(lambda n: n // 2), ignore_range),
          extra=lambda entry: size(entry) // 2),
    Fault("persistent_503", statuses((503, 50, None)), TransferError, r"RetryableStatus: .*HTTP 503", bound=0),
    Fault("refused_link_403", statuses((403, 1, None)), LinkExpired, r"signed links expired for \d+ file.*Refresh the URL manifest", bound=0),
    Fault("gone_404", statuses((404, 1, None)), TransferError, r"TransferError: .*HTTP 404", bound=0),
    Fault("truncated_upstream_file", replaced(lambda data: data[: len(data) // 2]), ChecksumMismatch,
          r"ChecksumMismatch: .*server announces \d+ bytes, manifest says \d+"),
    Fault("wrong_bytes_sha1_mismatch", replaced(flipped), ChecksumMismatch,
          r"ChecksumMismatch: .*got \d+ bytes with sha1 [0-9a-f]{40}, manifest says"),
    Fault("wrong_bytes_after_a_resume", both(replaced(flipped), drop(lambda n: n // 2)), ChecksumMismatch,
          r"ChecksumMismatch: .*got \d+ bytes with sha1 [0-9a-f]{40}, manifest says", bound=2),
    Fault("link_expires_mid_transfer", drop(lambda n: n // 2), LinkExpired, r"signed links expired for \d+ file.*Refresh the URL manifest",
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
    assert fault.arm(demo_server, target) >= 1
    progress = ClockJump(demo_server, TARGET) if fault.expire_mid_transfer else None
    refresh = (lambda: fetch_manifest(demo_server)) if fault.refresh else None

    started = time.monotonic()
    if fault.error is None:
        assert download_entries(entries, folders(tmp_path), FAST, progress, refresh=refresh).ok
        assert time.monotonic() - started >= fault.min_seconds
        wasted = fault.extra(target)
    else:
        with pytest.raises(TransferError) as raised:
            download_entries(entries, folders(tmp_path), FAST, progress, refresh=refresh)
        message = str(raised.value)
        assert type(raised.value) is (LinkExpired if fault.error is LinkExpired else TransferError)
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
