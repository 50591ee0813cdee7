"""core/http_transport.py under the transfer engine's client: what reaches a loopback server's ears."""
from __future__ import annotations

import httpx

from dataset_assets.core.transfer import make_client
from dataset_assets_tests.plain_server import PlainServer


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
