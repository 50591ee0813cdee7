"""Resumable, verified, concurrent HTTP downloads of manifest entries.

One `httpx.Client` (connection reuse) and one retry policy (tenacity: exponential backoff with
jitter on connection errors, 429 and 5xx, honouring Retry-After) serve every transfer. A file is
streamed into `<name>.part`; after an interruption the next attempt asks for the missing bytes
with an HTTP Range request and appends. A server that ignores Range (200 instead of 206) or whose
content changed (ETag differs from the one recorded beside the `.part`) makes the transfer restart
cleanly from byte 0. Size and sha1 are verified (sha256 recorded) before the atomic rename, and a
final file that already matches its sha1 is never fetched again.

Signed links expire: an entry whose URL expiry has passed is not attempted, and 401/403/410 on a
signed URL is not retried; both raise `LinkExpired`, which names the files that need fresh links.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
from tenacity import RetryCallState, retry, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from dataset_assets.core.errors import DatasetAssetsError
from dataset_assets.core.manifest import ManifestEntry, UrlManifest, load_manifest_file, parse_manifest
from dataset_assets.core.redaction import get_logger, redact_text
from dataset_assets.core.storage import CHUNK_BYTES, digest_file, publish_file

logger = get_logger(__name__)
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
EXPIRY_STATUS = frozenset({401, 403, 410})
ProgressCallback = Callable[[int], None]


class TransferError(DatasetAssetsError):
    """A file could not be transferred; the message names the file and redacts its URL."""

    def __init__(self, message: str) -> None:
        super().__init__(redact_text(message))


class ChecksumMismatch(TransferError):
    """The downloaded bytes do not match the manifest's size or sha1."""


class RetryableStatus(TransferError):
    """A 429/5xx answer, retried by the retry policy (after Retry-After if the server gave one)."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LinkExpired(TransferError):
    """Signed links expired (or were refused); `files` lists `<sequence>/<file>` needing fresh links."""

    def __init__(self, files: Iterable[str], detail: str = "") -> None:
        self.files = tuple(sorted(set(files)))
        shown = ", ".join(self.files[:10]) + (f" and {len(self.files) - 10} more" if len(self.files) > 10 else "")
        super().__init__(f"signed links expired for {len(self.files)} file(s): {shown}. "
                         f"Refresh the URL manifest and run again; verified bytes are kept. {detail}".strip())


@dataclass(frozen=True)
class TransferSettings:
    workers: int = 4
    max_attempts: int = 5
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    timeout_seconds: float = 60.0


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
    results: tuple[FileResult, ...]
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def bytes_fetched(self) -> int:
        return sum(result.bytes_fetched for result in self.results)

    @property
    def data_version(self) -> str:
        """A hash of every verified file's key and sha256: equal downloads have equal versions."""
        listing = "".join(f"{result.key}:{result.sha256};" for result in self.results)
        return hashlib.sha256(listing.encode()).hexdigest()[:16]

    def count(self, status: str) -> int:
        return sum(1 for result in self.results if result.status == status)

    def metadata(self) -> dict[str, object]:
        """Counts, bytes and per-file digests keyed `<config>/<sequence>/<file>`."""
        return {
            "files": len(self.results),
            "downloaded": self.count("downloaded"),
            "resumed": self.count("resumed"),
            "skipped": self.count("skipped"),
            "bytes_fetched": self.bytes_fetched,
            "bytes_total": sum(result.size for result in self.results),
            "sha1": {result.key: result.sha1 for result in self.results},
            "sha256": {result.key: result.sha256 for result in self.results},
        }


def make_client(settings: TransferSettings = TransferSettings()) -> httpx.Client:
    limits = httpx.Limits(max_connections=max(settings.workers, 1) * 2,
                          max_keepalive_connections=max(settings.workers, 1) * 2)
    return httpx.Client(timeout=settings.timeout_seconds, limits=limits, follow_redirects=True)


def _retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        try:
            return max((parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds(), 0.0)
        except (TypeError, ValueError):
            return None


def _is_retryable(error: BaseException) -> bool:
    return isinstance(error, (httpx.TransportError, RetryableStatus))


def _retrying(settings: TransferSettings) -> Callable[[Callable[..., FileResult]], Callable[..., FileResult]]:
    """The single retry policy: exponential backoff with jitter, overridden by Retry-After."""
    backoff = wait_exponential_jitter(multiplier=settings.backoff_initial_seconds, max=settings.backoff_max_seconds)

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RetryableStatus) and error.retry_after is not None:
            return min(error.retry_after, settings.backoff_max_seconds)
        return backoff(state)

    def log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        logger.warning("retrying after attempt %d: %s", state.attempt_number, redact_text(str(error)))

    return retry(retry=retry_if_exception(_is_retryable), stop=stop_after_attempt(settings.max_attempts),
                 wait=wait, before_sleep=log_retry, reraise=True)


