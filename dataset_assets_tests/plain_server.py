"""A loopback server of plain, unsigned links whose answers a test scripts, on 127.0.0.1, random port.

The demo server signs every link and validates with ETags; providers that do neither exist too.
This one serves `files` (URL path -> bytes) with `Last-Modified` and no `ETag`, honours one
`bytes=<first>-[<last>]` range and an `If-Range` date equal to the file's `Last-Modified` (or, scripted,
ignores If-Range), answers a range past the end 416 with the size in `Content-Range` (or, as S3 and
moto do, without it), and answers a path with scripted statuses and headers (`fail`), cuts its
next body short (`drop_after`), goes silent partway through it (`stall_after`) or reads its next
request and never answers it (`never_answer`). It records each request (those left unanswered
apart) and counts body bytes written per path, so tests assert what was fetched.
"""
from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import pytest

LAST_MODIFIED = formatdate(1_700_000_000, usegmt=True)


@dataclass(frozen=True)
class PlainRequest:
    """One answered request: its path, Range and If-Range headers, the status sent and every header as received."""

    path: str
    range_header: str | None
    if_range: str | None
    status: int
    headers: tuple[tuple[str, str], ...] = ()

    def values(self, name: str) -> list[str]:
        """The values of the header `name` (any case), in the order received."""
        return [value for key, value in self.headers if key.lower() == name.lower()]


@dataclass
class _Script:
    """What the server serves and the faults armed on it; `lock` guards every field."""

    files: dict[str, tuple[bytes, str, bool, bool]] = field(default_factory=dict)
    failures: dict[str, list[tuple[int, dict[str, str], bytes]]] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)
    stalls: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (requests to serve first, bytes)
    silences: set[str] = field(default_factory=set)
    unanswered: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    requests: list[PlainRequest] = field(default_factory=list)
    body_bytes: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        script = self.server.script
        with script.lock:
            failures = script.failures.get(self.path)
            failure = failures.pop(0) if failures else None
            served = script.files.get(self.path)
            drop = script.drops.pop(self.path, None)
            stall = self._take_stall(script)
            silent = self.path in script.silences
            script.silences.discard(self.path)
            if silent:
                script.unanswered.append(self.path)
        if silent:
            script.stopping.wait()
            self.close_connection = True
        elif failure is not None:
            self._send(*failure)
        elif served is None:
            self._send(404, {}, b"not found")
        else:
            self._send_file(*served, drop, stall)

    def _take_stall(self, script: _Script) -> int | None:
        """The bytes to send before going silent, if this request is the one `stall_after` armed."""
        armed = script.stalls.get(self.path)
        if armed is None:
            return None
        skip, nbytes = armed
        if skip:
            script.stalls[self.path] = (skip - 1, nbytes)
            return None
        del script.stalls[self.path]
        return nbytes

    def _send_file(self, data: bytes, last_modified: str, honour_if_range: bool, total_in_416: bool,
                   drop: int | None, stall: int | None) -> None:
        headers = {"Last-Modified": last_modified, "Accept-Ranges": "bytes"}
        span = self._range(len(data), last_modified if honour_if_range else None)
        if span is None:
            self._send(200, headers, data, drop, stall)
        elif span[0] >= len(data):
            self._send(416, {"Content-Range": f"bytes */{len(data)}"} if total_in_416 else {}, b"not satisfiable")
        else:
            headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{len(data)}"
            self._send(206, headers, data[span[0]:span[1] + 1], drop, stall)

    def _range(self, size: int, last_modified: str | None) -> tuple[int, int] | None:
        """The first and last byte of a `bytes=<first>-[<last>]` range of a `size`-byte file to honour: none if
        If-Range names another version than `last_modified` (None: If-Range is ignored)."""
        asked = self.headers.get("Range", "")
        if_range = self.headers.get("If-Range")
        stale = last_modified is not None and if_range not in (None, last_modified)
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", asked)
        if match is None or stale:
            return None
        return int(match[1]), min(int(match[2] or size - 1), size - 1)

    def _send(self, status: int, headers: dict[str, str], body: bytes, drop: int | None = None,
              stall: int | None = None) -> None:
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        cut = drop if drop is not None else stall
        sent = body if cut is None else body[:cut]
        if status < 300:
            with self.server.script.lock:
                counts = self.server.script.body_bytes
                counts[self.path] = counts.get(self.path, 0) + len(sent)
        self.wfile.write(sent)
        if stall is not None:
            self.server.script.stopping.wait()
        if len(sent) < len(body):
            self.close_connection = True

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        record = PlainRequest(self.path, self.headers.get("Range"), self.headers.get("If-Range"),
                              code if isinstance(code, int) else 0, tuple(self.headers.items()))
        with self.server.script.lock:
            self.server.script.requests.append(record)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are recorded by `log_request` instead."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    script: _Script


class PlainServer:
    """Serve scripted files at `url(path)` until `stop()` (or the end of a `with` block)."""

    def __init__(self) -> None:
        self._server = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._server.script = self._script = _Script()
        self._thread = threading.Thread(target=self._server.serve_forever, name="plain-server", daemon=True)

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{path}"

    def serve(self, path: str, data: bytes, last_modified: str = LAST_MODIFIED, honour_if_range: bool = True,
              total_in_416: bool = True) -> None:
        """Serve `data` at `path` from now on, last modified at `last_modified` (an HTTP date)."""
        with self._script.lock:
            self._script.files[path] = (data, last_modified, honour_if_range, total_in_416)

    def fail(self, path: str, status: int, times: int = 1, headers: dict[str, str] | None = None,
             body: bytes = b"scripted failure") -> None:
        """Answer the next `times` requests for `path` with `status`, `headers` and `body`."""
        with self._script.lock:
            self._script.failures.setdefault(path, []).extend([(status, dict(headers or {}), body)] * times)

    def drop_after(self, path: str, nbytes: int) -> None:
        """Close the connection after `nbytes` of the next body sent for `path`."""
        with self._script.lock:
            self._script.drops[path] = nbytes

    def stall_after(self, path: str, nbytes: int, after_requests: int = 0) -> None:
        """Send `nbytes` of the body of the request for `path` that follows the next `after_requests` ones, then
        nothing more, the connection kept open, until the server stops: a server gone silent mid-body."""
        with self._script.lock:
            self._script.stalls[path] = (after_requests, nbytes)

    def never_answer(self, path: str) -> None:
        """Read the next request for `path` and send nothing, not even a status line, the connection kept open,
        until the server stops: a server that accepts a request and hangs before its response's headers."""
        with self._script.lock:
            self._script.silences.add(path)

    @property
    def requests(self) -> list[PlainRequest]:
        with self._script.lock:
            return list(self._script.requests)

    @property
    def unanswered(self) -> list[str]:
        """The paths of the requests received and left unanswered (`never_answer`), in order."""
        with self._script.lock:
            return list(self._script.unanswered)

    def body_bytes_sent(self, path: str) -> int:
        """Bytes of 2xx bodies written for `path` so far."""
        with self._script.lock:
            return self._script.body_bytes.get(path, 0)

    def start(self) -> PlainServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._script.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> PlainServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@pytest.fixture
def plain_server() -> Iterator[PlainServer]:
    """A started PlainServer, stopped after the test."""
    with PlainServer() as server:
        yield server
