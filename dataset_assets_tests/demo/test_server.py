"""Tests of the demo HTTP server, talking to it over loopback with httpx (and raw http.client)."""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from dataset_assets.core.manifest import parse_manifest
from dataset_assets.demo.generate import DemoFile
from dataset_assets.demo.server import DemoServer, RangeNotSatisfiable, RequestRecord, parse_range
from dataset_assets_tests.demo import fixtures

demo_source = fixtures.demo_source
demo_files = fixtures.demo_files
demo_server = fixtures.demo_server

FIRST = "cubercnn/seq_000/shards-0000.tar"


def _manifest(server: DemoServer, query: str = "") -> dict:
    response = httpx.get(f"{server.manifest_url}{query}")
    response.raise_for_status()
    return response.json()


def _first_url(server: DemoServer, query: str = "") -> str:
    files = _manifest(server, query)["atek_data_for_all_configs"]["cubercnn"]["wds_file_urls"]
    return files["seq_000"]["shards-0000_tar"]["download_url"]


def _raw_get(server: DemoServer, target: str) -> tuple[int, bytes]:
    """GET `target` verbatim (httpx would normalise `..` segments away before sending)."""
    host, port = urlsplit(server.base_url).netloc.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_manifest_parses_and_sha1_matches_served_bytes(demo_server: DemoServer, demo_files: list[DemoFile]) -> None:
    manifest = parse_manifest(_manifest(demo_server), demo_server.manifest_url)

    assert sorted(manifest.configs) == ["cubercnn", "efm"]
    assert manifest.all_sequences() == [f"seq_{index:03d}" for index in range(8)]
    entries = manifest.all_entries()
    assert [(e.config, e.sequence, e.filename) for e in entries] == [
        (f.config, f.sequence, f.filename) for f in demo_files
    ]
    with httpx.Client() as client:
        for entry, demo_file in zip(entries, demo_files):
            response = client.get(entry.url)
            assert response.status_code == 200
            assert hashlib.sha1(response.content).hexdigest() == entry.sha1 == demo_file.sha1
            assert len(response.content) == entry.size == demo_file.size
            assert response.headers["ETag"] == f'"{demo_file.sha1}"'
            assert response.headers["Accept-Ranges"] == "bytes"


def test_manifest_links_expire_after_the_link_ttl(demo_server: DemoServer) -> None:
    default = parse_manifest(_manifest(demo_server), "demo").earliest_expiry()
    short = parse_manifest(_manifest(demo_server, "?ttl=60"), "demo").earliest_expiry()

    assert default is not None and short is not None
    assert abs(default.timestamp() - (time.time() + 3600)) < 5
    assert abs(short.timestamp() - (time.time() + 60)) < 5


def test_invalid_ttl_is_refused_with_400(demo_server: DemoServer) -> None:
    response = httpx.get(f"{demo_server.manifest_url}?ttl=soon")

    assert response.status_code == 400
    assert "ttl must be a non-negative integer" in response.text


def test_each_manifest_request_issues_new_links(demo_server: DemoServer) -> None:
    first = _first_url(demo_server)
    demo_server.advance_clock(10)
    second = _first_url(demo_server)

    assert first != second
    assert int(parse_qs(urlsplit(second).query)["Expires"][0]) - int(parse_qs(urlsplit(first).query)["Expires"][0]) >= 9


def test_expired_link_is_refused_with_403(demo_server: DemoServer) -> None:
    url = _first_url(demo_server)
    demo_server.advance_clock(3601)

    refused = httpx.get(url)
    refreshed = httpx.get(_first_url(demo_server))

    assert (refused.status_code, refused.text) == (403, "link expired")
    assert refreshed.status_code == 200


def test_bad_signature_is_refused(demo_server: DemoServer) -> None:
    url = _first_url(demo_server)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    expires, signature = query["Expires"][0], query["Signature"][0]
    other_file = demo_server.signed_url("efm/seq_000/shards-0000.tar")
    candidates = [
        f"{demo_server.base_url}{parts.path}?Expires={expires}&Signature={'0' * len(signature)}",
        f"{demo_server.base_url}{parts.path}?Expires={int(expires) + 3600}&Signature={signature}",
        f"{demo_server.base_url}{parts.path}?Expires={expires}",
        f"{demo_server.base_url}{parts.path}",
        f"{demo_server.base_url}{parts.path}?Expires={expires}&Signature=%C3%A9",
        f"{demo_server.base_url}{parts.path}?{urlsplit(other_file).query}",
    ]

    with httpx.Client() as client:
        for candidate in candidates:
            response = client.get(candidate)
            assert (response.status_code, response.text) == (403, "invalid signature"), candidate


