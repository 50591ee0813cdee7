"""The transfer engine against the fault-injecting demo server on 127.0.0.1, into local folders."""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from dataset_assets.core import storage, transfer
from dataset_assets.core.errors import ManifestError
from dataset_assets.core.manifest import ManifestEntry, UrlManifest, parse_manifest
from dataset_assets.core.storage import FileDigest, LocalDestination
from dataset_assets.core.transfer import (
    LinkExpired,
    PermanentTransferError,
    TransferCancelled,
    TransferError,
    TransferSettings,
    download_entries,
    transfer_entries,
)
from dataset_assets.demo.generate import DemoFile
from dataset_assets.demo.server import DemoServer, RequestRecord
from dataset_assets_tests.demo import fixtures
from dataset_assets_tests.plain_server import PlainServer

demo_source = fixtures.demo_source
demo_files = fixtures.demo_files
demo_server = fixtures.demo_server

OLD_DATE, NEW_DATE = formatdate(1_700_000_000, usegmt=True), formatdate(1_700_086_400, usegmt=True)
FAST = TransferSettings(workers=8, max_attempts=4, backoff_initial_seconds=0.01, backoff_max_seconds=0.5)
ONE_ATTEMPT = TransferSettings(workers=8, max_attempts=1)


def fetch_manifest(server: DemoServer, ttl: int | None = None) -> UrlManifest:
    query = "" if ttl is None else f"?ttl={ttl}"
    return parse_manifest(httpx.get(f"{server.manifest_url}{query}").json(), server.manifest_url)


def folders(root: Path) -> dict[str, Path]:
    return {"cubercnn": root / "cubercnn", "efm": root / "efm"}


def first_entry(manifest: UrlManifest) -> ManifestEntry:
    return manifest.entries("cubercnn", "seq_000")[0]


def url_path(entry: ManifestEntry) -> str:
    return f"/files/{entry.config}/{entry.relative_path}"


def file_requests(server: DemoServer) -> list[RequestRecord]:
    return [record for record in server.stats.requests if record.path.startswith("/files/")]


def requests_for(server: DemoServer, entry: ManifestEntry) -> list[RequestRecord]:
    return [record for record in server.stats.requests if record.path == url_path(entry)]


def source_bytes(demo_source: Path, entry: ManifestEntry) -> bytes:
    return (demo_source / entry.config / entry.relative_path).read_bytes()


def hold(tmp_path: Path, entry: ManifestEntry, data: bytes) -> Path:
    """`data` as the `.part` an interrupted run left for `entry` under `folders(tmp_path)`."""
    part = tmp_path / entry.config / f"{entry.relative_path}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data)
    return part


def leave_partial(server: DemoServer, entry: ManifestEntry, root: Path, cut: int) -> None:
    """A first run whose connection drops after `cut` bytes of `entry`, leaving them held in `.part`."""
    server.faults.drop_after_bytes(cut, path_contains=url_path(entry))
    with pytest.raises(TransferError):
        download_entries([entry], folders(root), ONE_ATTEMPT)
    assert (root / entry.config / f"{entry.relative_path}.part").stat().st_size == cut
    server.stats.reset()


