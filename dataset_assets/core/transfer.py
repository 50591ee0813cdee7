"""Resumable, verified, concurrent HTTP downloads of manifest entries into a local folder or an S3 bucket.

One `httpx.Client` (connection reuse) and one retry policy (tenacity: exponential backoff with
jitter on connection errors, 408, 429 and 5xx, honouring Retry-After up to its own cap) serve
every transfer; `settings.workers` files are in flight at once. Each file streams from its response into a
`FileSink` of its `Destination` (`core.storage` for folders, `core.s3` for buckets), which holds
the bytes received so far. After an interruption the next attempt (or the next run, for folders)
asks for the missing bytes with `Range` + `If-Range` and appends. A server that ignores the range
or whose content changed (its validator, the ETag or else the Last-Modified date, or the total size
differ from those the held bytes were fetched under) answers the whole file, or is asked again,
and the transfer restarts cleanly from byte 0. Size and sha1 are verified (sha256 recorded) before
the sink publishes atomically, and a file already complete and verified at the destination is
never fetched again. Stopping (`TransferStop`) ends waits and also requests in flight, so a server that
never answers a request, or goes silent mid-body, does not hold the stop until the read timeout; the bytes
received stay held.

Signed links expire: an entry whose URL expiry has passed is not requested, and 401/403/410 is not
retried; both end in `LinkExpired`, which names the files needing fresh links. An unsigned link (no
query string: `ManifestEntry.signed`) cannot expire, so its 401/403/410 is `AccessDenied`, a failure
no later try can cure. Given `refresh` (a
callable returning a fresh manifest, which honours the transfer's stop it is given), the engine
fetches new links instead, once per wave of expiries, and continues from the bytes it already holds.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.cookiejar
import json
import math
import ssl
import threading
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from dataset_assets.core.errors import DatasetAssetsError
from dataset_assets.core.http_transport import INTERRUPT, Interrupt, Urllib3Transport
from dataset_assets.core.manifest import (
    MAX_MANIFEST_BYTES,
    ManifestEntry,
    UrlManifest,
    parse_manifest,
    parse_manifest_json,
    read_manifest_bytes,
)
from dataset_assets.core.redaction import get_logger, redact_text
from dataset_assets.core.storage import (
    Destination,
    FileDigest,
    FileSink,
    LocalDestination,
    LockWaitCancelled,
    StorageError,
    matches,
)

logger = get_logger(__name__)
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
EXPIRY_STATUS = frozenset({401, 403, 410})
MIB = 1 << 20
STOP_POLL_SECONDS = 0.25  # how often a transfer waiting for its files looks whether it was stopped
_DOCUMENT_ENCODINGS = frozenset({"identity", "gzip", "x-gzip", "deflate"})
ProgressCallback = Callable[[int], None]
T = TypeVar("T")


class TransferError(DatasetAssetsError):
    """A file could not be transferred; the message names the file and redacts its URL."""

    def __init__(self, message: str) -> None:
        super().__init__(redact_text(message))


class PermanentTransferError(TransferError):
    """Every failed file failed in a way that trying again with the same links cannot cure: an HTTP
    error status other than a signed link's expiry, 408, 429 and 5xx, a checksum mismatch, a URL that
    cannot be requested."""


class ChecksumMismatch(TransferError):
    """The downloaded bytes do not match the manifest's size or sha1."""


class TransferCancelled(TransferError):
    """The transfer was interrupted (Ctrl-C, its stop event); held bytes are kept for the next run."""


class TransferStop:
    """A transfer's stop: the event that sets it (Ctrl-C, a failing run) and the requests in flight meanwhile.

    Setting the event ends waits (backoff, locks) at once, but not a request waiting on a server that never answers
    or went silent mid-body, which would block until the read timeout: `interrupt_requests` ends the waits of
    every request sent with `stream`, which then raises `TransferCancelled`. A transfer nobody stops keeps its
    full inactivity timeout.
    """

    def __init__(self, event: threading.Event | None = None) -> None:
        self.event = event if event is not None else threading.Event()
        self._lock = threading.Lock()
        self._interrupts: list[Interrupt] = []

    def is_set(self) -> bool:
        return self.event.is_set()

    def set(self) -> None:
        self.event.set()
        self.interrupt_requests()

    def interrupt_requests(self) -> None:
        with self._lock:
            for interrupt in self._interrupts:
                interrupt()

    @contextlib.contextmanager
    def stream(self, client: httpx.Client, url: str, headers: Mapping[str, str], what: str
               ) -> Iterator[httpx.Response]:
        """`client.stream("GET", url, headers=headers)`, ended by stopping from the moment it is sent to the end
        of the block, with `TransferCancelled` naming `what`. Through a transport that ignores the `INTERRUPT`
        extension (not `make_client`'s), a silent server holds the stop until the timeout."""
        interrupt = Interrupt()
        with self._lock:
            self._interrupts.append(interrupt)
        try:
            # Registered first, checked second: a stop set meanwhile is seen here or by its `interrupt_requests`.
            if self.is_set():
                raise TransferCancelled(f"{what}: cancelled")
            with client.stream("GET", url, headers=headers, extensions={INTERRUPT: interrupt}) as response:
                yield response
        except httpx.TransportError:
            if not self.is_set():
                raise
            raise TransferCancelled(f"{what}: cancelled while waiting for the server") from None
        finally:
            with self._lock:
                self._interrupts.remove(interrupt)


