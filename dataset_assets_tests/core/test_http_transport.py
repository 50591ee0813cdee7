"""core/http_transport.py under the transfer engine's client: what reaches a loopback server's ears, and
interrupting a request's waits."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from dataset_assets.core.http_transport import INTERRUPT, Interrupt
from dataset_assets.core.transfer import TransferSettings, make_client
from dataset_assets_tests.plain_server import PlainServer
from dataset_assets_tests.silent_listener import connecting_to, server_that_never_accepts


def test_each_request_header_reaches_the_server_once_with_the_value_given(plain_server: PlainServer) -> None:
    plain_server.serve("/file.bin", b"data")
    with make_client() as client:
        response = client.get(plain_server.url("/file.bin"), headers={"Range": "bytes=1-", "X-Tag": "a"})

    assert response.status_code == 206 and response.content == b"ata"
    [request] = plain_server.requests
    host = plain_server.url("").removeprefix("http://")
    assert [request.values(name) for name in ("Host", "Range", "X-Tag", "User-Agent")] == [
        [host], ["bytes=1-"], ["a"], [f"python-httpx/{httpx.__version__}"]]


def test_a_header_given_several_values_reaches_the_server_with_each_of_them(plain_server: PlainServer) -> None:
    plain_server.serve("/file.bin", b"data")
    with make_client() as client:
        response = client.get(plain_server.url("/file.bin"), headers=[("X-Tag", "a"), ("X-Tag", "b")])

    assert response.status_code == 200 and response.content == b"data"
    [request] = plain_server.requests
    assert request.values("X-Tag") == ["a", "b"]


def test_an_interrupt_ends_a_connect_that_hangs() -> None:
    interrupt = Interrupt()
    with server_that_never_accepts() as port, make_client() as client:
        def interrupt_once_connecting() -> None:
            deadline = time.monotonic() + 20
            while not connecting_to(port) and time.monotonic() < deadline:
                time.sleep(0.01)
            interrupt()

        helper = threading.Thread(target=interrupt_once_connecting)
        helper.start()
        started = time.monotonic()
        with pytest.raises(httpx.ConnectError, match="Failed to establish a new connection"):
            client.get(f"http://127.0.0.1:{port}/file.bin", extensions={INTERRUPT: interrupt})
        helper.join()
        waited = time.monotonic() - started

    assert waited < 30  # not the client's 60 s connect timeout: a loaded machine has margin


def test_an_interrupt_called_before_the_request_ends_its_connect_once_under_way() -> None:
    interrupt = Interrupt()
    interrupt()
    with server_that_never_accepts() as port, make_client() as client:
        started = time.monotonic()
        with pytest.raises(httpx.ConnectError, match="connect interrupted"):
            client.get(f"http://127.0.0.1:{port}/file.bin", extensions={INTERRUPT: interrupt})

    assert time.monotonic() - started < 30


def test_a_connect_that_hangs_past_the_timeout_is_a_connect_timeout() -> None:
    with server_that_never_accepts() as port, make_client(TransferSettings(timeout_seconds=0.3)) as client:
        with pytest.raises(httpx.ConnectTimeout, match="timed out"):
            client.get(f"http://127.0.0.1:{port}/file.bin")


def test_a_refused_connect_is_a_connect_error() -> None:
    with server_that_never_accepts() as port:
        pass  # the port is free again: nothing listens there
    with make_client() as client, pytest.raises(httpx.ConnectError, match="Connection refused"):
        client.get(f"http://127.0.0.1:{port}/file.bin")