class InFlight:
    """A TransferProgress recording how many files were in flight at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active: set[str] = set()
        self.peak = 0
        self.finished: dict[str, str] = {}

    def start(self, key: str, total: int | None, done: int) -> None:
        with self.lock:
            self.active.add(key)
            self.peak = max(self.peak, len(self.active))

    def advance(self, key: str, nbytes: int) -> None:
        pass

    def finish(self, key: str, status: str) -> None:
        with self.lock:
            self.active.discard(key)
            self.finished[key] = status


def test_downloads_every_file_verified_with_several_files_in_flight(
    demo_server: DemoServer, demo_files: list[DemoFile], tmp_path: Path
) -> None:
    manifest = fetch_manifest(demo_server)
    demo_server.faults.trickle(400_000)
    progress = InFlight()

    report = download_entries(manifest.all_entries(), folders(tmp_path), FAST, progress)

    assert progress.peak == FAST.workers
    assert report.count("downloaded") == len(demo_files) == len(progress.finished)
    for demo_file in demo_files:
        data = (tmp_path / demo_file.config / demo_file.sequence / demo_file.filename).read_bytes()
        key = f"{demo_file.config}/{demo_file.sequence}/{demo_file.filename}"
        result = next(r for r in report.results if r.key == key)
        assert hashlib.sha1(data).hexdigest() == demo_file.sha1 == result.sha1
        assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert report.bytes_fetched == demo_server.stats.body_bytes_sent() == sum(f.size for f in demo_files)
    assert not list(tmp_path.rglob("*.part*"))
    assert report.metadata()["throughput_mib_per_second"] > 0


def test_resume_continues_from_partial_bytes_after_connection_drop(
    demo_server: DemoServer, demo_source: Path, tmp_path: Path
) -> None:
    entry = first_entry(fetch_manifest(demo_server))
    cut = entry.size // 3
    demo_server.faults.drop_after_bytes(cut, path_contains=url_path(entry))

    report = download_entries([entry], folders(tmp_path), FAST)

    assert [r.range_header for r in requests_for(demo_server, entry)] == [None, f"bytes={cut}-"]
    assert demo_server.stats.body_bytes_sent() == entry.size
    assert (tmp_path / "cubercnn" / entry.relative_path).read_bytes() == source_bytes(demo_source, entry)
    assert report.results[0].status == "resumed"


def test_500_burst_and_429_with_retry_after_are_retried(demo_server: DemoServer, tmp_path: Path) -> None:
    entry = first_entry(fetch_manifest(demo_server))
    demo_server.faults.fail_with_status(500, times=2, path_contains=url_path(entry))
    demo_server.faults.fail_with_status(429, times=1, retry_after=0.4, path_contains=url_path(entry))

    started = time.monotonic()
    report = download_entries([entry], folders(tmp_path), FAST)

    assert time.monotonic() - started >= 0.4
    assert [r.status for r in requests_for(demo_server, entry)] == [500, 500, 429, 200]
    assert report.results[0].status == "downloaded"


def test_408_request_timeout_is_retried_like_5xx_honouring_retry_after(demo_server: DemoServer, tmp_path: Path
                                                                       ) -> None:
    entry = first_entry(fetch_manifest(demo_server))
    demo_server.faults.fail_with_status(408, times=2, retry_after=0.3, path_contains=url_path(entry))

    started = time.monotonic()
    report = download_entries([entry], folders(tmp_path), FAST)

    assert time.monotonic() - started >= 0.6
    assert [r.status for r in requests_for(demo_server, entry)] == [408, 408, 200]
    assert report.results[0].status == "downloaded"


def test_a_retry_after_longer_than_the_backoff_cap_is_waited_out_in_full(
    demo_server: DemoServer, tmp_path: Path
) -> None:
    entry = first_entry(fetch_manifest(demo_server))
    demo_server.faults.fail_with_status(503, times=1, retry_after=1.5, path_contains=url_path(entry))
    settings = TransferSettings(max_attempts=3, backoff_initial_seconds=0.01, backoff_max_seconds=0.1)

    started = time.monotonic()
    report = download_entries([entry], folders(tmp_path), settings)

    assert time.monotonic() - started >= 1.5
    assert [r.status for r in requests_for(demo_server, entry)] == [503, 200]
    assert report.results[0].status == "downloaded"


@pytest.mark.parametrize("retry_after", [lambda: "600", lambda: formatdate(time.time() + 600, usegmt=True)],
                         ids=["seconds", "http_date"])
def test_a_retry_after_beyond_its_cap_fails_the_file_at_once_naming_the_wait_and_not_as_permanent(
    plain_server: PlainServer, tmp_path: Path, retry_after: Callable[[], str]
) -> None:
    plain_server.serve("/busy.tar", b"x" * 1000)
    plain_server.fail("/busy.tar", 503, headers={"Retry-After": retry_after()})
    entry = ManifestEntry("cubercnn", "seq_000", "busy.tar", plain_server.url("/busy.tar"))

    started = time.monotonic()
    with pytest.raises(TransferError, match=r"busy\.tar: .*HTTP 503.*the server asked to retry after 600 s, more "
                                            r"than the 300 s this run waits") as raised:
        download_entries([entry], folders(tmp_path), FAST)

    assert time.monotonic() - started < 10  # not the 600 s asked for
    assert not isinstance(raised.value, PermanentTransferError)
    assert [r.status for r in plain_server.requests] == [503]


def test_a_cookie_an_answer_sets_is_sent_with_the_next_request(plain_server: PlainServer, tmp_path: Path) -> None:
    plain_server.serve("/sticky.tar", b"x" * 1000)
    plain_server.fail("/sticky.tar", 503, headers={"Retry-After": "0", "Set-Cookie": "node=b7; Path=/"})
    entry = ManifestEntry("cubercnn", "seq_000", "sticky.tar", plain_server.url("/sticky.tar"))

    report = download_entries([entry], folders(tmp_path), FAST)

    assert report.results[0].status == "downloaded"
    assert [(r.status, r.values("Cookie")) for r in plain_server.requests] == [(503, []), (200, ["node=b7"])]


def test_a_retry_after_that_is_not_a_number_of_seconds_falls_back_to_backoff(
    demo_server: DemoServer, tmp_path: Path
) -> None:
    entry = first_entry(fetch_manifest(demo_server))
    demo_server.faults.fail_with_status(503, times=1, retry_after=float("nan"), path_contains=url_path(entry))

    report = download_entries([entry], folders(tmp_path), FAST)

    assert [r.status for r in requests_for(demo_server, entry)] == [503, 200]
    assert report.results[0].status == "downloaded"


def test_retries_stop_after_max_attempts_with_an_error_naming_the_file(
    demo_server: DemoServer, tmp_path: Path
) -> None:
    entry = first_entry(fetch_manifest(demo_server))
    demo_server.faults.fail_with_status(503, times=10, path_contains=url_path(entry))
    settings = TransferSettings(max_attempts=3, backoff_initial_seconds=0.01)

    with pytest.raises(TransferError, match=f"cubercnn/{entry.relative_path}: RetryableStatus: .*HTTP 503"):
        download_entries([entry], folders(tmp_path), settings)

    assert len(requests_for(demo_server, entry)) == 3


@pytest.mark.parametrize("bad_url", ["http://127.0.0.1:port/x?Signature=s3cr3tvalue",
                                     "http://[::1/x?Expires=1&Signature=s3cr3tvalue"])
def test_an_entry_whose_url_cannot_be_requested_fails_alone_naming_the_file(
    demo_server: DemoServer, demo_source: Path, tmp_path: Path, bad_url: str
) -> None:
    good = first_entry(fetch_manifest(demo_server))
    # Entries built from a catalog (raw artifacts, versioned datasets) skip the manifest's URL checks.
    bad = ManifestEntry("cubercnn", "seq_009", "shards-0000.tar", bad_url)

    report = transfer_entries([bad, good], folders(tmp_path), FAST)

    assert list(report.failures) == ["cubercnn/seq_009/shards-0000.tar"]
    assert "InvalidURL" in report.failures["cubercnn/seq_009/shards-0000.tar"]
    assert "s3cr3tvalue" not in json.dumps(report.metadata())
    assert (tmp_path / "cubercnn" / good.relative_path).read_bytes() == source_bytes(demo_source, good)


def test_a_manifest_url_that_cannot_be_requested_fails_with_an_error_naming_it() -> None:
    with pytest.raises(TransferError, match=r"^http://127\.0\.0\.1:port/manifest\.json\?<redacted>.* could not fetch "
                                            r"the manifest: InvalidURL"):
        transfer.fetch_manifest("http://127.0.0.1:port/manifest.json?token=s3cr3tvalue")


def test_a_refused_connection_is_reported_as_a_connect_error_not_a_timeout(
    demo_server: DemoServer, tmp_path: Path
) -> None:
    entry = first_entry(fetch_manifest(demo_server))
    demo_server.stop()

    report = transfer_entries([entry], folders(tmp_path), ONE_ATTEMPT)

    assert report.failures[f"cubercnn/{entry.relative_path}"].startswith("ConnectError: ")


class _ForwardProxyHandler(BaseHTTPRequestHandler):
    """A plain-HTTP forward proxy: records each absolute-form target, fetches it, relays the answer."""

    server: _ForwardProxy
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.targets.append(self.path)
        headers = {name: value for name, value in self.headers.items()
                   if name.lower() not in ("host", "connection", "proxy-connection")}
        with httpx.Client(trust_env=False) as client:
            upstream = client.get(self.path, headers=headers)
        self.send_response(upstream.status_code)
        for name, value in upstream.headers.items():
            if name.lower() not in ("connection", "content-length", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(upstream.content)))
        self.end_headers()
        self.wfile.write(upstream.content)

    def log_message(self, format: str, *args: Any) -> None:
        """Targets are recorded instead."""


class _ForwardProxy(ThreadingHTTPServer):
    daemon_threads = True
    targets: list[str]


@pytest.fixture
def forward_proxy() -> Iterator[_ForwardProxy]:
    proxy = _ForwardProxy(("127.0.0.1", 0), _ForwardProxyHandler)
    proxy.targets = []
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()
    thread.join()


def test_downloads_go_through_the_proxy_the_environment_names_unless_no_proxy_lists_the_host(
    demo_server: DemoServer, demo_source: Path, tmp_path: Path, forward_proxy: _ForwardProxy,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    proxied, direct = fetch_manifest(demo_server).entries("cubercnn", "seq_000")[:2]
    for name in ("no_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    host, port = forward_proxy.server_address[:2]
    monkeypatch.setenv("HTTP_PROXY", f"http://{host}:{port}")

    download_entries([proxied], folders(tmp_path), FAST)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    download_entries([direct], folders(tmp_path), FAST)

    assert forward_proxy.targets == [proxied.url]
    for entry in (proxied, direct):
        assert (tmp_path / "cubercnn" / entry.relative_path).read_bytes() == source_bytes(demo_source, entry)


def test_server_ignoring_range_restarts_cleanly_from_byte_zero(
    demo_server: DemoServer, demo_source: Path, tmp_path: Path
) -> None:
    entry = first_entry(fetch_manifest(demo_server))
    leave_partial(demo_server, entry, tmp_path, entry.size // 2)
    demo_server.faults.ignore_range()

    report = download_entries([entry], folders(tmp_path), FAST)

    assert [(r.range_header, r.status) for r in requests_for(demo_server, entry)] == [
        (f"bytes={entry.size // 2}-", 200)]
    assert demo_server.stats.body_bytes_sent() == entry.size
    assert (tmp_path / "cubercnn" / entry.relative_path).read_bytes() == source_bytes(demo_source, entry)
    assert report.results[0].status == "downloaded"


def test_a_range_answer_ending_before_the_file_does_is_continued_not_published_short(
    demo_server: DemoServer, demo_source: Path, tmp_path: Path
) -> None:
    # Without size and sha1 in the manifest, nothing but the server's Content-Range tells the file is incomplete.
    entry = dataclasses.replace(first_entry(fetch_manifest(demo_server)), size=None, sha1=None)
    size = len(source_bytes(demo_source, entry))
    cut = size // 3
    leave_partial(demo_server, entry, tmp_path, cut)
    cap = cut // 2
    demo_server.faults.cap_ranges(cap)

    report = download_entries([entry], folders(tmp_path), FAST)

    assert [r.range_header for r in requests_for(demo_server, entry)] == [
        f"bytes={start}-" for start in range(cut, size, cap)]
    assert demo_server.stats.body_bytes_sent() == size - cut
    assert (tmp_path / "cubercnn" / entry.relative_path).read_bytes() == source_bytes(demo_source, entry)
    assert report.results[0].status == "resumed"


def test_content_changed_between_runs_restarts_from_byte_zero(demo_server: DemoServer, tmp_path: Path) -> None:
    entry = first_entry(fetch_manifest(demo_server))
    leave_partial(demo_server, entry, tmp_path, entry.size // 2)
    new_data = b"new upstream version " * 1000
    demo_server.faults.replace_content(url_path(entry), new_data)
    fresh = first_entry(fetch_manifest(demo_server))

    report = download_entries([fresh], folders(tmp_path), FAST)

    # If-Range carries the old ETag, so the server answers the new content whole in one request.
    assert [(r.range_header, r.status) for r in requests_for(demo_server, entry)] == [
        (f"bytes={entry.size // 2}-", 200)]
    assert demo_server.stats.body_bytes_sent() == len(new_data)
    assert (tmp_path / "cubercnn" / entry.relative_path).read_bytes() == new_data
    assert report.results[0].sha1 == hashlib.sha1(new_data).hexdigest()


@pytest.mark.parametrize(("changed", "honour_if_range", "expected"), [
    (False, True, [("bytes={cut}-", OLD_DATE, 206)]),
    (True, True, [("bytes={cut}-", OLD_DATE, 200)]),
    (True, False, [("bytes={cut}-", OLD_DATE, 206), (None, None, 200)]),
], ids=["unchanged_resumes", "changed_if_range_answers_whole", "changed_if_range_ignored_restarts"])
def test_resume_without_etag_validates_held_bytes_by_last_modified_and_restarts_once_if_changed(
    plain_server: PlainServer, tmp_path: Path, changed: bool, honour_if_range: bool,
    expected: list[tuple[str | None, str | None, int]]
) -> None:
    """A manifest without size and sha1: nothing but the validator can tell held bytes are stale."""
    path, old, new = "/files/shards-0000.tar", b"old content " * 5000, b"NEW CONTENT " * 5000
    cut = len(old) // 3
    plain_server.serve(path, old, OLD_DATE)
    plain_server.drop_after(path, cut)
    entry = ManifestEntry("cubercnn", "seq_000", "shards-0000.tar", plain_server.url(path))
    with pytest.raises(TransferError):
        download_entries([entry], folders(tmp_path), ONE_ATTEMPT)
    sidecar = tmp_path / "cubercnn" / "seq_000" / "shards-0000.tar.part.json"
    assert json.loads(sidecar.read_text())["last_modified"] == OLD_DATE
    if changed:
        plain_server.serve(path, new, NEW_DATE, honour_if_range)
    first_run = len(plain_server.requests)

    report = download_entries([entry], folders(tmp_path), FAST)

    assert [(r.range_header, r.if_range, r.status) for r in plain_server.requests[first_run:]] == [
        (None if span is None else span.format(cut=cut), if_range, status) for span, if_range, status in expected]
    assert (tmp_path / "cubercnn" / entry.relative_path).read_bytes() == (new if changed else old)
    assert report.results[0].status == ("downloaded" if changed else "resumed")
    if honour_if_range:
        assert plain_server.body_bytes_sent(path) == cut + (len(new) if changed else len(old) - cut)


@pytest.mark.parametrize(("replacement", "problem"), [
    (b"shorter", "server announces 7 bytes, manifest says"),
    (None, "got .* bytes with sha1 .*, manifest says .* bytes with sha1"),
])
def test_content_differing_from_the_manifest_fails_without_retry(
    demo_server: DemoServer, tmp_path: Path, replacement: bytes | None, problem: str
) -> None:
    entry = first_entry(fetch_manifest(demo_server))
    demo_server.faults.replace_content(url_path(entry), replacement or b"x" * entry.size)

    with pytest.raises(TransferError, match=f"ChecksumMismatch: {entry.relative_path}: {problem}"):
        download_entries([entry], folders(tmp_path), FAST)

    assert len(requests_for(demo_server, entry)) == 1
    assert not (tmp_path / "cubercnn" / entry.relative_path).exists()


def test_complete_verified_file_is_never_fetched_again(demo_server: DemoServer, demo_source: Path, tmp_path: Path
                                                       ) -> None:
    manifest = fetch_manifest(demo_server)
    download_entries(manifest.all_entries(), folders(tmp_path), FAST)
    entry = first_entry(manifest)
    final = tmp_path / "cubercnn" / entry.relative_path
    final.write_bytes(b"\0" * entry.size)
    demo_server.stats.reset()

    report = download_entries(manifest.all_entries(), folders(tmp_path), FAST)

    assert report.count("skipped") == len(manifest.all_entries()) - 1
    assert [r.path for r in file_requests(demo_server)] == [url_path(entry)]
    assert final.read_bytes() == source_bytes(demo_source, entry)


class PublishedInTheGap(LocalDestination):
    """A real folder destination where another run publishes each file just after this run's check
    for it and before this run opens it: the window in which two runs once both downloaded a file."""

    def __init__(self, root: Path, source: Path) -> None:
        super().__init__(root)
        self.source = source

    def verified(self, relative_path: str, size: int | None, sha1: str | None,
                 stop: threading.Event | None = None) -> FileDigest | None:
        result = super().verified(relative_path, size, sha1, stop)
        other_run = super().open(relative_path, sha1)
        try:
            other_run.write((self.source / relative_path).read_bytes())
            other_run.commit()
        finally:
            other_run.close()
        return result


def test_a_file_another_run_publishes_while_this_run_waits_to_open_it_is_not_fetched(
    demo_server: DemoServer, demo_source: Path, tmp_path: Path
) -> None:
    entries = fetch_manifest(demo_server).entries("cubercnn", "seq_000")
    destination = PublishedInTheGap(tmp_path / "cubercnn", demo_source / "cubercnn")

    report = transfer_entries(entries, {"cubercnn": destination}, FAST)

    assert file_requests(demo_server) == []
    assert [result.status for result in report.results] == ["skipped"] * len(entries)
    for entry in entries:
        assert (tmp_path / "cubercnn" / entry.relative_path).read_bytes() == source_bytes(demo_source, entry)


def test_held_bytes_covering_the_whole_file_are_verified_and_published_without_a_request(
    demo_server: DemoServer, demo_source: Path, tmp_path: Path
) -> None:
    entry = first_entry(fetch_manifest(demo_server))
    hold(tmp_path, entry, source_bytes(demo_source, entry))

    report = download_entries([entry], folders(tmp_path), FAST)

    assert file_requests(demo_server) == []
    assert report.results[0].status == "resumed"
    assert (tmp_path / "cubercnn" / entry.relative_path).read_bytes() == source_bytes(demo_source, entry)


def test_held_bytes_covering_a_file_the_manifest_gives_no_size_for_are_verified_not_fetched_again(
    demo_server: DemoServer, demo_source: Path, tmp_path: Path
) -> None:
    entry = dataclasses.replace(first_entry(fetch_manifest(demo_server)), size=None)
    hold(tmp_path, entry, source_bytes(demo_source, entry))

    report = download_entries([entry], folders(tmp_path), FAST)

    assert demo_server.stats.body_bytes_sent() == 0
    assert report.results[0].status == "resumed"
    assert (tmp_path / "cubercnn" / entry.relative_path).read_bytes() == source_bytes(demo_source, entry)


SIZELESS = bytes(range(256)) * 400


def sizeless_entry(plain_server: PlainServer, path: str) -> ManifestEntry:
    """`SIZELESS` served at `path` as S3 and moto serve it: a 416 without the size; the manifest gives no size."""
    plain_server.serve(path, SIZELESS, total_in_416=False)
    return ManifestEntry("cubercnn", "seq_000", "sizeless.tar", plain_server.url(path),
                         sha1=hashlib.sha1(SIZELESS).hexdigest())


def test_held_bytes_of_a_file_without_a_size_are_verified_not_fetched_again_after_a_416_without_the_size(
    plain_server: PlainServer, tmp_path: Path
) -> None:
    """Neither the manifest nor the 416 tells the held bytes are the whole file: a one-byte range's answer does."""
    entry = sizeless_entry(plain_server, "/sizeless.tar")
    hold(tmp_path, entry, SIZELESS)

    report = download_entries([entry], folders(tmp_path), FAST)

    assert [(r.range_header, r.status) for r in plain_server.requests] == [
        (f"bytes={len(SIZELESS)}-", 416), ("bytes=0-0", 206)]
    assert plain_server.body_bytes_sent("/sizeless.tar") == 1
    assert report.results[0].status == "resumed"
    assert (tmp_path / "cubercnn" / entry.relative_path).read_bytes() == SIZELESS


