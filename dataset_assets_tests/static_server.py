"""A loopback static file server for tests: one folder over plain HTTP on 127.0.0.1, random port.

Stands in for a dataset provider's download site. It records every request path so tests can
assert what was (or was not) fetched, and `stop()` closes the socket so any later request fails.
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest


class _QuietHandler(SimpleHTTPRequestHandler):
    server: _RecordingServer

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.server.paths.append(self.path)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean: requests are recorded by `log_request` instead."""


class _RecordingServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 drops SYNs of 8 parallel connects (1 s retransmit each)
    paths: list[str]


class StaticServer:
    """Serve `folder` at `base_url` until `stop()` (or the end of a `with` block)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self._server = _RecordingServer(("127.0.0.1", 0), handler)
        self._server.paths = []
        self._thread = threading.Thread(target=self._server.serve_forever, name="static-server", daemon=True)
        self.running = False

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[str]:
        """Request paths answered so far, in order."""
        return list(self._server.paths)

    def start(self) -> StaticServer:
        self._thread.start()
        self.running = True
        return self

    def stop(self) -> None:
        if self.running:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self.running = False

    def __enter__(self) -> StaticServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@pytest.fixture
def static_folder(tmp_path: Path) -> Path:
    """The folder `static_server` serves: write artifact files here."""
    folder = tmp_path / "served"
    folder.mkdir()
    return folder


@pytest.fixture
def static_server(static_folder: Path) -> Iterator[StaticServer]:
    """A started StaticServer over `static_folder`, stopped after the test."""
    with StaticServer(static_folder) as server:
        yield server
