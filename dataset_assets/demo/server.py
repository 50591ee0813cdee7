"""A loopback HTTP server that publishes the demo source behind HMAC-signed, expiring links.

`GET /manifest.json` answers a fresh ATEK-shaped manifest whose `download_url`s are
`/files/<config>/<sequence>/<filename>?Expires=<unix>&Signature=<hex HMAC-SHA256>`, valid for
`link_ttl_seconds` (or `?ttl=`); every call issues new links, which makes it the refresh endpoint.
File requests honour single byte ranges and `If-Range`, and are refused with 403 when the
signature is wrong or the link has expired by the server's clock. For testing download engines the
server injects faults on demand (`server.faults`), shifts its clock (`advance_clock`) and counts
what it sent (`server.stats`). Query strings carry signatures, so they never reach a log line.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import ipaddress
import json
import mimetypes
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlsplit

from dataset_assets.core.manifest import ROOT_KEY, SAFE_NAME
from dataset_assets.core.redaction import get_logger
from dataset_assets.core.storage import digest_file, write_bytes_atomic

LOGGER = get_logger(__name__)
FILES_PREFIX = "/files/"
MANIFEST_PATH = "/manifest.json"
CHUNK_BYTES = 64 * 1024
TRICKLE_TICKS_PER_SECOND = 20
_QUERY_IN_TEXT = re.compile(r"\?[^\s\"']*")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def path_matches(path: str, path_contains: str | None) -> bool:
    """Whether a request path (no query string) is selected; None selects every `/files/` path."""
    if path_contains is None:
        return path.startswith(FILES_PREFIX)
    return path_contains in path


@dataclass(frozen=True)
class RequestRecord:
    """One answered request: method, path without its query string, Range header, status."""

    method: str
    path: str
    range_header: str | None
    status: int


class ServerStats:
    """Thread-safe record of requests answered and body bytes written, for assertions in tests.

    `reset()` starts a new generation: a body that began before it (say, still trickling into the
    socket of a client that was just killed) keeps counting in its own generation, not the new one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[RequestRecord] = []
        self._body_bytes: dict[str, int] = {}
        self.generation = 0

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    def body_bytes_sent(self, path_contains: str | None = None) -> int:
        """Bytes of successful (2xx) bodies written to sockets for the paths `path_matches` selects.

        Without `path_contains` that is file downloads only; the manifest counts under "/manifest.json".
        """
        with self._lock:
            return sum(n for path, n in self._body_bytes.items() if path_matches(path, path_contains))

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._body_bytes.clear()
            self.generation += 1

    def record_request(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)

    def count_body_bytes(self, path: str, size: int, generation: int) -> None:
        with self._lock:
            if generation == self.generation:
                self._body_bytes[path] = self._body_bytes.get(path, 0) + size


@dataclass
class _Fault:
    """A fault armed for request paths containing `path_contains` (None: every `/files/` path).

    `remaining` counts the requests it still applies to; None means until `clear()`.
    """

    path_contains: str | None
    remaining: int | None
    value: Any

    def matches(self, path: str) -> bool:
        return path_matches(path, self.path_contains)


def _check_times(times: int) -> None:
    if times < 1:
        raise ValueError(f"times must be >= 1, got {times}")