def test_held_bytes_as_long_as_a_file_without_a_size_but_failing_its_sha1_are_fetched_again_after_a_416(
    plain_server: PlainServer, tmp_path: Path
) -> None:
    entry = sizeless_entry(plain_server, "/sizeless.tar")
    hold(tmp_path, entry, b"\xff" * len(SIZELESS))

    report = download_entries([entry], folders(tmp_path), FAST)

    assert [(r.range_header, r.status) for r in plain_server.requests] == [
        (f"bytes={len(SIZELESS)}-", 416), ("bytes=0-0", 206), (None, 200)]
    assert report.results[0].status == "downloaded"
    assert (tmp_path / "cubercnn" / entry.relative_path).read_bytes() == SIZELESS


def test_a_garbled_resume_sidecar_is_ignored_and_the_download_completes(
    demo_server: DemoServer, demo_source: Path, tmp_path: Path
) -> None:
    """After a power loss a file can hold stale blocks of other files instead of what was written last."""
    entry = first_entry(fetch_manifest(demo_server))
    part = hold(tmp_path, entry, source_bytes(demo_source, entry)[:1000])
    part.with_name(f"{part.name}.json").write_bytes(b"\xff\xfe\x00garbage")

    report = download_entries([entry], folders(tmp_path), FAST)

    assert report.results[0].status == "resumed"
    assert (tmp_path / "cubercnn" / entry.relative_path).read_bytes() == source_bytes(demo_source, entry)