# Returns a fresh manifest; given the transfer's stop, so that stopping ends its fetch too (`fetch_manifest(stop=)`).
Refresh = Callable[[TransferStop], UrlManifest]


class RetryableStatus(TransferError):
    """A 408/429/5xx answer or a restart, retried by the retry policy (after Retry-After if the server gave one)."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RetryAfterTooLong(TransferError):
    """The server asked to retry after longer than `TransferSettings.retry_after_max_seconds`: the file
    fails now rather than blocking the run for that long or asking again too early; a later run may pass."""

    def __init__(self, error: RetryableStatus, limit: float) -> None:
        super().__init__(f"{error}: the server asked to retry after {math.ceil(error.retry_after or 0)} s, "
                         f"more than the {limit:g} s this run waits (retry_after_max_seconds); try again later")
        self.retry_after = error.retry_after


class AccessDenied(TransferError):
    """An unsigned link was refused (401/403/410): it has no signature that could expire, so a fresh link
    cannot cure it and neither can trying again."""

    def __init__(self, entry: ManifestEntry, status: int) -> None:
        refusal = "the file is gone" if status == 410 else "access denied"
        super().__init__(f"{entry.relative_path}: HTTP {status} {HTTPStatus(status).phrase} from {entry.url}: "
                         f"{refusal}, not an expired link")


class LinkExpired(TransferError):
    """Signed links expired (or were refused); `files` lists `<config>/<sequence>/<file>` needing fresh links."""

    def __init__(self, files: Iterable[str], detail: str = "") -> None:
        self.files = tuple(sorted(set(files)))
        shown = ", ".join(self.files[:10]) + (f" and {len(self.files) - 10} more" if len(self.files) > 10 else "")
        super().__init__(f"signed links expired for {len(self.files)} file(s): {shown}. "
                         f"Refresh the URL manifest and run again; verified bytes are kept. {detail}".strip())


@dataclass(frozen=True)
class TransferSettings:
    """Files in flight (network-bound, so more than cores), retries, timeouts and link refreshes per file.

    A server's Retry-After is waited out as asked, even beyond `backoff_max_seconds` (which caps only
    the policy's own backoff), up to `retry_after_max_seconds`; asking for longer fails the file.
    """

    workers: int = 8
    max_attempts: int = 5
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    retry_after_max_seconds: float = 300.0
    timeout_seconds: float = 60.0
    max_link_refreshes: int = 2


class TransferProgress(Protocol):
    """Per-file progress: `start` (again after a restart), `advance` by fetched bytes, `finish` with the
    file's status (downloaded, resumed, skipped, failed or interrupted)."""

    def start(self, key: str, total: int | None, done: int) -> None: ...

    def advance(self, key: str, nbytes: int) -> None: ...

    def finish(self, key: str, status: str) -> None: ...


