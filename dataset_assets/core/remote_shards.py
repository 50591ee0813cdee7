"""Read a remote shard (an http(s) or s3 URL) as one stream, resumed where its connection drops.

Streaming a long shard over the internet loses a connection now and then; failing would end the
epoch, and starting the shard over would yield its first samples twice. So a body whose
connection is lost is asked for again from the byte reached, tied to the first answer's ETag
(If-Range for http, IfMatch for s3), so content that changed meanwhile is refused rather than
spliced. After `RESUME_ATTEMPTS` losses in a row without a byte of progress, the shard fails; a
first request that cannot connect fails at once. Errors name the URL with its query string redacted.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import botocore.exceptions
import httpx

from dataset_assets.core.errors import DatasetAssetsError
from dataset_assets.core.redaction import may_be_signed, redact_text, redact_url
from dataset_assets.core.s3 import client_error_code, make_s3_client
from dataset_assets.core.tar_lists import URL_SCHEMES, url_scheme
from dataset_assets.core.transfer import make_client, range_headers

CHUNK_BYTES = 1 << 20
RESUME_ATTEMPTS = 3
RESUME_BACKOFF_SECONDS = 0.25
# What a lost or stalled connection looks like while an s3 body is read or asked for.
S3_CONNECTION_ERRORS = (botocore.exceptions.ResponseStreamingError, botocore.exceptions.IncompleteReadError,
                        botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectionClosedError,
                        botocore.exceptions.EndpointConnectionError)

logger = logging.getLogger(__name__)


class _ChunkStream(io.RawIOBase):
    """A readable raw stream over an iterator of byte chunks (a response body)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._chunk = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._chunk:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._chunk = memoryview(chunk)
        size = min(len(buffer), len(self._chunk))
        buffer[:size] = self._chunk[:size]
        self._chunk = self._chunk[size:]
        return size


class _Losses:
    """Connections of one shard lost in a row without progress: wait before the next try, or give up."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._in_a_row = 0
        self._reached = 0

    def lost(self, received: int, error: BaseException) -> None:
        """Record a connection lost at byte `received`; raise once too many were lost in a row."""
        self._in_a_row = 1 if received > self._reached else self._in_a_row + 1
        self._reached = received
        detail = redact_text(str(error))
        if self._in_a_row > RESUME_ATTEMPTS:
            raise DatasetAssetsError(f"{redact_url(self._url)}: connection lost {self._in_a_row} times in a row, "
                                     f"last at byte {received} ({detail})") from error
        logger.warning("%s: connection lost at byte %d (%s); asking for the rest", redact_url(self._url), received,
                       detail)
        time.sleep(RESUME_BACKOFF_SECONDS * 2 ** (self._in_a_row - 1))


def _changed(url: str, offset: int) -> DatasetAssetsError:
    return DatasetAssetsError(f"{redact_url(url)}: changed while it was read (at byte {offset}); read the shard again")


def _status_error(url: str, status: int) -> DatasetAssetsError:
    hint = " (a signed link may have expired: refresh the manifest)" if status == 403 and may_be_signed(url) else ""
    return DatasetAssetsError(f"{redact_url(url)}: HTTP {status}{hint}")


def _continues_at(response: httpx.Response, url: str, offset: int, etag: str | None) -> int:
    """How many leading bytes of `response` were already received: 0 for a 206 of the same content that
    starts at `offset`; `offset` for a 200 of the same content (a server that ignores Range), which are
    skipped. Without an ETag, content that changed cannot be told apart."""
    same = response.headers.get("ETag") == etag
    if same and response.status_code == 206 and response.headers.get("Content-Range", "").startswith(
            f"bytes {offset}-"):
        return 0
    if same and response.status_code == 200:
        return offset
    if response.status_code in (200, 206):
        raise _changed(url, offset)
    raise _status_error(url, response.status_code)


def _http_chunks(client: httpx.Client, url: str) -> Iterator[bytes]:
    """A GET response body as chunks, asked for again from the byte reached when the connection drops."""
    received, etag, losses, started = 0, None, _Losses(url), False
    while True:
        try:
            with client.stream("GET", url, headers=range_headers(received, etag)) as response:
                if not received:
                    if response.status_code != 200:
                        raise _status_error(url, response.status_code)
                    etag, skip, started = response.headers.get("ETag"), 0, True
                else:
                    skip = _continues_at(response, url, received, etag)
                for chunk in response.iter_raw():  # as they arrive: a re-chunking buffer would lose bytes on a drop
                    if skip:
                        chunk, skip = chunk[skip:], max(skip - len(chunk), 0)
                    received += len(chunk)
                    if chunk:
                        yield chunk
                return
        except httpx.TransportError as error:
            if not started:
                raise
            losses.lost(received, error)


def _s3_chunks(client: Any, url: str) -> Iterator[bytes]:
    """An s3 object's body as chunks, asked for again (Range, IfMatch) from the byte reached when the
    connection drops."""
    parts = urlsplit(url)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    received, etag, losses = 0, None, _Losses(url)
    while True:
        resume = {} if etag is None else {"Range": f"bytes={received}-", "IfMatch": etag}
        try:
            response = client.get_object(Bucket=bucket, Key=key, **resume)
        except botocore.exceptions.ClientError as error:
            if etag is not None and client_error_code(error) == "PreconditionFailed":
                raise _changed(url, received) from error
            raise
        except S3_CONNECTION_ERRORS as error:
            if etag is None:  # the first request: nothing was lost, the endpoint cannot be reached
                raise
            losses.lost(received, error)
            continue
        etag, body = response["ETag"], response["Body"]
        try:
            while chunk := body.read(CHUNK_BYTES):
                received += len(chunk)
                yield chunk
            return
        except S3_CONNECTION_ERRORS as error:
            losses.lost(received, error)
        finally:
            body.close()


@contextlib.contextmanager
def _open_http(url: str) -> Iterator[io.BufferedReader]:
    try:
        with make_client() as client:
            yield io.BufferedReader(_ChunkStream(_http_chunks(client, url)), CHUNK_BYTES)
    except httpx.HTTPError as error:
        raise DatasetAssetsError(f"{redact_url(url)}: {redact_text(str(error))}") from error


@contextlib.contextmanager
def _open_s3(url: str) -> Iterator[io.BufferedReader]:
    """Through the project's S3 client: AWS env/config credentials, `AWS_ENDPOINT_URL` for MinIO/R2."""
    try:
        yield io.BufferedReader(_ChunkStream(_s3_chunks(make_s3_client(), url)), CHUNK_BYTES)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        raise DatasetAssetsError(f"{redact_url(url)}: cannot read s3 object ({error})") from error


@contextlib.contextmanager
def open_url(entry: str) -> Iterator[io.BufferedReader]:
    """A readable stream of one remote tar-list entry: an http(s) URL or an s3 URL."""
    scheme = url_scheme(entry)
    if scheme in ("http", "https"):
        with _open_http(entry) as stream:
            yield stream
    elif scheme == "s3":
        with _open_s3(entry) as stream:
            yield stream
    elif scheme in URL_SCHEMES:
        raise DatasetAssetsError(f"{redact_url(entry)}: {scheme}:// URLs are not supported for reading")
    else:
        raise DatasetAssetsError(f"{redact_url(entry)}: not an http(s) or s3 URL")