def test_held_bytes_failing_verification_restart_from_byte_zero(
    demo_server: DemoServer, demo_source: Path, tmp_path: Path
) -> None:
    entry = first_entry(fetch_manifest(demo_server))
    hold(tmp_path, entry, b"\xff" * 1000)

    download_entries([entry], folders(tmp_path), FAST)

    assert [r.range_header for r in requests_for(demo_server, entry)] == ["bytes=1000-", None]
    assert (tmp_path / "cubercnn" / entry.relative_path).read_bytes() == source_bytes(demo_source, entry)


def test_expired_links_raise_link_expired_naming_the_files_without_retry(demo_server: DemoServer, tmp_path: Path
                                                                         ) -> None:
    entries = list(fetch_manifest(demo_server).entries("cubercnn", "seq_000"))
    demo_server.advance_clock(3601)

    with pytest.raises(LinkExpired) as raised:
        download_entries(entries, folders(tmp_path), FAST)

    assert raised.value.files == tuple(f"cubercnn/{entry.relative_path}" for entry in entries)
    assert "cubercnn/seq_000/shards-0000.tar, cubercnn/seq_000/shards-0001.tar" in str(raised.value)
    assert [r.status for r in file_requests(demo_server)] == [403] * len(entries)


def test_link_expired_also_lists_the_files_that_failed_for_another_reason(demo_server: DemoServer, tmp_path: Path
                                                                          ) -> None:
    expired, broken, fine = list(fetch_manifest(demo_server).all_entries())[:3]
    demo_server.faults.fail_with_status(403, times=10, path_contains=url_path(expired))
    demo_server.faults.fail_with_status(503, times=10, path_contains=url_path(broken))

    with pytest.raises(LinkExpired) as raised:
        download_entries([expired, broken, fine], folders(tmp_path), FAST)

    assert raised.value.files == (f"{expired.config}/{expired.relative_path}",)
    assert f"Also failed: {broken.config}/{broken.relative_path}: RetryableStatus" in str(raised.value)
    assert "HTTP 503" in str(raised.value) and fine.relative_path not in str(raised.value)


