"""S3-compatible buckets as a transfer `Destination`: the one S3 client factory and streaming multipart upload.

Bytes stream from the HTTP response into parts of `part_size`; each full part is uploaded on a
small thread pool while the next one fills. At most `concurrency` parts are in flight per
destination (a semaphore shared by every file written through it), so memory stays near
`(files in flight + concurrency) * part_size` whatever the file sizes. A file no larger than one
part is sent with a single PutObject. A multipart upload becomes a visible object only on
CompleteMultipartUpload, which is called after the transfer engine verified size and sha1; any
failure aborts the upload, so no parts are left behind. A stop or an expired link (`close(resumable=True)`)
and a killed process leave the upload for a later run to continue: after each part uploaded without a
gap before it, a record of the parts and of the hashing state is kept beside the object
(`core.s3_resume`), and the next `open` goes on from the record's last byte. The object carries its checksums as
metadata (`sha1`; `sha256` too for single-part objects, since multipart metadata is fixed before
the bytes are seen) and is checked with a HEAD (size + stored sha1) once published; a multipart
object then gets both digests as tags, so later runs report them too. Existing objects whose size
and stored sha1 match the manifest are not transferred again. Uploaded or skipped, a key is left
without the incomplete multipart uploads killed runs left for it, and without their record (`drop_leftovers`).
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dataset_assets.core.errors import InvalidInputError
from dataset_assets.core.redaction import get_logger, redact_text
from dataset_assets.core.s3_resume import RECORD_SUFFIX, UploadedPart, UploadRecord
from dataset_assets.core.storage import STATE_SAVABLE, FileDigest, FileSink, StorageError, StreamDigest, matches

logger = get_logger(__name__)
MIB = 1 << 20
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 << 30  # S3 refuses larger parts, and each part in flight is held in memory
MAX_PARTS = 10_000
DIGEST_NAMES = ("sha1", "sha256")  # object metadata keys, and tags of multipart objects
DEFAULT_PART_SIZE = 8 * MIB
DEFAULT_PART_CONCURRENCY = 4
MAX_RECORD_BYTES = 4 * MIB  # 10,000 parts of about 80 bytes each, with room to spare


def is_s3_url(text: str) -> bool:
    return text.startswith("s3://")


@dataclass(frozen=True)
class S3Url:
    """`s3://bucket/prefix`; keys below it are `prefix/<relative path>`."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str, source: str = "destination", field: str = "destination") -> S3Url:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise InvalidInputError(source, field, url, "must look like s3://bucket/prefix")
        return cls(parts.netloc, parts.path.strip("/"))

    def key(self, relative_path: str) -> str:
        return "/".join(part for part in (self.prefix, relative_path.strip("/")) if part)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def make_s3_client(endpoint_url: str | None = None, region_name: str | None = None,
                   max_pool_connections: int = 32) -> Any:
    """A boto3 S3 client; credentials and (when not given) the endpoint come from the usual AWS env/config."""
    config = Config(max_pool_connections=max_pool_connections, retries={"mode": "standard", "max_attempts": 5})
    try:
        return boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region_name, config=config)
    except ValueError as error:  # botocore's "Invalid endpoint: ...", from the argument or $AWS_ENDPOINT_URL
        raise InvalidInputError("S3 client", "endpoint_url", endpoint_url,
                                f"is not a usable S3 endpoint ({error})") from error


@dataclass(frozen=True)
class MultipartSettings:
    """Part size in bytes (S3 needs 5 MiB to 5 GiB) and parts uploaded at once per destination."""

    part_size: int = DEFAULT_PART_SIZE
    concurrency: int = DEFAULT_PART_CONCURRENCY

    def __post_init__(self) -> None:
        if self.part_size < MIN_PART_SIZE:
            raise InvalidInputError("multipart settings", "part_size", self.part_size,
                                    f"must be at least {MIN_PART_SIZE} bytes (5 MiB, the S3 minimum)")
        if self.part_size > MAX_PART_SIZE:
            raise InvalidInputError("multipart settings", "part_size", self.part_size,
                                    f"must be at most {MAX_PART_SIZE} bytes (5 GiB, the S3 maximum)")
        if self.concurrency < 1:
            raise InvalidInputError("multipart settings", "concurrency", self.concurrency, "must be at least 1")