class _BytesProgress:
    """Adapts a plain `callback(bytes_fetched)` (e.g. Dagster's `LoggedProgress`) to `TransferProgress`."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback

    def start(self, key: str, total: int | None, done: int) -> None:
        pass

    def advance(self, key: str, nbytes: int) -> None:
        if self._callback is not None:
            self._callback(nbytes)

    def finish(self, key: str, status: str) -> None:
        pass


@dataclass(frozen=True)
class FileResult:
    """The outcome for one verified file. `status` is downloaded, resumed or skipped."""

    config: str
    relative_path: str
    status: str
    size: int
    sha1: str
    sha256: str
    bytes_fetched: int

    @property
    def key(self) -> str:
        return f"{self.config}/{self.relative_path}"


@dataclass(frozen=True)
class DownloadReport:
    """Verified files, failures (`<config>/<sequence>/<file>` -> why, URLs redacted) and timing.

    `interrupted` lists the files the transfer's stop left unfinished (in flight, waiting to retry or not
    started); they are not failures: a rerun continues them from the bytes held.
    """

    results: tuple[FileResult, ...]
    failures: dict[str, str] = field(default_factory=dict)
    expired: tuple[str, ...] = ()
    elapsed_seconds: float = 0.0
    destinations: dict[str, str] = field(default_factory=dict)
    permanent: tuple[str, ...] = ()  # failures no later try with the same links can cure
    interrupted: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failures and not self.interrupted

    @property
    def bytes_fetched(self) -> int:
        return sum(result.bytes_fetched for result in self.results)

    @property
    def data_version(self) -> str:
        """A hash of every verified file's key, size and sha1: equal downloads have equal versions."""
        listing = "".join(f"{result.key}:{result.size}:{result.sha1};" for result in self.results)
        return hashlib.sha256(listing.encode()).hexdigest()[:16]

    def count(self, status: str) -> int:
        return sum(1 for result in self.results if result.status == status)

    def throughput_mib_per_second(self) -> float:
        return self.bytes_fetched / MIB / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def summary(self) -> str:
        files = len(self.results) + len(self.failures) + len(self.interrupted)
        interrupted = f", {len(self.interrupted)} interrupted" if self.interrupted else ""
        return (f"{files} file(s): {self.count('downloaded')} downloaded, "
                f"{self.count('resumed')} resumed, {self.count('skipped')} skipped, {len(self.failures)} failed"
                f"{interrupted}; "
                f"{self.bytes_fetched / MIB:.1f} MiB fetched in {self.elapsed_seconds:.1f} s "
                f"({self.throughput_mib_per_second():.1f} MiB/s)")

    def metadata(self) -> dict[str, object]:
        """Counts, bytes, throughput, destinations, failures and per-file digests keyed `<config>/<sequence>/<file>`."""
        return {
            "files": len(self.results),
            "downloaded": self.count("downloaded"),
            "resumed": self.count("resumed"),
            "skipped": self.count("skipped"),
            "failed": len(self.failures),
            "bytes_fetched": self.bytes_fetched,
            "bytes_total": sum(result.size for result in self.results),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "throughput_mib_per_second": round(self.throughput_mib_per_second(), 2),
            "destinations": dict(self.destinations),
            "failures": dict(self.failures),
            "sha1": {result.key: result.sha1 for result in self.results},
            "sha256": {result.key: result.sha256 for result in self.results},
        }

    def raise_for_failures(self) -> None:
        """`LinkExpired` naming every file whose link expired (and listing any other failure, which fresh
        links may not cure), else `TransferError` listing each failure, else `TransferCancelled` if interrupted."""
        others = {path: why for path, why in self.failures.items() if path not in self.expired}
        listed = "; ".join(f"{path}: {why}" for path, why in sorted(others.items()))
        if self.expired:
            raise LinkExpired(self.expired, f"Also failed: {listed}" if others else "")
        if others:
            error = PermanentTransferError if set(others) <= set(self.permanent) else TransferError
            raise error(f"{len(others)} of {len(self.results) + len(others)} file(s) failed: {listed}")
        if self.interrupted:
            raise TransferCancelled(f"interrupted with {len(self.interrupted)} file(s) unfinished; "
                                    "held bytes are kept for the next run")


@functools.lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    """Loading the CA store costs a fifth of a second: one verifying context serves every client."""
    return httpx.create_ssl_context()


class _CookieJar(http.cookiejar.CookieJar):
    """The client's cookies, kept as httpx keeps them. The standard library parses every answer, building its
    headers into an email message twice (about a hundred Python calls per file); answers without a
    Set-Cookie header, nearly all of them, skip that."""

    def extract_cookies(self, response: Any, request: urllib.request.Request) -> None:
        answer = getattr(response, "response", None)  # httpx hands the jar its `Response` in a wrapper
        if isinstance(answer, httpx.Response) and not ("set-cookie" in answer.headers
                                                       or "set-cookie2" in answer.headers):
            return
        super().extract_cookies(response, request)