@pytest.mark.parametrize(("status", "refusal"), [
    (401, "Unauthorized from {url}: access denied"),
    (403, "Forbidden from {url}: access denied"),
    (410, "Gone from {url}: the file is gone"),
])
def test_a_refused_unsigned_link_fails_at_once_as_permanent_access_denied_not_as_an_expired_link(
    plain_server: PlainServer, tmp_path: Path, status: int, refusal: str
) -> None:
    plain_server.serve("/open/shards-0000.tar", b"x" * 1000)
    plain_server.fail("/open/shards-0000.tar", status, times=10)
    url = plain_server.url("/open/shards-0000.tar")
    entry = ManifestEntry("cubercnn", "seq_000", "shards-0000.tar", url)
    refreshes: list[int] = []

    def refresh(stop: transfer.TransferStop) -> UrlManifest:
        refreshes.append(1)
        return UrlManifest("refresh", {"cubercnn": {"seq_000": (entry,)}})

    report = transfer_entries([entry], folders(tmp_path), FAST, refresh=refresh)

    why = f"AccessDenied: seq_000/shards-0000.tar: HTTP {status} {refusal.format(url=url)}, not an expired link"
    assert report.failures == {"cubercnn/seq_000/shards-0000.tar": why}
    assert report.expired == () and report.permanent == ("cubercnn/seq_000/shards-0000.tar",)
    assert [r.status for r in plain_server.requests] == [status] and refreshes == []
    with pytest.raises(PermanentTransferError, match=f"HTTP {status} .*not an expired link"):
        report.raise_for_failures()