class FaultInjector:
    """Faults the server applies to matching requests; safe to arm from any thread at any time.

    `path_contains` is matched against the request path without its query string, e.g.
    `/files/efm/seq_000/shards-0000.tar`. Without it a fault targets file downloads only, so a
    client can still fetch the manifest; pass `path_contains="/manifest.json"` to target that.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._statuses: list[_Fault] = []
        self._drops: list[_Fault] = []
        self._trickles: list[_Fault] = []
        self._replacements: list[_Fault] = []
        self._range_caps: list[_Fault] = []
        self._ignore_range = False

    def drop_after_bytes(self, n: int, times: int = 1, path_contains: str | None = None) -> None:
        """Send headers and `n` body bytes, then close the connection, on the next `times` bodies."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        _check_times(times)
        with self._lock:
            self._drops.append(_Fault(path_contains, times, n))

    def fail_with_status(
        self, status: int, times: int, retry_after: float | None = None, path_contains: str | None = None
    ) -> None:
        """Answer the next `times` matching requests (any path) with `status`, optionally with Retry-After."""
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status between 400 and 599, got {status}")
        if retry_after is not None and retry_after < 0:
            raise ValueError(f"retry_after must be >= 0 seconds, got {retry_after}")
        _check_times(times)
        with self._lock:
            self._statuses.append(_Fault(path_contains, times, (status, retry_after)))

    def trickle(self, bytes_per_second: int, path_contains: str | None = None) -> None:
        """Write matching bodies at about `bytes_per_second` from now on."""
        if bytes_per_second < 1:
            raise ValueError(f"bytes_per_second must be >= 1, got {bytes_per_second}")
        with self._lock:
            self._trickles.append(_Fault(path_contains, None, bytes_per_second))

    def ignore_range(self, enabled: bool = True) -> None:
        """Answer 200 with the whole body even when a Range is asked, as some servers do."""
        with self._lock:
            self._ignore_range = enabled

    def cap_ranges(self, max_bytes: int, path_contains: str | None = None) -> None:
        """Answer ranges with at most `max_bytes` from their start from now on: a 206 whose Content-Range
        ends before the range asked for, as servers that limit range sizes send."""
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        with self._lock:
            self._range_caps.append(_Fault(path_contains, None, max_bytes))

    def replace_content(self, path_contains: str, data: bytes) -> None:
        """Serve `data` for matching files from now on, as if the file changed upstream."""
        with self._lock:
            self._replacements.append(_Fault(path_contains, None, bytes(data)))

    def clear(self) -> None:
        with self._lock:
            for faults in (self._statuses, self._drops, self._trickles, self._replacements, self._range_caps):
                faults.clear()
            self._ignore_range = False

    def take_status(self, path: str) -> tuple[int, float | None] | None:
        """Consume one injected `(status, retry_after)` armed for `path`, if any."""
        return self._take(self._statuses, path)

    def take_drop(self, path: str) -> int | None:
        """Consume one injected drop for `path`: the number of body bytes to send before closing."""
        return self._take(self._drops, path)

    def trickle_rate(self, path: str) -> int | None:
        return self._latest(self._trickles, path)

    def replacement(self, path: str) -> bytes | None:
        return self._latest(self._replacements, path)

    def range_cap(self, path: str) -> int | None:
        return self._latest(self._range_caps, path)

    def ranges_ignored(self) -> bool:
        with self._lock:
            return self._ignore_range

    def _take(self, faults: list[_Fault], path: str) -> Any:
        with self._lock:
            for fault in faults:
                if fault.matches(path):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining == 0:
                            faults.remove(fault)
                    return fault.value
        return None

    def _latest(self, faults: list[_Fault], path: str) -> Any:
        with self._lock:
            return next((fault.value for fault in reversed(faults) if fault.matches(path)), None)


@dataclass(frozen=True)
class _Body:
    """What a file path serves right now: the file on disk or injected replacement bytes."""

    size: int
    sha1: str
    path: Path | None = None
    data: bytes | None = None

    def open(self) -> BinaryIO:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        return open(self.path, "rb")

    @property
    def etag(self) -> str:
        return f'"{self.sha1}"'


class RangeNotSatisfiable(Exception):
    """The Range header asks for bytes the body does not have."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`(first, last)` inclusive for one `bytes=a-b` / `bytes=a-` / `bytes=-n` range, else None.

    Malformed and multi-range headers are ignored (the whole body is served), as RFC 9110 allows.
    """
    match = _RANGE.match(header.strip()) if header else None
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return max(0, size - suffix), size - 1
    start, end = int(first), int(last) if last else None
    if end is not None and end < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(header)
    return start, size - 1 if end is None else min(end, size - 1)


def _redact_query(text: str) -> str:
    return _QUERY_IN_TEXT.sub("?<redacted>", text)


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _check_loopback(host: str) -> None:
    try:
        loopback = ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the demo server binds IPv4 loopback addresses (127.x.x.x) only, got host {host!r}")