def make_client(settings: TransferSettings = TransferSettings()) -> httpx.Client:
    """The one HTTP client: keep-alive pools sized to the workers, requests sent by urllib3 (see
    `core.http_transport`: a third of h11's CPU per byte received)."""
    transport = Urllib3Transport(connections=max(settings.workers, 1) * 2, ssl_context=_ssl_context())
    return httpx.Client(timeout=settings.timeout_seconds, transport=transport, follow_redirects=True,
                        cookies=_CookieJar())


def _retry_after_seconds(response: httpx.Response) -> float | None:
    """Retry-After as seconds (a number or an HTTP date); None when absent or not a finite time."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    except ValueError:
        try:
            return max((parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds(), 0.0)
        except (TypeError, ValueError):
            return None


def _is_retryable(error: BaseException) -> bool:
    return isinstance(error, (httpx.TransportError, RetryableStatus))


def _may_pass_later(error: BaseException) -> bool:
    """Whether a file that failed so may succeed when tried again later with the same links: what the
    retry policy retries (its attempts ran out) or would not wait for, or the disk or the bucket refused."""
    return _is_retryable(error) or isinstance(error, (RetryAfterTooLong, OSError, StorageError))


def _retrying(settings: TransferSettings, sleep: Callable[[float], object] = time.sleep
              ) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """The single retry policy: exponential backoff with jitter, overridden by Retry-After; `sleep` waits
    between attempts (the engine's wakes up when the transfer is cancelled). A Retry-After beyond
    `retry_after_max_seconds` ends the retries at once with `RetryAfterTooLong`."""
    backoff = wait_exponential_jitter(multiplier=settings.backoff_initial_seconds, max=settings.backoff_max_seconds,
                                      jitter=settings.backoff_initial_seconds)

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RetryableStatus) and error.retry_after is not None:
            return error.retry_after
        return backoff(state)

    def log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        logger.warning("retrying after attempt %d: %s", state.attempt_number, redact_text(str(error)))

    policy = Retrying(retry=retry_if_exception(_is_retryable), stop=stop_after_attempt(settings.max_attempts),
                      wait=wait, sleep=sleep, before_sleep=log_retry, reraise=True)

    def decorate(attempt: Callable[..., T]) -> Callable[..., T]:
        def bounded(*args: object, **kwargs: object) -> T:
            try:
                return attempt(*args, **kwargs)
            except RetryableStatus as error:
                if error.retry_after is not None and error.retry_after > settings.retry_after_max_seconds:
                    raise RetryAfterTooLong(error, settings.retry_after_max_seconds) from None
                raise

        @functools.wraps(attempt)
        def retried(*args: object, **kwargs: object) -> T:
            # A fresh copy per call, as tenacity's own decorator makes: calls never share attempt state.
            return policy.copy()(bounded, *args, **kwargs)

        return retried

    return decorate


def _read_document(response: httpx.Response, url: str, max_bytes: int) -> bytes:
    """The body, inflated here (gzip or deflate) so that neither it nor a decompression bomb passes `max_bytes`:
    httpx would inflate each received chunk whole, up to ~1000 times its size."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in _DOCUMENT_ENCODINGS:
        raise TransferError(f"{url}: manifest sent with unsupported Content-Encoding {encoding!r}")
    inflate = None if encoding == "identity" else zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
    data = bytearray()
    try:
        for chunk in response.iter_raw():
            data += chunk if inflate is None else inflate.decompress(chunk, max_bytes + 1 - len(data))
            if len(data) > max_bytes:
                raise TransferError(f"{url}: manifest is larger than the {max_bytes}-byte limit")
    except zlib.error as error:
        raise TransferError(f"{url}: manifest is not valid {encoding} data ({error})") from None
    return bytes(data)


def fetch_bytes(client: httpx.Client, url: str, settings: TransferSettings = TransferSettings(),
                max_bytes: int = MAX_MANIFEST_BYTES, stop: TransferStop | None = None) -> bytes:
    """GET a small document (a manifest) of at most `max_bytes` under the retry policy; `stop` ends it
    (`TransferCancelled`), also while it waits to retry or reads from a silent server."""
    stop = stop if stop is not None else TransferStop()

    @_retrying(settings, stop.event.wait)
    def attempt() -> bytes:
        with stop.stream(client, url, {"Accept-Encoding": "gzip, deflate"}, url) as response:
            if response.status_code in RETRYABLE_STATUS:
                raise RetryableStatus(f"{url}: HTTP {response.status_code}", _retry_after_seconds(response))
            if response.status_code != 200:
                raise TransferError(f"{url}: HTTP {response.status_code}")
            return _read_document(response, url, max_bytes)

    return attempt()


def fetch_manifest(location: str, client: httpx.Client | None = None, max_bytes: int = MAX_MANIFEST_BYTES,
                   stop: TransferStop | None = None) -> tuple[UrlManifest, bytes]:
    """Read the manifest (at most `max_bytes`) at an http(s) URL or a local path; return it and its raw bytes.
    Setting `stop` ends the fetch with `TransferCancelled`."""
    if not location.startswith(("http://", "https://")):
        path = Path(location)
        data = read_manifest_bytes(path, max_bytes)
        return parse_manifest_json(data, str(path)), data
    owned = client is None
    client = client or make_client()
    try:
        data = fetch_bytes(client, location, max_bytes=max_bytes, stop=stop)
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        raise TransferError(f"{location}: could not fetch the manifest: {type(error).__name__}: {error}") from None
    finally:
        if owned:
            client.close()
    try:
        decoded = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TransferError(f"{location}: manifest is not valid JSON ({error})") from error
    except RecursionError:  # valid JSON nested deeper than the parser recurses: a hostile server's answer
        raise TransferError(f"{location}: manifest is not valid JSON (nested too deeply)") from None
    return parse_manifest(decoded, location), data


def _check_expiry(entry: ManifestEntry) -> None:
    expires_at = entry.expires_at
    if expires_at is not None and expires_at <= datetime.now(timezone.utc):
        raise LinkExpired([f"{entry.config}/{entry.relative_path}"],
                          f"(link expired at {expires_at.isoformat()}; not requested)")


def _validator(response: httpx.Response) -> str | None:
    """What tells this version of the file from others: the ETag, else the Last-Modified date (which
    RFC 9110 also allows in If-Range; it misses changes within one second, the size and sha1 checks do not)."""
    return response.headers.get("ETag") or response.headers.get("Last-Modified")


def range_headers(first: int, validator: str | None, last: int | None = None) -> dict[str, str]:
    """Request headers for bytes `first` to `last` (the end if None) of a file, the whole file without a Range.

    Identity encoding, since byte offsets must mean bytes of the file itself; If-Range with a strong
    validator of the bytes already held, so that a file changed meanwhile is answered whole, not spliced.
    """
    headers = {"Accept-Encoding": "identity"}
    if first or last is not None:
        headers["Range"] = f"bytes={first}-{'' if last is None else last}"
        if validator and not validator.startswith("W/"):
            headers["If-Range"] = validator
    return headers


def _announced_total(response: httpx.Response) -> int | None:
    """The full size the server announces: Content-Range's `/total` for 206 and 416, Content-Length for 200."""
    if response.status_code in (206, 416):
        total = response.headers.get("Content-Range", "").rpartition("/")[2]
    else:
        total = response.headers.get("Content-Length", "")
    return int(total) if total.isdigit() else None


class _FreshLinks:
    """Fetches a fresh manifest when a link expires; one fetch serves every file of the same wave."""

    def __init__(self, refresh: Refresh) -> None:
        self._refresh = refresh
        self._lock = threading.Lock()
        self._manifest: UrlManifest | None = None

    def _lookup(self, stale: ManifestEntry) -> ManifestEntry | None:
        if self._manifest is None:
            return None
        entries = self._manifest.entries(stale.config, stale.sequence)
        return next((entry for entry in entries if entry.filename == stale.filename), None)

    def fresh(self, stale: ManifestEntry, stop: TransferStop) -> ManifestEntry:
        with self._lock:
            current = self._lookup(stale)
            if current is None or current.url == stale.url:
                # Checked here too: files of a wave waited for this lock while a stopped fetch ended.
                if stop.is_set():
                    raise TransferCancelled(f"{stale.relative_path}: cancelled before fetching fresh links")
                logger.info("%s: link expired; fetching a fresh manifest", stale.relative_path)
                self._manifest = self._refresh(stop)
                current = self._lookup(stale)
        if current is None:
            raise TransferError(f"{stale.relative_path}: not in the refreshed manifest (config {stale.config})")
        return current


@dataclass
class _Job:
    """One file's transfer: its (possibly refreshed) entry, its sink and the bytes fetched so far.

    `appended` says the held bytes include some from an earlier attempt or run (a resume).
    """

    entry: ManifestEntry
    sink: FileSink
    fetched: int = 0
    appended: bool = False

    @property
    def key(self) -> str:
        return f"{self.entry.config}/{self.entry.relative_path}"


def _skipped(entry: ManifestEntry, existing: FileDigest) -> FileResult:
    return FileResult(entry.config, entry.relative_path, "skipped", existing.size, existing.sha1, existing.sha256, 0)


def _verified_or_none(destination: Destination, entry: ManifestEntry, stop: threading.Event) -> FileDigest | None:
    """The verified copy at the destination; None also if the destination cannot answer (the error
    that made the caller ask is the one to report)."""
    try:
        return destination.verified(entry.relative_path, entry.size, entry.sha1, stop)
    except StorageError:
        return None


class _Engine:
    """Transfers single files; `run` records each outcome so every file is attempted, until `stop` is set."""

    def __init__(self, client: httpx.Client, destinations: Mapping[str, Destination], settings: TransferSettings,
                 progress: TransferProgress, refresh: Refresh | None, stop: TransferStop) -> None:
        self._client = client
        self._destinations = destinations
        self._settings = settings
        self._progress = progress
        self._links = _FreshLinks(refresh) if refresh is not None else None
        self.stop = stop
        # Decorated once per transfer, not once per file: each call still gets its own retry state.
        self._attempt_with_retries = _retrying(settings, self.stop.event.wait)(self._attempt)
        self.lock = threading.Lock()
        self.results: list[FileResult] = []
        self.failures: dict[str, str] = {}
        self.expired: list[str] = []
        self.permanent: list[str] = []
        self.interrupted: list[str] = []

    def run(self, entry: ManifestEntry) -> None:
        key = f"{entry.config}/{entry.relative_path}"
        try:
            if self.stop.is_set():
                raise TransferCancelled(f"{entry.relative_path}: cancelled before it started")
            result = self.transfer(entry)
        except (TransferCancelled, LockWaitCancelled):
            with self.lock:
                self.interrupted.append(key)
            self._progress.finish(key, "interrupted")
        except LinkExpired as error:
            self._fail(key, str(error), error.files)
        except (DatasetAssetsError, httpx.HTTPError, httpx.InvalidURL, OSError) as error:
            self._fail(key, redact_text(f"{type(error).__name__}: {error}"), permanent=not _may_pass_later(error))
        else:
            with self.lock:
                self.results.append(result)
            self._progress.finish(key, result.status)

    def _fail(self, key: str, why: str, expired: Iterable[str] = (), permanent: bool = False) -> None:
        logger.warning("%s failed: %s", key, why)
        with self.lock:
            self.failures[key] = why
            self.expired.extend(expired)
            if permanent:
                self.permanent.append(key)
        self._progress.finish(key, "failed")

    def transfer(self, entry: ManifestEntry) -> FileResult:
        """The file verified at its destination, fetched unless it already was there; either way, what killed
        runs left for it there (an S3 key's incomplete multipart uploads) is dropped."""
        destination = self._destinations[entry.config]
        existing = destination.verified(entry.relative_path, entry.size, entry.sha1, self.stop.event)
        result = _skipped(entry, existing) if existing is not None else self._download(entry, destination)
        destination.drop_leftovers(entry.relative_path)
        return result

    def _download(self, entry: ManifestEntry, destination: Destination) -> FileResult:
        job = _Job(entry, destination.open(entry.relative_path, entry.sha1, self.stop.event, entry.size))
        resumable = False
        try:
            existing = job.sink.published(entry.size, entry.sha1)
            if existing is not None:  # another run published it between the check above and `open`
                return _skipped(entry, existing)
            digest = self._with_fresh_links(job, destination)
        except (TransferCancelled, LinkExpired):
            resumable = True  # stopped, not failed: a later run (with fresh links) goes on from the held bytes
            raise
        except StorageError:
            # A destination without locks (S3) lets a concurrent run of the same partition publish the file
            # meanwhile, aborting this run's upload: its verified copy is as good as ours.
            existing = _verified_or_none(destination, entry, self.stop.event)
            if existing is None:
                raise
            return _skipped(entry, existing)
        finally:
            job.sink.close(resumable)
        status = "resumed" if job.appended else "downloaded"
        return FileResult(entry.config, entry.relative_path, status, digest.size, digest.sha1, digest.sha256,
                          job.fetched)

    def _with_fresh_links(self, job: _Job, destination: Destination) -> FileDigest:
        refreshes = 0
        while True:
            try:
                return self._attempt_with_retries(job)
            except LinkExpired:
                if self._links is None or refreshes >= self._settings.max_link_refreshes:
                    raise
            fresh = self._links.fresh(job.entry, self.stop)
            if (fresh.sha1, fresh.size) != (job.entry.sha1, job.entry.size):
                job.sink.close()
                job.sink = destination.open(fresh.relative_path, fresh.sha1, self.stop.event, fresh.size)
            job.entry, refreshes = fresh, refreshes + 1

    def _attempt(self, job: _Job) -> FileDigest:
        """One attempt: continue from the held bytes, then verify and publish."""
        entry, sink = job.entry, job.sink
        if self.stop.is_set():
            raise TransferCancelled(f"{entry.relative_path}: cancelled; {sink.held} bytes held")
        _check_expiry(entry)
        if entry.size is not None and sink.held > entry.size:
            sink.restart(None, None)
        self._progress.start(job.key, entry.size, sink.held)
        job.appended = sink.held > 0
        # Everything already held (a run stopped between the last byte and the rename): only verify.
        if sink.held == 0 or sink.held != entry.size:
            while self._fetch(job):
                logger.info("%s: the server's range answer ended at byte %d; asking for the rest",
                            entry.relative_path, sink.held)
        return self._verify_and_commit(job)

    def _fetch(self, job: _Job) -> bool:
        """One request for the bytes not held; True if its 206 ended before the file did (servers may cap a
        range's size), so the rest is still to be asked for."""
        entry, sink = job.entry, job.sink
        offset = sink.held
        with self.stop.stream(self._client, entry.url, range_headers(offset, sink.validator),
                              entry.relative_path) as response:
            if response.status_code == 416 and offset and self._total_size(job, response) == offset:
                return False  # the held bytes already are the whole file (a manifest without its size): verify them
            self._check_status(entry, response, offset, sink)
            validator, total = _validator(response), _announced_total(response)
            if entry.size is not None and total is not None and total != entry.size:
                sink.restart(None, None)
                raise ChecksumMismatch(f"{entry.relative_path}: server announces {total} bytes, "
                                       f"manifest says {entry.size} (content changed upstream?)")
            if response.status_code == 206:
                self._check_continuation(entry, response, offset, sink, validator, total)
            else:
                if offset:
                    logger.info("%s: server sent the whole file instead of bytes %d-; restarting from byte 0",
                                entry.relative_path, offset)
                sink.restart(validator, total)
                job.appended = False
                self._progress.start(job.key, entry.size, 0)
            # iter_raw yields bytes as they arrive, so a dropped connection loses nothing already received.
            for chunk in response.iter_raw():
                if self.stop.is_set():
                    raise TransferCancelled(f"{entry.relative_path}: cancelled; {sink.held} bytes held")
                sink.write(chunk)
                job.fetched += len(chunk)
                self._progress.advance(job.key, len(chunk))
            return response.status_code == 206 and total is not None and offset < sink.held < total

    def _total_size(self, job: _Job, unsatisfiable: httpx.Response) -> int | None:
        """The file's size, as a 416 to the range after the held bytes gives it (`Content-Range: bytes */N`) or,
        where it does not (S3, moto), a one-byte range of the version the held bytes are of says; None if unknown
        or that version changed (the server then answers the whole file, left unread)."""
        total = _announced_total(unsatisfiable)
        if total is not None:
            return total
        entry = job.entry
        with self.stop.stream(self._client, entry.url, range_headers(0, job.sink.validator, last=0),
                              entry.relative_path) as probe:
            return _announced_total(probe) if probe.status_code == 206 else None

    @staticmethod
    def _check_status(entry: ManifestEntry, response: httpx.Response, offset: int, sink: FileSink) -> None:
        status = response.status_code
        if status == 416 and offset:
            sink.restart(None, None)
            raise RetryableStatus(f"{entry.relative_path}: range {offset}- not satisfiable; restarting", 0.0)
        if status in EXPIRY_STATUS:
            if not entry.signed:
                raise AccessDenied(entry, status)
            raise LinkExpired([f"{entry.config}/{entry.relative_path}"], f"(HTTP {status})")
        if status in RETRYABLE_STATUS:
            raise RetryableStatus(f"{entry.relative_path}: HTTP {status} from {entry.url}",
                                  _retry_after_seconds(response))
        if status not in (200, 206):
            raise TransferError(f"{entry.relative_path}: HTTP {status} from {entry.url}")

    @staticmethod
    def _check_continuation(entry: ManifestEntry, response: httpx.Response, offset: int, sink: FileSink,
                            validator: str | None, total: int | None) -> None:
        """A 206 must continue the held bytes of the same content; otherwise restart from byte 0."""
        starts_right = response.headers.get("Content-Range", "").startswith(f"bytes {offset}-")
        version_changed = validator is not None and sink.validator is not None and validator != sink.validator
        size_changed = total is not None and sink.total is not None and total != sink.total
        if not starts_right or version_changed or size_changed:
            sink.restart(None, None)
            raise RetryableStatus(f"{entry.relative_path}: content changed upstream or unexpected Content-Range; "
                                  "restarting from byte 0", 0.0)

    def _verify_and_commit(self, job: _Job) -> FileDigest:
        entry, sink = job.entry, job.sink
        digest = sink.digest()
        if not matches(digest, entry.size, entry.sha1):
            sink.restart(None, None)
            message = (f"{entry.relative_path}: got {digest.size} bytes with sha1 {digest.sha1}, "
                       f"manifest says {entry.size} bytes with sha1 {entry.sha1}")
            if job.appended:
                # Bytes held from an earlier attempt may be stale: one clean restart settles it.
                raise RetryableStatus(f"{message}; restarting from byte 0", 0.0)
            raise ChecksumMismatch(message)
        sink.commit()
        return digest


def _as_destination(target: Path | Destination) -> Destination:
    return LocalDestination(target) if isinstance(target, Path) else target


def _wait_for(futures: list[Future[None]], stop: TransferStop) -> None:
    """Wait for every file; once `stop` is set (a signal handler only sets the event), end the requests in
    flight too."""
    pending: set[Future[None]] = set(futures)
    while pending:
        done, pending = wait(pending, timeout=STOP_POLL_SECONDS)
        for future in done:
            future.result()
        if stop.is_set():
            stop.interrupt_requests()


def transfer_entries(entries: Iterable[ManifestEntry], destinations: Mapping[str, Path | Destination],
                     settings: TransferSettings = TransferSettings(),
                     progress: TransferProgress | ProgressCallback | None = None,
                     client: httpx.Client | None = None, refresh: Refresh | None = None,
                     stop: threading.Event | None = None) -> DownloadReport:
    """Transfer every entry to `destinations[entry.config]` (a folder or a `Destination`) and report.

    Every file is attempted even when some fail, so verified bytes accumulate; failures are in
    the report, not raised. `refresh` returns a fresh manifest when links expire (see module doc).
    Setting `stop` (say, from a SIGINT handler) ends the transfer in order: files streaming or waiting
    to retry stop at once (a request a silent server holds, within `STOP_POLL_SECONDS`), keeping their held
    bytes, and the report lists them as interrupted.
    """
    entries = list(entries)
    targets = {config: _as_destination(target) for config, target in destinations.items()}
    unknown = sorted({entry.config for entry in entries} - set(targets))
    if unknown:
        raise TransferError(f"no destination for config(s) {', '.join(unknown)}")
    tracker = progress if progress is not None and not callable(progress) else _BytesProgress(progress)
    owned = client is None
    client = client or make_client(settings)
    engine = _Engine(client, targets, settings, tracker, refresh, TransferStop(stop))
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=max(settings.workers, 1), thread_name_prefix="download") as pool:
            futures = [pool.submit(engine.run, entry) for entry in entries]
            try:
                _wait_for(futures, engine.stop)
            except BaseException:
                engine.stop.set()
                for future in futures:
                    future.cancel()
                raise
    finally:
        if owned:
            client.close()
    report = DownloadReport(tuple(sorted(engine.results, key=lambda r: r.key)), dict(sorted(engine.failures.items())),
                            tuple(sorted(set(engine.expired))), time.monotonic() - started,
                            {config: target.describe() for config, target in sorted(targets.items())},
                            tuple(sorted(engine.permanent)), tuple(sorted(engine.interrupted)))
    logger.info("download finished: %s", report.summary())
    return report


def download_entries(entries: Iterable[ManifestEntry], folders: Mapping[str, Path | Destination],
                     settings: TransferSettings = TransferSettings(),
                     progress: TransferProgress | ProgressCallback | None = None,
                     client: httpx.Client | None = None, refresh: Refresh | None = None) -> DownloadReport:
    """`transfer_entries`, then raise if anything failed.

    Afterwards, if any link expired, `LinkExpired` names all such files; any other failure raises
    `TransferError` listing each failed file and why.
    """
    report = transfer_entries(entries, folders, settings, progress, client, refresh)
    report.raise_for_failures()
    return report