def test_only_failures_that_no_later_try_can_cure_make_the_error_permanent(
        demo_server: DemoServer, tmp_path: Path) -> None:
    missing, busy = list(fetch_manifest(demo_server).all_entries())[:2]
    demo_server.faults.fail_with_status(404, times=10, path_contains=url_path(missing))
    demo_server.faults.fail_with_status(503, times=10, path_contains=url_path(busy))

    with pytest.raises(PermanentTransferError, match="HTTP 404"):
        download_entries([missing], folders(tmp_path), FAST)
    with pytest.raises(TransferError) as both:
        download_entries([missing, busy], folders(tmp_path), FAST)

    assert not isinstance(both.value, PermanentTransferError)


def test_links_expired_before_start_are_detected_from_the_url_and_not_requested(
    demo_server: DemoServer, tmp_path: Path
) -> None:
    manifest = fetch_manifest(demo_server, ttl=0)

    report = transfer_entries(manifest.all_entries(), folders(tmp_path), FAST)

    assert file_requests(demo_server) == []
    assert report.expired == tuple(f"{e.config}/{e.relative_path}" for e in manifest.all_entries())
    assert all("not requested" in why for why in report.failures.values())
    with pytest.raises(LinkExpired):
        report.raise_for_failures()


def test_refresh_fetches_fresh_links_once_and_continues_from_held_bytes(
    demo_server: DemoServer, demo_source: Path, tmp_path: Path
) -> None:
    manifest = fetch_manifest(demo_server)
    entry = first_entry(manifest)
    cut = entry.size // 3
    leave_partial(demo_server, entry, tmp_path, cut)
    demo_server.advance_clock(3601)
    entries = [*manifest.entries("cubercnn", "seq_000"), *manifest.entries("efm", "seq_001")]

    report = download_entries(entries, folders(tmp_path), FAST, refresh=lambda stop: fetch_manifest(demo_server))

    assert [r.path for r in demo_server.stats.requests].count("/manifest.json") == 1
    assert [(r.range_header, r.status) for r in requests_for(demo_server, entry)] == [
        (f"bytes={cut}-", 403), (f"bytes={cut}-", 206)]
    assert demo_server.stats.body_bytes_sent(url_path(entry)) == entry.size - cut
    assert report.count("resumed") == 1 and report.count("downloaded") == len(entries) - 1
    assert (tmp_path / "cubercnn" / entry.relative_path).read_bytes() == source_bytes(demo_source, entry)


def test_links_expired_before_start_are_refreshed_when_a_source_is_given(
    demo_server: DemoServer, tmp_path: Path
) -> None:
    manifest = fetch_manifest(demo_server, ttl=0)
    demo_server.stats.reset()

    report = download_entries(manifest.all_entries(), folders(tmp_path), FAST,
                              refresh=lambda stop: fetch_manifest(demo_server))

    assert report.count("downloaded") == len(manifest.all_entries())
    assert {r.status for r in demo_server.stats.requests} == {200}
    assert [r.path for r in demo_server.stats.requests].count("/manifest.json") == 1


