"""Publish a version folder to an S3-compatible bucket under `<prefix>/<dataset>/<version>/`.

Each file goes through `core.s3`'s streaming multipart sink: parts of `part_size_mib` are uploaded
`concurrency` at a time while the next part is read, and the object becomes visible only when
CompleteMultipartUpload succeeds (any failure aborts the upload; a file of one part is a single
PutObject). The file's sha1 is computed first and stored as object metadata, so after the upload a
HEAD checks size and sha1, and a re-publish skips every object whose size and stored sha1 already
match. A run killed or stopped with Ctrl-C mid-upload leaves its upload with a record of its parts
beside the object (`core.s3_resume`), and the next publish of the same file goes on from it.
Uploaded or skipped, an object is left without incomplete multipart uploads (a killed run's parts).
Annotations go last: the versions sensor treats a version whose annotations object exists as
complete. `publish_version` first refuses a packed version whose annotations describe other objects
than its `assets.tar`.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from dataset_assets.core.errors import DatasetAssetsError, InvalidInputError
from dataset_assets.core.redaction import get_logger, redact_text
from dataset_assets.core.s3 import MIB, MultipartSettings, S3Destination, S3Url, make_s3_client
from dataset_assets.core.storage import CHUNK_BYTES, FileDigest, FileSink, StorageError, digest_file
from dataset_assets.core.versioned import ANNOTATIONS_FILE, PublishSpec, check_annotations_match_assets, check_version

logger = get_logger(__name__)


@dataclass(frozen=True)
class PublishedFile:
    """One verified object; `status` is uploaded or skipped (already there with the same size and sha1)."""

    name: str
    uri: str
    status: str
    size: int
    sha1: str
    sha256: str


@dataclass(frozen=True)
class PublishReport:
    files: tuple[PublishedFile, ...]
    elapsed_seconds: float

    @property
    def uploaded_bytes(self) -> int:
        return sum(file.size for file in self.files if file.status == "uploaded")

    def summary(self) -> str:
        uploaded = sum(1 for file in self.files if file.status == "uploaded")
        rate = self.uploaded_bytes / MIB / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0
        return (f"{len(self.files)} file(s): {uploaded} uploaded, {len(self.files) - uploaded} already published; "
                f"{self.uploaded_bytes / MIB:.1f} MiB in {self.elapsed_seconds:.1f} s ({rate:.1f} MiB/s)")

    def metadata(self) -> dict[str, object]:
        return {
            "uploaded": sum(1 for file in self.files if file.status == "uploaded"),
            "skipped": sum(1 for file in self.files if file.status == "skipped"),
            "uploaded_bytes": self.uploaded_bytes,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "objects": {file.name: file.uri for file in self.files},
            "status": {file.name: file.status for file in self.files},
            "sha256": {file.name: file.sha256 for file in self.files},
        }


def publish_client(spec: PublishSpec) -> Any:
    """A client from the one S3 client factory, with a connection per part in flight."""
    return make_s3_client(spec.endpoint_url, max_pool_connections=spec.concurrency + 4)


def version_destination(spec: PublishSpec, dataset: str, version: str, client: Any | None = None) -> S3Destination:
    """`s3://<bucket>/<prefix>/<dataset>/<version>/` with the spec's part size and concurrency."""
    root = S3Destination(client or publish_client(spec), S3Url(spec.bucket, spec.prefix),
                         MultipartSettings(spec.part_size_mib * MIB, spec.concurrency))
    return root.child(f"{dataset}/{version}")


def publish_file(path: Path, destination: S3Destination, name: str, digest: FileDigest | None = None
                 ) -> PublishedFile:
    """Upload `path` as `name` below `destination` unless an identical object (size + sha1) is there.

    Either way, no incomplete multipart upload of the key is left behind. `digest` is the file's, when
    the caller already read it.
    """
    digest = digest or digest_file(path)
    skipped = destination.verified(name, digest.size, digest.sha1) is not None
    status = "skipped" if skipped else _upload_file(path, destination, name, digest)
    destination.drop_leftovers(name)
    return PublishedFile(name, destination.describe(name), status, digest.size, digest.sha1, digest.sha256)


def _upload_file(path: Path, destination: S3Destination, name: str, digest: FileDigest) -> str:
    """Upload `path`: "uploaded", or "skipped" when a concurrent run published the same bytes meanwhile."""
    uri = destination.describe(name)
    sink = destination.open(name, digest.sha1, size=digest.size)
    interrupted = False
    try:
        _upload(path, sink, digest, uri)
    except KeyboardInterrupt:
        interrupted = True  # Ctrl-C: the upload is kept for the next publish to continue
        raise
    except StorageError:
        # S3 has no locks: a concurrent run of the same version may have published the object meanwhile
        # and aborted this run's upload as stale (`abort_stale_uploads`); its verified copy is as good.
        if not _published_meanwhile(path, destination, name, digest):
            raise
        return "skipped"
    finally:
        sink.close(resumable=interrupted)
    logger.info("published %s (%d bytes)", uri, digest.size)
    return "uploaded"