def fetch_bytes(client: httpx.Client, url: str, settings: TransferSettings = TransferSettings()) -> bytes:
    """GET a small document (a manifest) under the retry policy."""

    @_retrying(settings)
    def attempt() -> bytes:
        response = client.get(url)
        if response.status_code in RETRYABLE_STATUS:
            raise RetryableStatus(f"{url}: HTTP {response.status_code}", _retry_after_seconds(response))
        if response.status_code != 200:
            raise TransferError(f"{url}: HTTP {response.status_code}")
        return response.content

    return attempt()


def fetch_manifest(location: str, client: httpx.Client | None = None) -> tuple[UrlManifest, bytes]:
    """Read the manifest at an http(s) URL or a local path; return it and its raw bytes."""
    if not location.startswith(("http://", "https://")):
        path = Path(location)
        return load_manifest_file(path), path.read_bytes()
    owned = client is None
    client = client or make_client()
    try:
        data = fetch_bytes(client, location)
    except httpx.HTTPError as error:
        raise TransferError(f"{location}: could not fetch the manifest: {type(error).__name__}: {error}") from None
    finally:
        if owned:
            client.close()
    try:
        decoded = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TransferError(f"{location}: manifest is not valid JSON ({error})") from error
    return parse_manifest(decoded, location), data


def _part_paths(final: Path) -> tuple[Path, Path]:
    return final.with_name(final.name + ".part"), final.with_name(final.name + ".part.json")


def _verified_existing(final: Path, entry: ManifestEntry) -> FileResult | None:
    """A final file that matches the manifest's size and sha1 is complete: never fetch it again."""
    if not final.exists():
        return None
    digest = digest_file(final)
    if (entry.sha1 is None or digest.sha1 == entry.sha1) and (entry.size is None or digest.size == entry.size):
        return FileResult(entry.config, entry.relative_path, "skipped", digest.size, digest.sha1, digest.sha256, 0)
    logger.warning("%s exists but does not match the manifest; downloading it again", entry.relative_path)
    final.unlink()
    return None


def _check_expiry(entry: ManifestEntry) -> None:
    expires_at = entry.expires_at
    if expires_at is not None and expires_at <= datetime.now(timezone.utc):
        raise LinkExpired([entry.relative_path], f"(link expired at {expires_at.isoformat()})")


class _PartFile:
    """The `.part` file of one transfer plus the validator (ETag) it was fetched under."""

    def __init__(self, final: Path) -> None:
        self.path, self.sidecar = _part_paths(final)

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def etag(self) -> str | None:
        try:
            return json.loads(self.sidecar.read_text()).get("etag")
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)
        self.sidecar.unlink(missing_ok=True)

    def remember(self, etag: str | None) -> None:
        self.sidecar.write_text(json.dumps({"etag": etag}))


def _hash_prefix(path: Path, size: int) -> tuple[hashlib._Hash, hashlib._Hash]:
    sha1, sha256 = hashlib.sha1(), hashlib.sha256()
    if size:
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                sha1.update(chunk)
                sha256.update(chunk)
    return sha1, sha256