def test_ctrl_c_stops_the_transfer_and_keeps_held_bytes(demo_server: DemoServer, tmp_path: Path) -> None:
    manifest = fetch_manifest(demo_server)
    demo_server.faults.trickle(100_000)

    class Interrupting(InFlight):
        def advance(self, key: str, nbytes: int) -> None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        transfer_entries(manifest.all_entries(), folders(tmp_path), FAST, Interrupting())

    held = [path for path in tmp_path.rglob("*.part") if path.stat().st_size > 0]
    assert held
    assert not list(tmp_path.rglob("*.tar"))


def test_ctrl_c_stops_files_waiting_to_retry_without_further_requests(
    demo_server: DemoServer, tmp_path: Path
) -> None:
    manifest = fetch_manifest(demo_server)
    interrupted, waiting = manifest.entries("cubercnn", "seq_000")[:2]
    demo_server.faults.fail_with_status(503, times=10, retry_after=120, path_contains=url_path(waiting))
    demo_server.faults.trickle(20_000, path_contains=url_path(interrupted))
    settings = TransferSettings(workers=2, max_attempts=5)

    class Interrupting(InFlight):
        def advance(self, key: str, nbytes: int) -> None:
            if requests_for(demo_server, waiting):  # the other file got its 503 and waits to retry
                raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        transfer_entries([interrupted, waiting], folders(tmp_path), settings, Interrupting())

    assert time.monotonic() - started < 2.5
    assert [r.status for r in requests_for(demo_server, waiting)] == [503]


def test_a_server_silent_mid_body_fails_the_file_only_after_the_read_timeout_keeping_the_bytes_received(
    plain_server: PlainServer, tmp_path: Path
) -> None:
    """Nobody stops: the inactivity timeout alone ends the read, no sooner than `timeout_seconds`."""
    path, data, cut = "/silent.tar", b"s" * 50_000, 20_000
    plain_server.serve(path, data)
    plain_server.stall_after(path, cut)
    entry = ManifestEntry("cubercnn", "seq_000", "silent.tar", plain_server.url(path), size=len(data))
    settings = TransferSettings(workers=1, max_attempts=1, timeout_seconds=2)

    report = transfer_entries([entry], folders(tmp_path), settings)

    assert "ReadTimeout" in report.failures["cubercnn/seq_000/silent.tar"]
    assert report.elapsed_seconds >= settings.timeout_seconds
    assert (tmp_path / "cubercnn" / "seq_000" / "silent.tar.part").read_bytes() == data[:cut]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.01)


def test_stopping_a_transfer_whose_server_never_answers_its_request_ends_it_at_once_and_a_rerun_resumes(
    plain_server: PlainServer, tmp_path: Path
) -> None:
    """The resume request is read and held without a status line: only the stop ends the wait for its headers,
    long before the 30 s read timeout, and the bytes held before stay for the next run."""
    path, data, cut = "/hung.tar", os.urandom(50_000), 20_000
    plain_server.serve(path, data)
    plain_server.drop_after(path, cut)
    entry = ManifestEntry("cubercnn", "seq_000", "hung.tar", plain_server.url(path), size=len(data))
    part = tmp_path / "cubercnn" / "seq_000" / "hung.tar.part"
    settings = TransferSettings(workers=1, max_attempts=1, timeout_seconds=30)
    assert transfer_entries([entry], folders(tmp_path), settings).failures
    assert part.read_bytes() == data[:cut]

    plain_server.never_answer(path)
    stop = threading.Event()
    reports: list[transfer.DownloadReport] = []
    worker = threading.Thread(target=lambda: reports.append(
        transfer_entries([entry], folders(tmp_path), settings, stop=stop)), daemon=True)
    worker.start()
    wait_for(lambda: plain_server.unanswered == [path], "request held by the server")
    stopped = time.monotonic()
    stop.set()
    worker.join(timeout=10)

    assert not worker.is_alive(), "the transfer still waits for the response headers"
    assert time.monotonic() - stopped < 2
    assert reports[0].interrupted == ("cubercnn/seq_000/hung.tar",) and not reports[0].failures
    with pytest.raises(TransferCancelled):
        reports[0].raise_for_failures()
    assert part.read_bytes() == data[:cut]

    assert download_entries([entry], folders(tmp_path), settings).count("resumed") == 1
    assert (tmp_path / "cubercnn" / "seq_000" / "hung.tar").read_bytes() == data
    assert plain_server.requests[-1].range_header == f"bytes={cut}-"


def test_setting_the_stop_of_a_fetch_waiting_for_response_headers_raises_transfer_cancelled_naming_the_url(
    plain_server: PlainServer
) -> None:
    plain_server.serve("/manifest.json", b"{}")
    plain_server.never_answer("/manifest.json")
    url, stop = plain_server.url("/manifest.json"), transfer.TransferStop()
    settings = TransferSettings(max_attempts=1, timeout_seconds=30)
    errors: list[BaseException] = []

    def fetch() -> None:
        with transfer.make_client(settings) as client:
            try:
                transfer.fetch_bytes(client, url, settings, stop=stop)
            except BaseException as error:
                errors.append(error)

    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    wait_for(lambda: plain_server.unanswered == ["/manifest.json"], "request held by the server")
    stopped = time.monotonic()
    stop.set()
    worker.join(timeout=10)

    assert not worker.is_alive(), "the fetch still waits for the response headers"
    assert time.monotonic() - stopped < 2
    assert len(errors) == 1 and isinstance(errors[0], TransferCancelled) and url in str(errors[0])


