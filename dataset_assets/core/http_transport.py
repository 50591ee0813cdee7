"""An httpx transport that sends requests with urllib3 instead of httpcore + h11.

Bodies are read with one `read1` per chunk from http.client's C-buffered socket reader: on loopback
this spends about a third of the CPU per byte that h11's pure-Python parser does (0.3 vs 0.9 CPU
seconds per GiB, benchmarks/RESULTS.md "Downloads"). Everything above the wire stays httpx: the
client API, redirects, content decoding. httpx ignores the environment's proxies for a client given
a transport, so this transport honours them itself. urllib3's errors become the matching
`httpx.TransportError`s, so retry policies keep working. A request may carry an `Interrupt` as the extension
`INTERRUPT`: another thread calling it ends at once the request's waits on its server: for a connect (a host
that drops the SYN), for the response's headers or for its body.
"""
from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import ssl
import sys
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from urllib.parse import unquote

import httpx
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    LocationParseError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util.connection import allowed_gai_family

READ_BYTES = 1 << 20
# The request extension holding the request's `Interrupt`.
INTERRUPT = "interrupt"


class Interrupt:
    """Ends one request's waits on its server, from another thread: for its connect, the response's headers, its body.

    Calling it shuts the socket of the request's connection for reading, so that a read waiting for a silent
    server returns at once, as a broken connection (closing instead would wait for that read); shutting a socket
    whose connect is under way aborts the connect (Linux). Called before the request is sent, it ends the wait as
    soon as the request is; once the body is closed, and its connection perhaps back in the pool for another
    request, there is nothing left to end. A host name being resolved is not interrupted: there is no socket yet.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._called = False

    def __call__(self) -> None:
        with self._lock:
            self._called = True
            self._shut()

    @property
    def called(self) -> bool:
        return self._called

    def attach(self, sock: socket.socket) -> None:
        """The request waits on `sock` from now on."""
        with self._lock:
            self._socket = sock
            if self._called:
                self._shut()

    def detach(self) -> None:
        """The request waits on its socket no more."""
        with self._lock:
            self._socket = None

    def _shut(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RD)


# The `Interrupt` of the request this thread is sending: urllib3 picks the connection, which hands it its socket.
_sending: ContextVar[Interrupt] = ContextVar("sending")


def _connect_socket(sock: socket.socket, peer: tuple[str, int], timeout: float | None, interrupt: Interrupt) -> None:
    """Connect `sock` (which `interrupt` holds) to `peer` within `timeout`; OSError if it fails or was interrupted.

    Non-blocking, so that the interrupt is checked once the connect is under way: called earlier, its shutdown found
    no connect to abort.
    """
    sock.setblocking(False)
    code = sock.connect_ex(peer)
    if code == errno.EINPROGRESS:
        if interrupt.called:
            raise ConnectionAbortedError(errno.ECONNABORTED, "connect interrupted")
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        if not poller.poll(None if timeout is None else timeout * 1000):
            raise TimeoutError("timed out")
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, os.strerror(code))
    sock.settimeout(timeout)


def _connect(address: tuple[str, int], timeout: float | None, source_address: tuple[str, int] | None,
             options: list[tuple[int, int, int | bytes]] | None, interrupt: Interrupt) -> socket.socket:
    """urllib3's `create_connection`, connecting each address it resolves to with a socket `interrupt` holds."""
    host, port = address
    try:
        host.encode("idna")
    except UnicodeError:
        raise LocationParseError(f"'{host}', label empty or too long") from None
    failure: OSError = OSError(f"{host}: the name resolved to no address")
    for family, kind, protocol, _, peer in socket.getaddrinfo(host.strip("[]"), port, allowed_gai_family(),
                                                              socket.SOCK_STREAM):
        sock = socket.socket(family, kind, protocol)
        try:
            for option in options or ():
                sock.setsockopt(*option)
            if source_address:
                sock.bind(source_address)
            interrupt.attach(sock)
            _connect_socket(sock, peer, timeout, interrupt)
            return sock
        except OSError as error:
            interrupt.detach()
            sock.close()
            failure = error
    raise failure


class _InterruptibleConnection(HTTPConnection):
    """A connection whose socket the `Interrupt` of the request it sends can shut: while it connects, and once
    the request is sent."""

    def _new_conn(self) -> socket.socket:
        """urllib3's, through `_connect`; the same errors."""
        timeout = self.timeout if isinstance(self.timeout, (int, float)) else socket.getdefaulttimeout()
        try:
            sock = _connect((self._dns_host, self.port), timeout, self.source_address, self.socket_options,
                            _sending.get())
        except socket.gaierror as error:
            raise NameResolutionError(self.host, self, error) from error
        except TimeoutError as error:
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})") from error
        except OSError as error:
            raise NewConnectionError(self, f"Failed to establish a new connection: {error}") from error
        sys.audit("http.client.connect", self, self.host, self.port)
        return sock

    def getresponse(self) -> urllib3.HTTPResponse:
        if self.sock is not None:
            _sending.get().attach(self.sock)
        return super().getresponse()


