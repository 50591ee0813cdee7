"""URL manifests in the ATEK data store shape: parsing, validation and link expiry.

The published JSON holds every config at once::

    {"atek_data_for_all_configs": {"<config>": {"wds_file_urls": {"<sequence>": {
        "shards-0000_tar": {"filename": "shards-0000.tar", "sha1sum": "<hex>",
                            "file_size_bytes": 123, "download_url": "https://..."}}}}}}

Only `download_url` is required per entry; the key `shards-0000_tar` names file `shards-0000.tar`.
Sequence and file names become folder and file names on disk, so they are validated to be
plain names that cannot escape their folder.
"""
from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from dataset_assets.core.errors import ManifestError
from dataset_assets.core.redaction import may_be_signed, redact_url

ROOT_KEY = "atek_data_for_all_configs"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}\Z")
SHA1_HEX = re.compile(r"^[0-9a-f]{40}\Z")
# The most a manifest may hold, read from a file or fetched over http(s) (after decompression).
MAX_MANIFEST_BYTES = 256 << 20


@dataclass(frozen=True)
class ManifestEntry:
    """One downloadable file of one sequence of one config."""

    config: str
    sequence: str
    filename: str
    url: str
    sha1: str | None = None
    size: int | None = None

    @functools.cached_property  # asked for about ten times per file transferred
    def relative_path(self) -> str:
        """`<sequence>/<filename>`, the ATEK local layout below the output folder."""
        return f"{self.sequence}/{self.filename}"

    @property
    def expires_at(self) -> datetime | None:
        return expiry_from_url(self.url)

    @property
    def signed(self) -> bool:
        """Whether the link may be signed, and so may expire and be refreshed: its URL has a query string,
        which holds any signature and `expires_at` (and which redaction treats as secret)."""
        return may_be_signed(self.url)

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)


@dataclass(frozen=True)
class UrlManifest:
    """All entries of a manifest: config -> sequence -> entries sorted by file name."""

    source: str
    configs: Mapping[str, Mapping[str, tuple[ManifestEntry, ...]]]

    def sequences(self, config: str) -> list[str]:
        return sorted(self.configs[config])

    def all_sequences(self) -> list[str]:
        return sorted({sequence for by_sequence in self.configs.values() for sequence in by_sequence})

    def entries(self, config: str, sequence: str) -> tuple[ManifestEntry, ...]:
        return self.configs.get(config, {}).get(sequence, ())

    def all_entries(self) -> list[ManifestEntry]:
        return [
            entry
            for config in sorted(self.configs)
            for sequence in sorted(self.configs[config])
            for entry in self.configs[config][sequence]
        ]

    def earliest_expiry(self) -> datetime | None:
        expiries = [e for e in (entry.expires_at for entry in self.all_entries()) if e is not None]
        return min(expiries, default=None)

    def require_configs(self, configs: list[str]) -> None:
        """Fail naming the first config the catalog wants but the manifest does not publish."""
        for config in configs:
            if config not in self.configs:
                raise ManifestError(
                    self.source, f"{ROOT_KEY}.{config}", config,
                    f"is not published (available: {', '.join(sorted(self.configs)) or 'none'})",
                )


def _expect(source: str, field: str, value: Any, kind: type | tuple[type, ...], what: str) -> None:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ManifestError(source, field, value, f"must be {what}")


def _check_name(source: str, field: str, name: str) -> None:
    if not SAFE_NAME.match(name) or ".." in name:
        raise ManifestError(
            source, field, name,
            "must be a plain name (letters, digits, '_', '.', '+', '-'; no '/' or '..'; at most 200 chars)",
        )


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a malformed IPv6 host, or a port that is no number in 0-65535
        return False


def _parse_entry(source: str, field: str, config: str, sequence: str, key: str, raw: Any) -> ManifestEntry:
    _expect(source, field, raw, dict, "an object")
    url = raw.get("download_url")
    if url is None:
        raise ManifestError(source, f"{field}.download_url", None, "is required")
    _expect(source, f"{field}.download_url", url, str, "a string")
    if not _is_http_url(url):
        raise ManifestError(source, f"{field}.download_url", redact_url(url),
                            "must be an http(s) URL with a host and a valid port")
    filename = raw.get("filename")
    if filename is None:  # absent or null, as for sha1sum and file_size_bytes
        filename = key[: -len("_tar")] + ".tar" if key.endswith("_tar") else key
    _expect(source, f"{field}.filename", filename, str, "a string")
    _check_name(source, f"{field}.filename", filename)
    sha1 = raw.get("sha1sum")
    if sha1 is not None:
        _expect(source, f"{field}.sha1sum", sha1, str, "a string")
        if not SHA1_HEX.match(sha1.lower()):
            raise ManifestError(source, f"{field}.sha1sum", sha1, "must be 40 hex digits")
        sha1 = sha1.lower()
    size = raw.get("file_size_bytes")
    if size is not None:
        _expect(source, f"{field}.file_size_bytes", size, int, "an integer")
        if size < 0 or size > 1 << 50:
            raise ManifestError(source, f"{field}.file_size_bytes", size, "must be between 0 and 2**50")
    return ManifestEntry(config, sequence, filename, url, sha1, size)