# Holds the lock of the file `argv[1]` with some bytes in its `.part`, as a second run downloading it does,
# until its stdin closes.
LOCK_HOLDER = """
import sys
from pathlib import Path
from dataset_assets.core.storage import locked

final = Path(sys.argv[1])
final.parent.mkdir(parents=True)
with locked(final):
    final.with_name(final.name + ".part").write_bytes(b"their bytes")
    print("ready", flush=True)
    sys.stdin.read()
"""


class LogSeen(logging.Handler):
    """Sets `seen` once a record containing `text` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.seen = text, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


@pytest.fixture
def lock_waits() -> Iterator[threading.Event]:
    """Set when a transfer starts waiting for a lock another process holds (core.storage logs it)."""
    logger = logging.getLogger("dataset_assets.core.storage")
    handler, level = LogSeen("is being written by another process; waiting for it"), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.seen
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_stopping_a_transfer_waiting_for_another_process_lock_returns_at_once_leaving_its_lock_and_bytes(
    demo_server: DemoServer, tmp_path: Path, lock_waits: threading.Event
) -> None:
    entry = first_entry(fetch_manifest(demo_server))
    final = tmp_path / entry.config / entry.relative_path
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(final)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    stop = threading.Event()
    reports: list[transfer.DownloadReport] = []
    worker = threading.Thread(target=lambda: reports.append(
        transfer_entries([entry], folders(tmp_path), FAST, stop=stop)), daemon=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        worker.start()
        assert lock_waits.wait(10)
        stop.set()
        worker.join(timeout=10)

        assert not worker.is_alive(), "the transfer still waits for the other process's lock"
        assert holder.poll() is None
        with open(storage.lock_path(final), "rb") as lock, pytest.raises(BlockingIOError):
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert sorted(path.name for path in final.parent.iterdir()) == [f".{final.name}.lock", f"{final.name}.part"]
        assert final.with_name(f"{final.name}.part").read_bytes() == b"their bytes"
    finally:
        holder.communicate(timeout=10)
        worker.join(timeout=10)
    assert holder.returncode == 0
    assert reports[0].interrupted == (f"{entry.config}/{entry.relative_path}",) and not reports[0].failures
    assert file_requests(demo_server) == []


def test_signed_query_strings_never_reach_logs_errors_or_metadata(
    demo_server: DemoServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    manifest = fetch_manifest(demo_server)
    signatures = {parse_qs(urlsplit(e.url).query)["Signature"][0] for e in manifest.all_entries()}
    entry = first_entry(manifest)
    demo_server.faults.fail_with_status(500, times=1)
    demo_server.faults.drop_after_bytes(100, path_contains=url_path(entry))
    demo_server.faults.replace_content("efm/seq_000/shards-0000", b"changed")

    report = transfer_entries(manifest.all_entries(), folders(tmp_path / "a"), FAST)
    demo_server.advance_clock(3601)
    with pytest.raises(LinkExpired) as expired:
        download_entries(manifest.all_entries(), folders(tmp_path / "b"), FAST)

    assert report.failures and report.count("resumed") == 1
    texts = [caplog.text, json.dumps(report.metadata()), str(expired.value), repr(expired.value)]
    for text in texts:
        assert "Signature=" not in text
        assert not any(signature in text for signature in signatures)


NESTED_JSON = b'{"atek_data_for_all_configs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def test_a_manifest_nested_too_deeply_is_refused_naming_its_source_not_a_recursion_error(
    plain_server: PlainServer, tmp_path: Path
) -> None:
    """JSON nesting is bounded only by the parser's recursion limit; a hostile manifest must not crash callers."""
    plain_server.serve("/manifest.json?token=SECRETTOKEN1", NESTED_JSON)
    url = plain_server.url("/manifest.json?token=SECRETTOKEN1")
    with pytest.raises(TransferError, match=r"manifest\.json\?<redacted>:? manifest is not valid JSON \(nested"):
        transfer.fetch_manifest(url)

    path = tmp_path / "manifest.json"
    path.write_bytes(NESTED_JSON)
    with pytest.raises(ManifestError, match=rf"{path}: field '<root>' is not valid JSON: nested"):
        transfer.fetch_manifest(str(path))


class _EncodedManifestHandler(BaseHTTPRequestHandler):
    """Answers every GET with the server's `body` and `headers`, as a server that gzips its manifest does."""

    server: _EncodedManifestServer

    def do_GET(self) -> None:
        self.send_response(200)
        for name, value in {"Content-Length": str(len(self.server.body)), **self.server.headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class _EncodedManifestServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, body: bytes, headers: dict[str, str]) -> None:
        super().__init__(("127.0.0.1", 0), _EncodedManifestHandler)
        self.body, self.headers = body, headers


@contextlib.contextmanager
def _serving(body: bytes, headers: dict[str, str]) -> Iterator[str]:
    server = _EncodedManifestServer(body, headers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/manifest.json?token=SECRETTOKEN1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_a_manifest_past_the_size_limit_is_refused_before_it_is_held_whole(encoding: str) -> None:
    """A manifest is a small document; a hostile server may send gigabytes, or a gzip bomb that inflates to them."""
    payload = b'{"atek_data_for_all_configs": {"' + b" " * (64 << 20) + b'": {}}}'
    body = gzip.compress(payload, mtime=0) if encoding == "gzip" else payload
    with _serving(body, {"Content-Encoding": encoding}) as url:
        with pytest.raises(TransferError, match=rf"manifest\.json\?<redacted>:? manifest is larger than the "
                                                rf"{1 << 20}-byte limit"):
            transfer.fetch_manifest(url, max_bytes=1 << 20)