class _InterruptibleHTTPSConnection(_InterruptibleConnection, HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _InterruptibleConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _InterruptibleHTTPSConnection


_POOL_CLASSES = {"http": _HTTPPool, "https": _HTTPSPool}


def _as_httpx_error(error: urllib3.exceptions.HTTPError, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception a urllib3 failure corresponds to (connect, timeout, or broken connection)."""
    message = str(error)
    # Before ConnectTimeoutError: urllib3 derives NewConnectionError (refused, unresolvable) from it.
    if isinstance(error, (NewConnectionError, SSLError)):
        return httpx.ConnectError(message, request=request)
    if isinstance(error, ConnectTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(error, ReadTimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(error, ProxyError):
        return httpx.ProxyError(message, request=request)
    if isinstance(error, ProtocolError):
        return httpx.RemoteProtocolError(message, request=request)
    return httpx.NetworkError(message, request=request)


class _BodyStream(httpx.SyncByteStream):
    """A response body as it arrives; the connection goes back to the pool only if read to its end."""

    def __init__(self, response: urllib3.HTTPResponse, request: httpx.Request, interrupt: Interrupt) -> None:
        self._response, self._request, self._interrupt = response, request, interrupt
        self._finished = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            while chunk := self._response.read1(READ_BYTES):
                yield chunk
        except urllib3.exceptions.HTTPError as error:
            raise _as_httpx_error(error, self._request) from error
        self._finished = True

    def close(self) -> None:
        self._interrupt.detach()
        if self._finished:
            self._response.release_conn()
        else:
            self._response.close()


def _proxy_manager(proxy_url: str, connections: int, ssl_context: ssl.SSLContext) -> urllib3.ProxyManager:
    """A pool manager sending requests through `proxy_url`, authenticating with the URL's user info if any."""
    auth = urllib3.util.parse_url(proxy_url).auth
    proxy_headers = urllib3.util.make_headers(proxy_basic_auth=unquote(auth)) if auth else None
    manager = urllib3.ProxyManager(proxy_url, proxy_headers=proxy_headers, maxsize=connections,
                                   ssl_context=ssl_context, retries=False)
    manager.pool_classes_by_scheme = _POOL_CLASSES
    return manager


class Urllib3Transport(httpx.BaseTransport):
    """One urllib3 pool manager: keep-alive pools of `connections` per host, no retries of its own.

    As httpx would, requests go through the proxy the environment names for their scheme
    (HTTP_PROXY, HTTPS_PROXY, else ALL_PROXY), unless NO_PROXY lists their host.
    """

    def __init__(self, connections: int, ssl_context: ssl.SSLContext) -> None:
        self._pools = urllib3.PoolManager(maxsize=connections, ssl_context=ssl_context, retries=False)
        self._pools.pool_classes_by_scheme = _POOL_CLASSES
        proxies = urllib.request.getproxies_environment()
        self._proxied = {scheme: _proxy_manager(proxies.get(scheme) or proxies["all"], connections, ssl_context)
                         for scheme in ("http", "https") if proxies.get(scheme) or proxies.get("all")}

    def _manager(self, url: httpx.URL) -> urllib3.PoolManager:
        proxied = self._proxied.get(url.scheme)
        if proxied is None or urllib.request.proxy_bypass_environment(url.host):
            return self._pools
        return proxied

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        timeout = urllib3.Timeout(connect=timeouts.get("connect"), read=timeouts.get("read"))
        # A dict, which urllib3 copies and walks in C, unless a name comes more than once: an HTTPHeaderDict
        # sends each of its values, for about fifty more Python calls a request.
        items = request.headers.multi_items()
        headers: Mapping[str, str] = dict(items)
        if len(headers) < len(items):
            headers = urllib3.HTTPHeaderDict()
            for name, value in items:
                headers.add(name, value)
        interrupt = request.extensions.get(INTERRUPT) or Interrupt()
        sending = _sending.set(interrupt)
        try:
            response = self._manager(request.url).urlopen(
                request.method, str(request.url), body=request.read() or None,
                headers=headers, redirect=False, retries=False,
                preload_content=False, decode_content=False, timeout=timeout)
        except urllib3.exceptions.HTTPError as error:
            interrupt.detach()
            raise _as_httpx_error(error, request) from error
        finally:
            _sending.reset(sending)
        return httpx.Response(response.status, headers=list(response.headers.items()),
                              stream=_BodyStream(response, request, interrupt),
                              extensions={"http_version": b"HTTP/1.1"})

    def close(self) -> None:
        self._pools.clear()
        for proxied in self._proxied.values():
            proxied.clear()