def _s3_error(url: str, operation: str, error: Exception) -> StorageError:
    return StorageError(redact_text(f"{url}: S3 {operation} failed: {error}"))


def client_error_code(error: BaseException | None) -> str | None:
    """The S3 error code of a botocore `ClientError`, given itself or the `StorageError` wrapping it; else None."""
    if isinstance(error, StorageError):
        error = error.__cause__
    return error.response.get("Error", {}).get("Code") if isinstance(error, ClientError) else None


class S3Destination:
    """Objects under `s3://bucket/prefix/<sequence>/<filename>`, written by streaming multipart upload."""

    def __init__(self, client: Any, url: S3Url, settings: MultipartSettings = MultipartSettings(),
                 slots: threading.BoundedSemaphore | None = None) -> None:
        self.client = client
        self.url = url
        self.settings = settings
        self.slots = slots or threading.BoundedSemaphore(settings.concurrency)

    def child(self, relative_prefix: str) -> S3Destination:
        """The destination `relative_prefix` below this one, sharing its client and part budget."""
        return S3Destination(self.client, S3Url(self.url.bucket, self.url.key(relative_prefix)),
                             self.settings, self.slots)

    def describe(self, relative_path: str = "") -> str:
        return f"s3://{self.url.bucket}/{self.url.key(relative_path)}"

    def call(self, operation: str, relative_path: str, **kwargs: Any) -> Any:
        """Call one S3 operation on the object at `relative_path`; errors name the object."""
        try:
            return getattr(self.client, operation)(Bucket=self.url.bucket, Key=self.url.key(relative_path), **kwargs)
        except (BotoCoreError, ClientError) as error:
            raise _s3_error(self.describe(relative_path), operation, error) from error

    def head(self, relative_path: str, absent: tuple[str, ...] = ("404", "NoSuchKey")) -> dict[str, Any] | None:
        """The object's HEAD answer; None when S3 answers with an error code in `absent`."""
        try:
            return self.call("head_object", relative_path)
        except StorageError as error:
            if client_error_code(error) in absent:
                return None
            raise

    def verified(self, relative_path: str, size: int | None, sha1: str | None,
                 stop: threading.Event | None = None) -> FileDigest | None:
        """The stored digest of an existing object whose size and `sha1` metadata match, else None.

        A 403 counts as absent: S3 answers so for a missing key to credentials without
        s3:ListBucket. If access is denied indeed, the upload that follows fails naming the object.
        Nothing here waits for another process (S3 has no locks), so `stop` is not needed.
        """
        head = self.head(relative_path, absent=("404", "NoSuchKey", "403"))
        if head is None:
            return None
        metadata = head.get("Metadata", {})
        if "sha256" not in metadata:  # a multipart object: its digests are tags (see `tag_digests`)
            metadata = {**self._digest_tags(relative_path), **metadata}
        stored_sha1 = metadata.get("sha1")
        if sha1 is not None and stored_sha1 != sha1:
            return None
        digest = FileDigest(head["ContentLength"], stored_sha1 or "", metadata.get("sha256", ""))
        return digest if matches(digest, size, None) else None

    def open(self, relative_path: str, sha1: str | None, stop: threading.Event | None = None,
             size: int | None = None) -> FileSink:
        return _S3Sink(self, relative_path, sha1, size)

    def tag_digests(self, relative_path: str, digest: FileDigest) -> None:
        """Tag a published multipart object with both digests, which its metadata could not hold.

        Without tags (a store that has none) the object stays good: later runs report its sha256,
        and its sha1 when the manifest gives none, as unknown.
        """
        tags = [{"Key": name, "Value": value} for name, value in _metadata(digest).items()]
        try:
            self.call("put_object_tagging", relative_path, Tagging={"TagSet": tags})
        except StorageError as error:
            logger.warning("%s", error)

    def _digest_tags(self, relative_path: str) -> dict[str, str]:
        try:
            tags = self.call("get_object_tagging", relative_path).get("TagSet", [])
        except StorageError:
            return {}
        return {tag["Key"]: tag["Value"] for tag in tags if tag["Key"] in DIGEST_NAMES}

    def put_bytes(self, relative_path: str, data: bytes) -> None:
        digest = StreamDigest()
        digest.update(data)
        self.call("put_object", relative_path, Body=data, Metadata=_metadata(digest.result()))

    def read_upload_record(self, relative_path: str) -> UploadRecord | None:
        """The record a stopped or killed run left to continue its upload of this key; None if there is none,
        or it cannot be read or used (a warning says why): a fresh upload is then made."""
        record_path = relative_path + RECORD_SUFFIX
        try:
            body = self.call("get_object", record_path)["Body"]
            data = body.read(MAX_RECORD_BYTES + 1)
            body.close()
        except StorageError as error:
            if client_error_code(error) not in ("NoSuchKey", "404", "403"):
                logger.warning("%s; starting a fresh upload", error)
            return None
        except BotoCoreError as error:  # the connection dropped while reading the body
            logger.warning("%s: reading it failed (%s); starting a fresh upload", self.describe(record_path), error)
            return None
        if len(data) > MAX_RECORD_BYTES:
            logger.warning("%s is larger than %d bytes; starting a fresh upload", self.describe(record_path),
                           MAX_RECORD_BYTES)
            return None
        try:
            return UploadRecord.parse(data, self.describe(record_path))
        except InvalidInputError as error:
            logger.warning("%s; starting a fresh upload", error)
            return None

    def write_upload_record(self, relative_path: str, record: UploadRecord) -> None:
        """Keep `record` beside the object; failing to fails nothing (a later run continues from an older
        record, or starts afresh)."""
        try:
            self.call("put_object", relative_path + RECORD_SUFFIX, Body=record.to_json())
        except StorageError as error:
            logger.warning("%s", error)

    def forget_upload_record(self, relative_path: str) -> None:
        try:
            self.call("delete_object", relative_path + RECORD_SUFFIX)
        except StorageError as error:
            logger.warning("%s", error)

    def uploaded_parts(self, relative_path: str, upload_id: str) -> dict[int, UploadedPart] | None:
        """The parts S3 holds for an incomplete upload, by number; None if the upload is gone."""
        pages = self.client.get_paginator("list_parts").paginate(
            Bucket=self.url.bucket, Key=self.url.key(relative_path), UploadId=upload_id)
        try:
            return {part["PartNumber"]: UploadedPart(part["PartNumber"], part["ETag"], part["Size"])
                    for page in pages for part in page.get("Parts", [])}
        except ClientError as error:
            if client_error_code(error) in ("NoSuchUpload", "404"):
                return None
            raise _s3_error(self.describe(relative_path), "list_parts", error) from error
        except BotoCoreError as error:
            raise _s3_error(self.describe(relative_path), "list_parts", error) from error

    def drop_leftovers(self, relative_path: str) -> None:
        """Abort the multipart uploads a killed run left for a key that is now published and verified, and
        forget their record.

        Whether this run uploaded the object (in parts or in one PutObject) or found it published and skipped
        it, S3 bills a killed run's parts until a lifecycle rule (if any) removes them. Failing to list them
        fails nothing: the object is published.
        """
        try:
            if self.abort_stale_uploads(relative_path):
                self.forget_upload_record(relative_path)
        except StorageError as error:
            logger.warning("%s", error)

    def abort_stale_uploads(self, relative_path: str) -> int:
        """Abort the other multipart uploads of this key, once it is published and verified; return how many.

        They were left by a stopped or killed run, whose record is of no use once the object is published,
        or belong to a concurrent run of the same partition, which then finds the object published and
        verified. Aborting them any earlier would fail that concurrent run.
        """
        key = self.url.key(relative_path)
        try:
            listed = self.client.list_multipart_uploads(Bucket=self.url.bucket, Prefix=key)
        except (BotoCoreError, ClientError) as error:
            raise _s3_error(self.describe(relative_path), "list_multipart_uploads", error) from error
        stale = [upload["UploadId"] for upload in listed.get("Uploads", []) if upload["Key"] == key]
        for upload_id in stale:
            logger.info("%s: aborting multipart upload left by an interrupted run", self.describe(relative_path))
            self.call("abort_multipart_upload", relative_path, UploadId=upload_id)
        return len(stale)


