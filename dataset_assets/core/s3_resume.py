"""The record that lets a later run continue a multipart upload a stopped or killed run left behind.

S3 cannot read back the parts of an incomplete upload, so the bytes they hold cannot be hashed
again; the record keeps, beside the object as `<key>.upload.json`, what continuing needs: the
upload's id, the parts uploaded from the first one on without a gap (number, ETag, size), the
hashing state after their last byte (`StreamDigest.state`), the source's validator and size that
the bytes are of, and the manifest sha1 the upload was made for. It holds no URL. It is read from
the bucket, so every field is checked before use; a record that fails a check is not used.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from dataset_assets.core.errors import InvalidInputError

RECORD_SUFFIX = ".upload.json"
FORMAT_VERSION = 1
T = TypeVar("T", str, int, list)
_KINDS: dict[type, str] = {str: "a string", int: "an integer", list: "a list"}


@dataclass(frozen=True)
class UploadedPart:
    number: int
    etag: str
    size: int


@dataclass(frozen=True)
class UploadRecord:
    upload_id: str
    sha1: str | None
    validator: str | None
    total: int | None
    part_size: int
    parts: tuple[UploadedPart, ...]
    digest_state: bytes

    @property
    def held(self) -> int:
        return sum(part.size for part in self.parts)

    def to_json(self) -> bytes:
        return json.dumps({
            "version": FORMAT_VERSION, "upload_id": self.upload_id, "sha1": self.sha1, "validator": self.validator,
            "total": self.total, "part_size": self.part_size, "digest_state": self.digest_state.hex(),
            "parts": [{"number": part.number, "etag": part.etag, "size": part.size} for part in self.parts],
        }).encode()

    @classmethod
    def parse(cls, data: bytes, source: str) -> UploadRecord:
        """The record in `data` (read from `source`); InvalidInputError names the field and value that are wrong."""
        try:
            fields = json.loads(data)
        except ValueError as error:
            raise InvalidInputError(source, "(document)", data[:40], f"is not JSON ({error})") from error
        if not isinstance(fields, dict):
            raise InvalidInputError(source, "(document)", type(fields).__name__, "must be a JSON object")
        if fields.get("version") != FORMAT_VERSION:
            raise InvalidInputError(source, "version", fields.get("version"), f"must be {FORMAT_VERSION}")
        parts: list[object] = _field(fields, "parts", list, source)
        record = cls(
            upload_id=_field(fields, "upload_id", str, source),
            sha1=_optional(fields, "sha1", str, source),
            validator=_optional(fields, "validator", str, source),
            total=_optional(fields, "total", int, source),
            part_size=_field(fields, "part_size", int, source),
            parts=tuple(_part(part, f"parts[{index}]", source) for index, part in enumerate(parts)),
            digest_state=_hex(_field(fields, "digest_state", str, source), source),
        )
        numbers = [part.number for part in record.parts]
        if not numbers or numbers != list(range(1, len(numbers) + 1)):
            raise InvalidInputError(source, "parts", numbers, "must number the parts 1, 2, 3, ... without a gap")
        return record


def _field(fields: Mapping[str, object], name: str, kind: type[T], source: str) -> T:
    value = fields.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidInputError(source, name, value, f"must be {_KINDS[kind]}")
    if isinstance(value, int) and value < 0:
        raise InvalidInputError(source, name, value, "must not be negative")
    return value


def _optional(fields: Mapping[str, object], name: str, kind: type[T], source: str) -> T | None:
    return None if fields.get(name) is None else _field(fields, name, kind, source)


def _part(value: object, field: str, source: str) -> UploadedPart:
    if not isinstance(value, dict):
        raise InvalidInputError(source, field, value, "must be an object with number, etag and size")
    where = f"{source} {field}"
    return UploadedPart(_field(value, "number", int, where), _field(value, "etag", str, where),
                        _field(value, "size", int, where))


def _hex(text: str, source: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError as error:
        raise InvalidInputError(source, "digest_state", text[:40], "must be hex") from error