def test_link_signed_with_another_secret_is_refused(demo_source: Path) -> None:
    with DemoServer(demo_source, secret=b"one") as one, DemoServer(demo_source, secret=b"two") as two:
        url = one.signed_url(FIRST).replace(one.base_url, two.base_url)
        response = httpx.get(url)

    assert (response.status_code, response.text) == (403, "invalid signature")


def test_path_traversal_is_refused(demo_server: DemoServer) -> None:
    expires = int(time.time()) + 60
    targets = ["/files/../source.json", "/files/cubercnn/../../source.json", "/files/cubercnn/seq_000/..",
               "/files/%2e%2e/cubercnn/source.json", "/files/cubercnn/seq_000/.hidden"]

    for target in targets:
        signature = demo_server.sign(target, expires)
        status, body = _raw_get(demo_server, f"{target}?Expires={expires}&Signature={signature}")
        assert (status, body) == (400, b"invalid path"), target


def test_symlink_leading_out_of_the_folder_is_neither_listed_nor_served(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("not for download")
    sequence = tmp_path / "source" / "cubercnn" / "seq_000"
    sequence.mkdir(parents=True)
    (sequence / "shards-0000.tar").symlink_to(secret_file)

    with DemoServer(tmp_path / "source") as server:
        response = httpx.get(server.signed_url("cubercnn/seq_000/shards-0000.tar"))
        listed = _manifest(server)["atek_data_for_all_configs"]

    assert response.status_code == 400
    assert listed == {}


def test_missing_file_is_answered_404(demo_server: DemoServer) -> None:
    response = httpx.get(demo_server.signed_url("cubercnn/seq_999/shards-0000.tar"))

    assert (response.status_code, response.text) == (404, "not found")


def test_range_request_returns_only_requested_bytes(demo_server: DemoServer, demo_files: list[DemoFile]) -> None:
    data = demo_files[0].path.read_bytes()
    url = _first_url(demo_server)

    with httpx.Client() as client:
        middle = client.get(url, headers={"Range": "bytes=100-199"})
        tail = client.get(url, headers={"Range": f"bytes={len(data) - 50}-"})
        suffix = client.get(url, headers={"Range": "bytes=-10"})

    assert middle.status_code == 206
    assert middle.content == data[100:200]
    assert middle.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert tail.content == data[-50:]
    assert suffix.content == data[-10:]
    assert demo_server.stats.body_bytes_sent(FIRST) == 100 + 50 + 10


def test_unsatisfiable_range_is_answered_416(demo_server: DemoServer, demo_files: list[DemoFile]) -> None:
    response = httpx.get(_first_url(demo_server), headers={"Range": f"bytes={demo_files[0].size}-"})

    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{demo_files[0].size}"


def test_range_with_stale_if_range_returns_the_whole_file(demo_server: DemoServer, demo_files: list[DemoFile]) -> None:
    url = _first_url(demo_server)

    stale = httpx.get(url, headers={"Range": "bytes=10-", "If-Range": '"0000"'})
    current = httpx.get(url, headers={"Range": "bytes=10-", "If-Range": f'"{demo_files[0].sha1}"'})

    assert (stale.status_code, len(stale.content)) == (200, demo_files[0].size)
    assert (current.status_code, len(current.content)) == (206, demo_files[0].size - 10)


def test_head_answers_headers_without_body(demo_server: DemoServer, demo_files: list[DemoFile]) -> None:
    response = httpx.head(_first_url(demo_server))

    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(demo_files[0].size)
    assert response.headers["ETag"] == f'"{demo_files[0].sha1}"'
    assert response.content == b""
    assert demo_server.stats.body_bytes_sent() == 0


def test_drop_after_bytes_closes_connection_mid_body(demo_server: DemoServer, demo_files: list[DemoFile]) -> None:
    data = demo_files[0].path.read_bytes()
    url = _first_url(demo_server)
    demo_server.faults.drop_after_bytes(1000)
    received = bytearray()

    with httpx.Client() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            with client.stream("GET", url) as response:
                assert response.headers["Content-Length"] == str(len(data))
                for chunk in response.iter_raw():
                    received.extend(chunk)
        retried = client.get(url)

    assert bytes(received) == data[:1000]
    assert retried.content == data
    assert demo_server.stats.body_bytes_sent(FIRST) == 1000 + len(data)


def test_drop_only_hits_files_matching_path_contains(demo_server: DemoServer) -> None:
    demo_server.faults.drop_after_bytes(10, path_contains="efm/seq_001")

    with httpx.Client() as client:
        spared = client.get(demo_server.signed_url(FIRST))
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(demo_server.signed_url("efm/seq_001/shards-0001.tar"))

    assert spared.status_code == 200


def test_status_burst_is_answered_then_the_server_recovers(demo_server: DemoServer) -> None:
    url = _first_url(demo_server)
    demo_server.faults.fail_with_status(500, times=2)

    with httpx.Client() as client:
        statuses = [client.get(url).status_code for _ in range(3)]

    assert statuses == [500, 500, 200]


def test_429_carries_retry_after(demo_server: DemoServer) -> None:
    demo_server.faults.fail_with_status(429, times=1, retry_after=1.5)

    response = httpx.get(_first_url(demo_server))

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1.5"


def test_faults_without_path_contains_spare_the_manifest(demo_server: DemoServer) -> None:
    demo_server.faults.fail_with_status(503, times=1)
    demo_server.faults.drop_after_bytes(5)

    assert httpx.get(demo_server.manifest_url).status_code == 200

    demo_server.faults.fail_with_status(503, times=1, path_contains="/manifest.json")
    assert httpx.get(demo_server.manifest_url).status_code == 503


def test_trickle_slows_the_body_down(demo_server: DemoServer, demo_files: list[DemoFile]) -> None:
    url = _first_url(demo_server)
    demo_server.faults.trickle(10_000)

    started = time.monotonic()
    response = httpx.get(url, headers={"Range": "bytes=0-2999"})
    elapsed = time.monotonic() - started

    assert response.content == demo_files[0].path.read_bytes()[:3000]
    assert elapsed >= 0.25


def test_bytes_of_a_body_begun_before_reset_do_not_count_after_it(demo_server: DemoServer) -> None:
    url = _first_url(demo_server)
    demo_server.faults.trickle(10_000)
    with httpx.stream("GET", url, headers={"Range": "bytes=0-2999"}) as slow:
        chunks = slow.iter_raw(1000)
        first = next(chunks)
        demo_server.stats.reset()
        rest = b"".join(chunks)
    demo_server.faults.clear()

    assert len(first) + len(rest) == 3000
    assert demo_server.stats.body_bytes_sent() == 0
    httpx.get(url, headers={"Range": "bytes=0-99"})
    assert demo_server.stats.body_bytes_sent() == 100


def test_ignore_range_answers_the_whole_body(demo_server: DemoServer, demo_files: list[DemoFile]) -> None:
    demo_server.faults.ignore_range()

    response = httpx.get(_first_url(demo_server), headers={"Range": "bytes=100-"})

    assert response.status_code == 200
    assert len(response.content) == demo_files[0].size


def test_capped_ranges_answer_at_most_the_cap_from_the_range_start(
    demo_server: DemoServer, demo_files: list[DemoFile]
) -> None:
    demo_server.faults.cap_ranges(100)

    response = httpx.get(_first_url(demo_server), headers={"Range": "bytes=1000-"})

    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes 1000-1099/{demo_files[0].size}"
    assert response.content == demo_files[0].path.read_bytes()[1000:1100]


def test_replaced_content_changes_bytes_etag_and_manifest(demo_server: DemoServer) -> None:
    old_url = _first_url(demo_server)
    new_data = b"changed upstream"
    demo_server.faults.replace_content("cubercnn/seq_000/shards-0000", new_data)

    response = httpx.get(old_url)
    entry = _manifest(demo_server)["atek_data_for_all_configs"]["cubercnn"]["wds_file_urls"]["seq_000"]

    new_sha1 = hashlib.sha1(new_data).hexdigest()
    assert response.content == new_data
    assert response.headers["ETag"] == f'"{new_sha1}"'
    assert entry["shards-0000_tar"]["sha1sum"] == new_sha1
    assert entry["shards-0000_tar"]["file_size_bytes"] == len(new_data)
    assert entry["shards-0001_tar"]["sha1sum"] != new_sha1


def test_clear_disarms_every_fault(demo_server: DemoServer, demo_files: list[DemoFile]) -> None:
    url = _first_url(demo_server)
    faults = demo_server.faults
    faults.fail_with_status(500, times=5)
    faults.drop_after_bytes(1, times=5)
    faults.trickle(1)
    faults.ignore_range()
    faults.cap_ranges(1)
    faults.replace_content("seq_000", b"x")

    faults.clear()
    response = httpx.get(url, headers={"Range": "bytes=0-9"}, timeout=5)

    assert (response.status_code, response.content) == (206, demo_files[0].path.read_bytes()[:10])


def test_stats_record_requests_without_query_strings(demo_server: DemoServer) -> None:
    url = _first_url(demo_server)
    httpx.get(url, headers={"Range": "bytes=0-0"})
    httpx.head(url)

    assert demo_server.stats.requests == [
        RequestRecord("GET", "/manifest.json", None, 200),
        RequestRecord("GET", f"/files/{FIRST}", "bytes=0-0", 206),
        RequestRecord("HEAD", f"/files/{FIRST}", None, 200),
    ]
    assert demo_server.stats.body_bytes_sent() == 1
    assert demo_server.stats.body_bytes_sent("/manifest.json") > 1000
    demo_server.stats.reset()
    assert demo_server.stats.requests == []
    assert demo_server.stats.body_bytes_sent() == 0


def test_signatures_never_reach_logs_or_stderr(
    demo_server: DemoServer, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    url = _first_url(demo_server)
    signature = parse_qs(urlsplit(url).query)["Signature"][0]
    host, port = urlsplit(demo_server.base_url).netloc.split(":")
    caplog.set_level(logging.DEBUG, logger="dataset_assets.demo.server")

    httpx.get(url)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(f"GET {url} EXTRA HTTP/1.1\r\n\r\n".encode())
        assert raw.recv(100).startswith(b"HTTP/1.1 400")

    assert "Bad request syntax" in caplog.text
    assert signature not in caplog.text
    captured = capfd.readouterr()
    assert signature not in captured.err + captured.out
    assert "GET /files" not in captured.err


def test_stop_frees_the_port_and_ends_idle_connections(demo_source: Path) -> None:
    server = DemoServer(demo_source).start()
    base_url = server.base_url
    with httpx.Client() as client:
        assert client.get(server.manifest_url).status_code == 200
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2
        with pytest.raises(httpx.TransportError):
            client.get(f"{base_url}/manifest.json")


def test_entering_a_started_server_keeps_it_running_and_exiting_stops_it(demo_source: Path) -> None:
    server = DemoServer(demo_source).start()
    with server as entered:
        assert entered is server
        assert httpx.get(server.manifest_url).status_code == 200
        with pytest.raises(RuntimeError, match="already running"):
            server.start()

    with pytest.raises(RuntimeError, match="not running"):
        server.base_url


def test_server_refuses_non_loopback_host_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loopback"):
        DemoServer(tmp_path, host="10.1.2.3")
    with pytest.raises(NotADirectoryError, match="missing"):
        DemoServer(tmp_path / "missing")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=10-", (10, 99)),
        ("bytes=-5", (95, 99)),
        ("bytes=90-500", (90, 99)),
        (None, None),
        ("bytes=5-1", None),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
    ],
)
def test_parse_range_understands_single_byte_ranges(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=-0", "bytes=200-300"])
def test_parse_range_flags_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


def test_run_demo_server_announces_itself_and_stops_on_sigterm(demo_source: Path, tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    code = (
        "import sys; from pathlib import Path; from dataset_assets.demo.server import run_demo_server; "
        "run_demo_server(Path(sys.argv[1]), 0, 600, Path(sys.argv[2]))"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(demo_source), str(ready)])
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        announcement = json.loads(ready.read_text())
        manifest = httpx.get(f"{announcement['base_url']}/manifest.json").json()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert announcement["pid"] == process.pid
    assert announcement["base_url"].startswith("http://127.0.0.1:")
    assert parse_manifest(manifest, "demo").earliest_expiry() is not None
    assert not ready.exists()