def _single(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name, [])
    return values[0] if len(values) == 1 else None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 drops SYNs of 8 parallel connects (1 s retransmit each)

    def __init__(self, address: tuple[str, int], demo: DemoServer) -> None:
        self.demo = demo
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            LOGGER.debug("demo server: client %s went away", client_address)
        else:
            LOGGER.exception("demo server: unexpected error while serving %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "dataset-assets-demo"
    sys_version = ""
    disable_nagle_algorithm = True  # headers and body go out in separate writes; avoid 40 ms ACK stalls

    def setup(self) -> None:
        super().setup()
        self.server.demo._track_connection(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.demo._untrack_connection(self.connection)

    @property
    def demo(self) -> DemoServer:
        return self.server.demo

    @property
    def url_path(self) -> str:
        return urlsplit(getattr(self, "path", "")).path

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        path, query = self.url_path, parse_qs(urlsplit(self.path).query)
        try:
            injected = self.demo.faults.take_status(path)
            if injected is not None:
                self._send_text(injected[0], "injected failure", send_body, retry_after=injected[1])
            elif path == MANIFEST_PATH:
                self._send_manifest(query, send_body)
            elif path.startswith(FILES_PREFIX):
                self._send_file(path, query, send_body)
            else:
                self._send_text(404, "not found", send_body)
        except ConnectionError:
            self.close_connection = True

    def _send_manifest(self, query: dict[str, list[str]], send_body: bool) -> None:
        ttl = _single(query, "ttl")
        if ttl is not None and not _is_number(ttl):
            self._send_text(400, f"ttl must be a non-negative integer number of seconds, got {ttl!r}", send_body)
            return
        data = json.dumps(self.demo.manifest(None if ttl is None else int(ttl)), indent=1).encode("utf-8")
        self.send_response(200)
        self._send_headers("application/json", len(data), {"Cache-Control": "no-store"})
        if send_body:
            self._write_body(io.BytesIO(data), len(data))

    def _send_file(self, path: str, query: dict[str, list[str]], send_body: bool) -> None:
        relative = path[len(FILES_PREFIX):]
        if not self.demo.is_servable_path(relative):
            self._send_text(400, "invalid path", send_body)
            return
        refusal = self.demo.check_link(path, _single(query, "Expires"), _single(query, "Signature"))
        if refusal is not None:
            self._send_text(403, refusal, send_body)
            return
        body = self.demo.body(relative)
        if body is None:
            self._send_text(404, "not found", send_body)
            return
        self._send_body(body, send_body)

    def _requested_range(self, body: _Body) -> tuple[int, int] | None:
        if self.demo.faults.ranges_ignored():
            return None
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range.strip() != body.etag:
            return None
        span = parse_range(self.headers.get("Range"), body.size)
        cap = self.demo.faults.range_cap(self.url_path)
        if span is None or cap is None:
            return span
        return span[0], min(span[1], span[0] + cap - 1)

    def _send_body(self, body: _Body, send_body: bool) -> None:
        content_type = mimetypes.guess_type(self.url_path)[0] or "application/octet-stream"
        headers = {"Accept-Ranges": "bytes", "ETag": body.etag}
        try:
            span = self._requested_range(body)
        except RangeNotSatisfiable:
            headers["Content-Range"] = f"bytes */{body.size}"
            self._send_text(416, "range not satisfiable", send_body, headers)
            return
        first, last = span if span is not None else (0, body.size - 1)
        if span is None:
            self.send_response(200)
        else:
            self.send_response(206)
            headers["Content-Range"] = f"bytes {first}-{last}/{body.size}"
        self._send_headers(content_type, last - first + 1, headers)
        if send_body:
            with body.open() as source:
                source.seek(first)
                self._write_body(source, last - first + 1)

    def _send_text(self, status: int, text: str, send_body: bool, extra: dict[str, str] | None = None,
                   retry_after: float | None = None) -> None:
        data = text.encode("utf-8")
        headers = dict(extra or {})
        if retry_after is not None:
            headers["Retry-After"] = f"{retry_after:g}"
        self.send_response(status)
        self._send_headers("text/plain; charset=utf-8", len(data), headers)
        if send_body:
            self.wfile.write(data)

    def _send_headers(self, content_type: str, length: int, extra: dict[str, str]) -> None:
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()

    def _write_body(self, source: BinaryIO, length: int) -> None:
        """Copy `length` bytes to the socket, applying any armed drop or trickle fault."""
        path, generation = self.url_path, self.demo.stats.generation
        limit = self.demo.faults.take_drop(path)
        rate = self.demo.faults.trickle_rate(path)
        chunk = max(1, rate // TRICKLE_TICKS_PER_SECOND) if rate else CHUNK_BYTES
        budget = length if limit is None else min(length, limit)
        sent = 0
        while sent < budget:
            data = source.read(min(chunk, budget - sent))
            if not data:
                break
            # Counted before writing: a client that has read these bytes must already see them counted.
            self.demo.stats.count_body_bytes(path, len(data), generation)
            try:
                self.wfile.write(data)
            except ConnectionError:
                self.demo.stats.count_body_bytes(path, -len(data), generation)
                raise
            sent += len(data)
            if rate and self.demo._wait_stopping(len(data) / rate):
                break
        if sent < length:
            self._abort_connection()

    def _abort_connection(self) -> None:
        """Close mid-body: the client sees fewer bytes than Content-Length promised."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        headers = getattr(self, "headers", None)
        record = RequestRecord(
            method=self.command or "", path=self.url_path,
            range_header=headers.get("Range") if headers is not None else None,
            status=int(code) if isinstance(code, int) else 0,
        )
        self.demo.stats.record_request(record)
        LOGGER.debug("demo server: %s %s -> %s", record.method, record.path, record.status)

    def log_message(self, format: str, *args: Any) -> None:
        LOGGER.debug("demo server: %s", _redact_query(format % args))


class DemoServer:
    """Serve `folder` (laid out `<config>/<sequence>/<file>`) on a loopback port with signed links."""

    def __init__(
        self,
        folder: Path,
        secret: bytes | None = None,
        link_ttl_seconds: int = 3600,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if not folder.is_dir():
            raise NotADirectoryError(f"demo source folder {folder} does not exist; generate it first")
        _check_loopback(host)
        if secret is not None and not secret:
            raise ValueError("secret must not be empty")
        if link_ttl_seconds < 0:
            raise ValueError(f"link_ttl_seconds must be >= 0, got {link_ttl_seconds}")
        self.folder = folder
        self.root = folder.resolve()
        self.link_ttl_seconds = link_ttl_seconds
        self.faults = FaultInjector()
        self.stats = ServerStats()
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._address = (host, port)
        self._lock = threading.Lock()
        self._clock_offset = 0.0
        self._digests: dict[Path, tuple[tuple[int, int], _Body]] = {}
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> DemoServer:
        if self._httpd is not None:
            raise RuntimeError(f"demo server already running at {self.base_url}")
        self._stopping.clear()
        self._httpd = _HTTPServer(self._address, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="demo-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut open connections (idle keep-alives, trickles) and free the port."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()
        assert self._thread is not None
        self._thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> DemoServer:
        """Start unless already started, so `with DemoServer(...).start() as server:` works too."""
        return self if self._httpd is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("demo server is not running; call start() first")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def manifest_url(self) -> str:
        return f"{self.base_url}{MANIFEST_PATH}"

    def now(self) -> float:
        """The server's clock: wall time shifted by every `advance_clock` so far."""
        with self._lock:
            return time.time() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        with self._lock:
            self._clock_offset += seconds

    def sign(self, path: str, expires: int) -> str:
        """Hex HMAC-SHA256 of `"{path}\\n{expires}"`, the URL path being e.g. `/files/c/s/f.tar`."""
        return hmac.new(self._secret, f"{path}\n{expires}".encode("utf-8"), hashlib.sha256).hexdigest()

    def signed_url(self, relative_path: str, ttl_seconds: int | None = None) -> str:
        """A download URL for `<config>/<sequence>/<filename>`, valid `ttl_seconds` from the server's now."""
        ttl = self.link_ttl_seconds if ttl_seconds is None else ttl_seconds
        expires = int(self.now()) + ttl
        path = f"{FILES_PREFIX}{relative_path}"
        return f"{self.base_url}{path}?Expires={expires}&Signature={self.sign(path, expires)}"

    def check_link(self, path: str, expires: str | None, signature: str | None) -> str | None:
        """None if the link may be served, else the reason to refuse it."""
        if expires is None or signature is None or not _is_number(expires):
            return "invalid signature"
        if not hmac.compare_digest(self.sign(path, int(expires)).encode("ascii"), signature.encode("utf-8")):
            return "invalid signature"
        if self.now() >= int(expires):
            return "link expired"
        return None

    def is_servable_path(self, relative_path: str) -> bool:
        """Exactly `<config>/<sequence>/<filename>` of plain names, resolving inside the folder."""
        parts = relative_path.split("/")
        if len(parts) != 3 or not all(SAFE_NAME.match(part) and ".." not in part for part in parts):
            return False
        return (self.root / relative_path).resolve().is_relative_to(self.root)

    def files(self) -> Iterator[tuple[str, str, str]]:
        """`(config, sequence, filename)` of every servable file, sorted (symlinks out are left out)."""
        for config in self._plain_children(self.root, directories=True):
            for sequence in self._plain_children(self.root / config, directories=True):
                for filename in self._plain_children(self.root / config / sequence, directories=False):
                    if self.is_servable_path(f"{config}/{sequence}/{filename}"):
                        yield config, sequence, filename

    def body(self, relative_path: str) -> _Body | None:
        """What `<config>/<sequence>/<filename>` serves now, or None if there is no such file."""
        replacement = self.faults.replacement(f"{FILES_PREFIX}{relative_path}")
        if replacement is not None:
            return _Body(len(replacement), hashlib.sha1(replacement).hexdigest(), data=replacement)
        path = self.root / relative_path
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        key = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            cached = self._digests.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        digest = digest_file(path)
        body = _Body(digest.size, digest.sha1, path=path)
        with self._lock:
            self._digests[path] = (key, body)
        return body

    def manifest(self, ttl_seconds: int | None = None) -> dict[str, Any]:
        """A fresh ATEK-shaped manifest of every file, with links valid `ttl_seconds` from now."""
        configs: dict[str, Any] = {}
        for config, sequence, filename in self.files():
            relative = f"{config}/{sequence}/{filename}"
            body = self.body(relative)
            if body is None:
                continue
            sequences = configs.setdefault(config, {"wds_file_urls": {}})["wds_file_urls"]
            sequences.setdefault(sequence, {})[filename.replace(".", "_")] = {
                "filename": filename,
                "sha1sum": body.sha1,
                "file_size_bytes": body.size,
                "download_url": self.signed_url(relative, ttl_seconds),
            }
        return {ROOT_KEY: configs}

    def _wait_stopping(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if the server began stopping meanwhile."""
        return self._stopping.wait(seconds)

    def _track_connection(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _untrack_connection(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    @staticmethod
    def _plain_children(folder: Path, directories: bool) -> list[str]:
        """Names of plain-named children (so never staging folders or `.part` files), sorted."""
        return sorted(
            child.name for child in folder.iterdir()
            if SAFE_NAME.match(child.name) and (child.is_dir() if directories else child.is_file())
        )


def run_demo_server(folder: Path, port: int, link_ttl_seconds: int, ready_file: Path | None = None) -> None:
    """Serve `folder` until SIGTERM or SIGINT; announce `{"base_url", "pid"}` in `ready_file`."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        with DemoServer(folder, link_ttl_seconds=link_ttl_seconds, port=port) as server:
            if ready_file is not None:
                announcement = {"base_url": server.base_url, "pid": os.getpid()}
                write_bytes_atomic(ready_file, json.dumps(announcement).encode("utf-8"))
            LOGGER.info("demo server: serving %s at %s", folder, server.base_url)
            try:
                stop.wait()
            finally:
                if ready_file is not None:
                    ready_file.unlink(missing_ok=True)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