def _metadata(digest: FileDigest) -> dict[str, str]:
    return dict(zip(DIGEST_NAMES, (digest.sha1, digest.sha256)))


class _MultipartUpload:
    """One multipart upload, new or `resumed` from a record: parts go out on a small pool, bounded by the
    destination's slots, and each one uploaded is reported to `on_uploaded` (on the pool's thread)."""

    def __init__(self, destination: S3Destination, relative_path: str, metadata: dict[str, str],
                 on_uploaded: Callable[[UploadedPart], None], resumed: UploadRecord | None = None) -> None:
        self._destination = destination
        self._path = relative_path
        self._on_uploaded = on_uploaded
        if resumed is None:
            created = destination.call("create_multipart_upload", relative_path, Metadata=metadata)
            self.upload_id: str = created["UploadId"]
            self._held_parts: list[UploadedPart] = []
        else:
            self.upload_id, self._held_parts = resumed.upload_id, list(resumed.parts)
        self._pool = ThreadPoolExecutor(max_workers=destination.settings.concurrency, thread_name_prefix="s3-part")
        self._futures: list[Future[UploadedPart]] = []
        self._failure: BaseException | None = None

    @property
    def next_number(self) -> int:
        return len(self._held_parts) + len(self._futures) + 1

    def submit(self, data: bytearray) -> None:
        """Queue the next part; blocks while the destination's part budget is used up."""
        self.raise_failure()
        if self.next_number > MAX_PARTS:
            raise StorageError(f"{self._destination.describe(self._path)}: more than {MAX_PARTS} parts; "
                               f"raise part_size (now {self._destination.settings.part_size} bytes)")
        self._destination.slots.acquire()
        try:
            future = self._pool.submit(self._upload_part, self.next_number, data)
        except BaseException:
            self._destination.slots.release()
            raise
        future.add_done_callback(self._part_done)
        self._futures.append(future)

    def _part_done(self, future: Future[UploadedPart]) -> None:
        self._destination.slots.release()
        if not future.cancelled() and future.exception() is not None and self._failure is None:
            self._failure = future.exception()

    def _upload_part(self, number: int, data: bytearray) -> UploadedPart:
        answer = self._destination.call("upload_part", self._path, UploadId=self.upload_id, PartNumber=number,
                                        Body=data)
        part = UploadedPart(number, answer["ETag"], len(data))
        self._on_uploaded(part)
        return part

    def raise_failure(self) -> None:
        """Stop feeding a doomed upload as soon as one part failed."""
        if self._failure is not None:
            raise self._failure

    def finish_parts(self) -> list[UploadedPart]:
        """Every part, once the last one queued is uploaded; raises the first part's failure."""
        parts = self._held_parts + [future.result() for future in self._futures]
        self._pool.shutdown()
        return parts

    def complete(self, parts: list[UploadedPart]) -> None:
        self._destination.call("complete_multipart_upload", self._path, UploadId=self.upload_id,
                               MultipartUpload={"Parts": [{"PartNumber": part.number, "ETag": part.etag}
                                                          for part in parts]})

    def settle(self) -> None:
        """Drop the parts not started; wait for those being uploaded."""
        for future in self._futures:
            future.cancel()
        wait(self._futures)
        self._pool.shutdown()

    def abort(self) -> None:
        self.settle()
        try:
            self._destination.call("abort_multipart_upload", self._path, UploadId=self.upload_id)
        except StorageError as error:
            logger.warning("could not abort multipart upload %s: %s", self.upload_id, error)