def _upload(path: Path, sink: FileSink, digest: FileDigest, uri: str) -> None:
    """Upload `path`, going on from the bytes the sink holds: an upload a killed run left of the same file
    (the sink continues only an upload made for this sha1)."""
    if sink.held == 0 or sink.total != digest.size:
        sink.restart(None, digest.size)  # the known size lets the sink keep within S3's 10,000 parts
    with open(path, "rb") as handle:
        handle.seek(sink.held)
        while chunk := handle.read(CHUNK_BYTES):
            sink.write(chunk)
    if sink.digest() != digest:
        raise StorageError(f"{path}: changed while it was uploaded to {uri}; nothing was published")
    sink.commit()


def _published_meanwhile(path: Path, destination: S3Destination, name: str, digest: FileDigest) -> bool:
    """True if the object is now there with the file's size and sha1, and the file still has them."""
    try:
        if destination.verified(name, digest.size, digest.sha1) is None:
            return False
    except StorageError:
        return False
    return digest_file(path) == digest


def publish_folder(folder: Path, names: Sequence[str], destination: S3Destination,
                   pins: Mapping[str, tuple[str, str]] | None = None) -> PublishReport:
    """Publish `folder/<name>` for each name, in order; every file must exist and match its pin.

    `pins` maps a name to the catalog field pinning its sha256 and that sha256: a file that misses its
    pin would be refused (and deleted) by every download, so nothing is published then.
    """
    missing = [str(folder / name) for name in names if not (folder / name).is_file()]
    if missing:
        raise DatasetAssetsError(f"cannot publish {destination.describe()}: missing {', '.join(missing)} "
                                 "(download the version, or prepare and pack it, first)")
    started = time.monotonic()
    digests = {name: _pinned_digest(folder / name, (pins or {}).get(name)) for name in names}
    files = tuple(publish_file(folder / name, destination, name, digests[name]) for name in names)
    return PublishReport(files, time.monotonic() - started)


def publish_version(folder: Path, names: Sequence[str], destination: S3Destination,
                    pins: Mapping[str, tuple[str, str]] | None = None) -> PublishReport:
    """`publish_folder` of a version folder, refused (`AssetsMismatchError`) before anything is uploaded
    when its annotations describe other objects than its packed `assets.tar` holds."""
    check_annotations_match_assets(folder)
    return publish_folder(folder, names, destination, pins)


def _pinned_digest(path: Path, pin: tuple[str, str] | None) -> FileDigest:
    digest = digest_file(path)
    if pin is not None and digest.sha256 != pin[1]:
        raise DatasetAssetsError(f"{path}: sha256 {digest.sha256} differs from the catalog's pin {pin[0]} "
                                 f"({pin[1]}); nothing was published")
    return digest


def publish_mismatches(folder: Path, names: Sequence[str], destination: S3Destination) -> list[str]:
    """Why each of `names` is not published as `folder/<name>` is: missing locally, or its object below
    `destination` missing or of another size or stored sha1 (empty when every object matches)."""
    problems = []
    for name in names:
        path = folder / name
        if not path.is_file():
            problems.append(f"{path}: missing locally")
            continue
        digest = digest_file(path)
        if destination.verified(name, digest.size, digest.sha1) is None:
            problems.append(f"{destination.describe(name)}: missing, or not {digest.size} bytes with sha1 "
                            f"{digest.sha1} like {path}")
    return problems


def _published_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]
    except (BotoCoreError, ClientError) as error:
        raise StorageError(redact_text(f"s3://{bucket}/{prefix}: S3 list_objects_v2 failed: {error}")) from error


def list_published_versions(spec: PublishSpec, dataset: str, client: Any | None = None) -> list[str]:
    """Versions of `dataset` whose annotations object exists below the spec's prefix, sorted."""
    base = S3Url(spec.bucket, spec.prefix).key(dataset) + "/"
    versions = set()
    for key in _published_keys(client or publish_client(spec), spec.bucket, base):
        version, _, name = key[len(base):].partition("/")
        if name != ANNOTATIONS_FILE:
            continue
        try:
            versions.add(check_version(version, f"s3://{spec.bucket}/{key}", "version"))
        except InvalidInputError as error:
            logger.warning("ignoring a published folder that is not a version: %s", error)
    return sorted(versions)