def _download_once(client: httpx.Client, entry: ManifestEntry, final: Path, settings: TransferSettings,
                   progress: ProgressCallback | None) -> FileResult:
    """One attempt: continue the `.part` from its current size, then verify and publish."""
    _check_expiry(entry)
    part = _PartFile(final)
    offset = part.size()
    if entry.size is not None and offset > entry.size:
        part.reset()
        offset = 0
    # Identity encoding: byte offsets in Range and in the `.part` must mean bytes of the file itself.
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
    with client.stream("GET", entry.url, headers=headers) as response:
        status = response.status_code
        if status == 416 and offset:
            part.reset()
            raise RetryableStatus(f"{entry.relative_path}: range {offset}- not satisfiable; restarting", 0.0)
        if status in EXPIRY_STATUS:
            raise LinkExpired([entry.relative_path], f"(HTTP {status})")
        if status in RETRYABLE_STATUS:
            raise RetryableStatus(f"{entry.relative_path}: HTTP {status} from {entry.url}",
                                  _retry_after_seconds(response))
        if status not in (200, 206):
            raise TransferError(f"{entry.relative_path}: HTTP {status} from {entry.url}")
        etag = response.headers.get("ETag")
        resuming = status == 206 and offset > 0
        if resuming and etag is not None and part.etag() not in (None, etag):
            part.reset()
            raise RetryableStatus(f"{entry.relative_path}: content changed upstream (ETag); restarting", 0.0)
        if resuming and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            part.reset()
            raise RetryableStatus(f"{entry.relative_path}: unexpected Content-Range; restarting", 0.0)
        if not resuming:
            offset = 0
        part.remember(etag)
        sha1, sha256 = _hash_prefix(part.path, offset)
        fetched = 0
        with open(part.path, "ab" if resuming else "wb") as handle:
            # iter_raw yields bytes as they arrive, so a dropped connection loses nothing already received.
            for chunk in response.iter_raw():
                handle.write(chunk)
                sha1.update(chunk)
                sha256.update(chunk)
                fetched += len(chunk)
                if progress is not None:
                    progress(len(chunk))
            handle.flush()
            os.fsync(handle.fileno())
    size = offset + fetched
    if (entry.size is not None and size != entry.size) or (entry.sha1 is not None and sha1.hexdigest() != entry.sha1):
        part.reset()
        raise ChecksumMismatch(
            f"{entry.relative_path}: downloaded {size} bytes with sha1 {sha1.hexdigest()}, "
            f"manifest says {entry.size} bytes with sha1 {entry.sha1}"
        )
    publish_file(part.path, final)
    part.sidecar.unlink(missing_ok=True)
    status_name = "resumed" if resuming else "downloaded"
    return FileResult(entry.config, entry.relative_path, status_name, size, sha1.hexdigest(), sha256.hexdigest(),
                      fetched)


def download_entry(client: httpx.Client, entry: ManifestEntry, out_folder: Path,
                   settings: TransferSettings = TransferSettings(),
                   progress: ProgressCallback | None = None) -> FileResult:
    """Download one entry to `out_folder/<sequence>/<filename>`, resuming and verifying."""
    final = out_folder / entry.sequence / entry.filename
    existing = _verified_existing(final, entry)
    if existing is not None:
        return existing
    final.parent.mkdir(parents=True, exist_ok=True)
    fetched_before = _PartFile(final).size()
    result = _retrying(settings)(_download_once)(client, entry, final, settings, progress)
    if fetched_before and result.status == "downloaded":
        logger.info("%s: restarted from byte 0 (server ignored Range or content changed)", entry.relative_path)
    return result


def download_entries(entries: Iterable[ManifestEntry], folders: Mapping[str, Path],
                     settings: TransferSettings = TransferSettings(),
                     progress: ProgressCallback | None = None,
                     client: httpx.Client | None = None) -> DownloadReport:
    """Download every entry to `folders[entry.config]/<sequence>/<file>`, `settings.workers` in flight.

    Every file is attempted even when some fail, so verified bytes accumulate. Afterwards, if any
    link expired, `LinkExpired` names all such files; any other failure raises `TransferError`
    listing each failed file and why.
    """
    entries = list(entries)
    owned = client is None
    client = client or make_client(settings)
    results: list[FileResult] = []
    failures: dict[str, str] = {}
    expired: list[str] = []
    lock = threading.Lock()

    def run(entry: ManifestEntry) -> None:
        try:
            result = download_entry(client, entry, folders[entry.config], settings, progress)
        except LinkExpired as error:
            with lock:
                expired.extend(error.files)
                failures[f"{entry.config}/{entry.relative_path}"] = str(error)
        except (TransferError, httpx.HTTPError, OSError) as error:
            with lock:
                failures[f"{entry.config}/{entry.relative_path}"] = redact_text(
                    f"{type(error).__name__}: {error}")
        else:
            with lock:
                results.append(result)

    try:
        with ThreadPoolExecutor(max_workers=max(settings.workers, 1), thread_name_prefix="download") as pool:
            list(pool.map(run, entries))
    finally:
        if owned:
            client.close()
    report = DownloadReport(tuple(sorted(results, key=lambda r: r.key)), failures)
    if expired:
        raise LinkExpired(expired)
    if failures:
        listed = "; ".join(f"{path}: {why}" for path, why in sorted(failures.items()))
        raise TransferError(f"{len(failures)} of {len(entries)} file(s) failed: {listed}")
    return report