class _PartBuffer:
    """The part being filled, up to `capacity` bytes: preallocated (to the bytes expected, when
    fewer), so each byte is copied into it exactly once."""

    def __init__(self, capacity: int, expected: int) -> None:
        self.capacity = capacity
        self.data = bytearray(min(capacity, expected))
        self.filled = 0

    def fill(self, view: memoryview) -> memoryview:
        """Copy what fits from `view`; return the rest."""
        count = min(len(view), self.capacity - self.filled)
        end = self.filled + count
        if end > len(self.data):  # more bytes than expected: grow past the preallocation
            del self.data[self.filled:]
            self.data += view[:count]
        else:
            self.data[self.filled:end] = view[:count]
        self.filled = end
        return view[count:]

    @property
    def full(self) -> bool:
        return self.filled == self.capacity

    def take(self) -> bytearray:
        del self.data[self.filled:]
        return self.data


class _S3Sink:
    """Fills one part in memory and streams full parts out; continues the upload a record describes.

    Held bytes are the parts uploaded plus the part being filled. After each part uploaded with no gap
    before it, the record of the upload (`core.s3_resume`) is rewritten, so a process killed at any
    point leaves a record of parts S3 holds, with the hashing state after their last byte.
    """

    def __init__(self, destination: S3Destination, relative_path: str, sha1: str | None, size: int | None) -> None:
        self._destination = destination
        self._path = relative_path
        self._sha1 = sha1
        self.validator: str | None = None
        self.total: int | None = None
        self._reset()
        # A file smaller than a part goes in one PutObject: no upload of it to continue, and no GET to look for one.
        may_be_in_parts = size is None or size >= destination.settings.part_size
        record = destination.read_upload_record(relative_path) if STATE_SAVABLE and may_be_in_parts else None
        if record is not None:
            self._continue(record)

    def _reset(self) -> None:
        self.held = 0
        self._digest = StreamDigest()
        self._part: _PartBuffer | None = None
        self._upload: _MultipartUpload | None = None
        self._part_size: int | None = None
        self._record_lock = threading.Lock()  # guards the three below
        self._write_lock = threading.Lock()  # one record PUT at a time, newest last; the writer never waits on it
        self._written = 0  # parts in the record last put
        self._recorded: list[UploadedPart] = []  # the parts in the record, 1, 2, ... without a gap
        self._uploaded: dict[int, UploadedPart] = {}  # parts uploaded after a gap, not in the record yet
        self._states: dict[int, bytes] = {}  # the hashing state after each part not in the record yet

    def _continue(self, record: UploadRecord) -> None:
        """Go on with the upload `record` describes, if it is of this file and S3 still holds its parts as
        recorded; otherwise leave it (`drop_leftovers` aborts it once the file is published) and start afresh."""
        described = self._destination.describe(self._path)
        try:
            digest = StreamDigest.resumed(record.digest_state)
        except ValueError as error:
            why: str | None = f"its hashing state is unusable ({error})"
        else:
            why = self._why_not_continue(record, digest.size)
        if why is not None:
            logger.warning("%s: not continuing the upload of an earlier run: %s", described, why)
            return
        self._upload = _MultipartUpload(self._destination, self._path, {}, self._record_part, resumed=record)
        self._digest, self.held = digest, record.held
        self.validator, self.total, self._part_size = record.validator, record.total, record.part_size
        self._recorded = list(record.parts)
        logger.info("%s: continuing the upload of an earlier run from byte %d (%d parts uploaded)", described,
                    record.held, len(record.parts))

    def _why_not_continue(self, record: UploadRecord, hashed: int) -> str | None:
        """Why the upload `record` describes, whose hashing state covers `hashed` bytes, cannot be continued."""
        if record.sha1 != self._sha1:
            return f"it was made for sha1 {record.sha1}, the manifest now says {self._sha1}"
        if hashed != record.held:
            return f"its hashing state covers {hashed} bytes, its parts {record.held}"
        if not MIN_PART_SIZE <= record.part_size <= MAX_PART_SIZE:
            return f"its part size {record.part_size} is not one S3 takes"
        if any(part.size != record.part_size for part in record.parts):
            return f"not all of its parts have its part size {record.part_size}"
        try:
            held = self._destination.uploaded_parts(self._path, record.upload_id)
        except StorageError as error:  # say, credentials without s3:ListMultipartUploadParts
            return f"its parts could not be listed ({error})"
        if held is None:
            return "S3 no longer has the upload"
        if any(held.get(part.number) != part for part in record.parts):
            return "S3 holds other parts than it records"
        return None

    def published(self, size: int | None, sha1: str | None) -> FileDigest | None:
        """None: an S3 sink takes no lock, so it never waited for another run's upload."""
        return None

    def restart(self, validator: str | None, total: int | None) -> None:
        self._discard()
        self.validator, self.total = validator, total

    def write(self, chunk: bytes) -> None:
        rest = memoryview(chunk)
        while rest:
            if self._part is None:
                size = self._part_size = self._part_size or self._new_part_size()
                self._part = _PartBuffer(size, size if self.total is None else max(self.total - self.held, 0))
            before = len(rest)
            piece, rest = rest, self._part.fill(rest)
            self._digest.update(piece[:before - len(rest)])
            self.held += before - len(rest)
            if self._part.full:
                self._send_part(self._part.take())
                self._part = None

    def _new_part_size(self) -> int:
        # A known large total raises the part size so the file fits in S3's 10,000 parts.
        needed = math.ceil(self.total / MAX_PARTS) if self.total else 0
        return max(self._destination.settings.part_size, needed)

    def _send_part(self, data: bytearray) -> None:
        if self._upload is None:
            # Metadata is fixed at creation: only the manifest's sha1 is known now; the engine
            # verifies the streamed bytes against it before completing.
            metadata = {"sha1": self._sha1} if self._sha1 else {}
            self._upload = _MultipartUpload(self._destination, self._path, metadata, self._record_part)
        state = self._digest.state()
        if state is not None:
            with self._record_lock:
                self._states[self._upload.next_number] = state
        self._upload.submit(data)

    def _record_part(self, part: UploadedPart) -> None:
        """Rewrite the record if `part` closes a gap; runs on a part upload's thread."""
        with self._record_lock:
            if part.number not in self._states or self._upload is None or self._part_size is None:
                return  # no hashing state to record (hashlib)
            self._uploaded[part.number] = part
            added = []
            while (number := len(self._recorded) + len(added) + 1) in self._uploaded:
                added.append(self._uploaded.pop(number))
            if not added:
                return
            self._recorded += added
            state = self._states.pop(added[-1].number)
            for earlier in added[:-1]:
                del self._states[earlier.number]
            record = UploadRecord(self._upload.upload_id, self._sha1, self.validator, self.total, self._part_size,
                                  tuple(self._recorded), state)
        with self._write_lock:
            if len(record.parts) > self._written:  # a later part's thread may have put a newer record first
                self._destination.write_upload_record(self._path, record)
                self._written = len(record.parts)

    def digest(self) -> FileDigest:
        return self._digest.result()

    def commit(self) -> None:
        digest = self._digest.result()
        last = self._part.take() if self._part is not None else bytearray()
        self._part = None
        multipart = self._upload is not None
        if self._upload is None:
            self._destination.call("put_object", self._path, Body=last, Metadata=_metadata(digest))
        else:
            if last:
                self._send_part(last)
            parts = self._upload.finish_parts()
            # The record goes first: a crash before completing leaves an upload without one, which a later
            # run does not continue and aborts once the file is published (`drop_leftovers`).
            if self._recorded:
                self._destination.forget_upload_record(self._path)
            self._upload.complete(parts)
            self._upload = None
        self._check_published(digest)
        if multipart:
            self._destination.tag_digests(self._path, digest)

    def _check_published(self, digest: FileDigest) -> None:
        head = self._destination.head(self._path) or {}
        stored = head.get("Metadata", {}).get("sha1", digest.sha1)
        if head.get("ContentLength") != digest.size or stored != digest.sha1:
            self._destination.call("delete_object", self._path)
            raise StorageError(f"{self._destination.describe(self._path)}: published object has "
                               f"{head.get('ContentLength')} bytes and sha1 {stored}, "
                               f"expected {digest.size} bytes and sha1 {digest.sha1}; deleted it")

    def close(self, resumable: bool = False) -> None:
        self._discard(resumable)

    def _discard(self, resumable: bool = False) -> None:
        """Give up the upload: abort it, or with `resumable` leave it and its record for a later run (the part
        being filled is dropped; that run fetches its bytes again)."""
        upload = self._upload
        if upload is not None:
            upload.settle()
            if resumable and self._recorded:
                logger.info("%s: leaving the upload for a later run to continue from byte %d",
                            self._destination.describe(self._path), sum(part.size for part in self._recorded))
            else:
                if self._recorded:
                    self._destination.forget_upload_record(self._path)
                upload.abort()
        self._reset()