def parse_manifest(data: Any, source: str) -> UrlManifest:
    """Validate decoded manifest JSON; `source` (a path or URL) is named in every error."""
    source = redact_url(source) if "://" in source else source
    _expect(source, "<root>", data, dict, "an object")
    root = data.get(ROOT_KEY)
    if root is None:
        raise ManifestError(source, ROOT_KEY, None, "is required")
    _expect(source, ROOT_KEY, root, dict, "an object mapping config names to configs")
    if not root:
        raise ManifestError(source, ROOT_KEY, root, "must name at least one config")
    configs: dict[str, dict[str, tuple[ManifestEntry, ...]]] = {}
    for config, config_body in root.items():
        config_field = f"{ROOT_KEY}.{config}"
        _check_name(source, config_field, config)
        _expect(source, config_field, config_body, dict, "an object")
        urls = config_body.get("wds_file_urls")
        if urls is None:
            raise ManifestError(source, f"{config_field}.wds_file_urls", None, "is required")
        _expect(source, f"{config_field}.wds_file_urls", urls, dict, "an object mapping sequences to files")
        by_sequence: dict[str, tuple[ManifestEntry, ...]] = {}
        for sequence, files in urls.items():
            sequence_field = f"{config_field}.wds_file_urls.{sequence}"
            _check_name(source, sequence_field, sequence)
            _expect(source, sequence_field, files, dict, "an object mapping file keys to entries")
            entries = [
                _parse_entry(source, f"{sequence_field}.{key}", config, sequence, key, raw)
                for key, raw in files.items()
            ]
            names = [entry.filename for entry in entries]
            if len(set(names)) != len(names):
                raise ManifestError(source, sequence_field, names, "lists the same filename twice")
            by_sequence[sequence] = tuple(sorted(entries, key=lambda entry: entry.filename))
        configs[config] = by_sequence
    return UrlManifest(source=source, configs=configs)


def _too_large(path: Path, size: str, max_bytes: int) -> ManifestError:
    return ManifestError(str(path), "<file>", size, f"is larger than the {max_bytes}-byte limit")


def read_manifest_bytes(path: Path, max_bytes: int = MAX_MANIFEST_BYTES) -> bytes:
    """A manifest file's bytes; a file larger than `max_bytes` is refused before it is read.

    The read is capped too: a pipe (`/dev/stdin`) has no size, and a file may grow once checked.
    """
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise _too_large(path, f"{size} bytes", max_bytes)
            data = handle.read(max_bytes + 1)
    except OSError as error:
        raise ManifestError(str(path), "<file>", str(path), f"cannot be read ({error.strerror})") from error
    if len(data) > max_bytes:
        raise _too_large(path, f"more than {max_bytes} bytes", max_bytes)
    return data


def parse_manifest_json(data: bytes, source: str) -> UrlManifest:
    """Decode and validate a manifest's UTF-8 JSON bytes, naming `source` in any error."""
    try:
        document = json.loads(data.decode("utf-8"))
    except json.JSONDecodeError as error:
        raise ManifestError(source, "<root>", f"line {error.lineno} column {error.colno}",
                            f"is not valid JSON: {error.msg}") from error
    except UnicodeDecodeError as error:
        raise ManifestError(source, "<root>", f"byte {error.start}", "is not UTF-8 text") from error
    except RecursionError:  # valid JSON nested deeper than the parser recurses
        raise ManifestError(source, "<root>", None, "is not valid JSON: nested too deeply") from None
    return parse_manifest(document, source)


def load_manifest_file(path: Path, max_bytes: int = MAX_MANIFEST_BYTES) -> UrlManifest:
    """Read and validate a manifest JSON file of at most `max_bytes`, naming the file in any error."""
    return parse_manifest_json(read_manifest_bytes(path, max_bytes), str(path))


def expiry_from_url(url: str) -> datetime | None:
    """The expiry instant encoded in a signed URL's query, or None if it carries none.

    Understands `Expires=<unix>` (CloudFront, S3 SigV2 and this project's demo server),
    `X-Amz-Date` + `X-Amz-Expires` (S3 SigV4), `oe=<hex unix>` (Meta CDN, as the ATEK store)
    and `se=<ISO 8601>` (Azure SAS).
    """
    try:
        query = {key.lower(): value for key, value in parse_qsl(urlsplit(url).query)}
        if "expires" in query:
            return datetime.fromtimestamp(int(query["expires"]), tz=timezone.utc)
        if "x-amz-date" in query and "x-amz-expires" in query:
            signed = datetime.strptime(query["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
            return signed + timedelta(seconds=int(query["x-amz-expires"]))
        if "oe" in query:
            return datetime.fromtimestamp(int(query["oe"], 16), tz=timezone.utc)
        if "se" in query:
            parsed = datetime.fromisoformat(query["se"].replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None
    return None
