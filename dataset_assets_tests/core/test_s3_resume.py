"""The upload record read back from a bucket: every field checked, errors naming the field and value."""
from __future__ import annotations

import json

import pytest

from dataset_assets.core.errors import InvalidInputError
from dataset_assets.core.s3_resume import UploadedPart, UploadRecord

RECORD = UploadRecord("upload-1", "a" * 40, '"etag-1"', 12_000_000, 5 << 20,
                      (UploadedPart(1, '"p1"', 5 << 20), UploadedPart(2, '"p2"', 5 << 20)), bytes(range(60)))


def spoiled(**changes: object) -> bytes:
    fields = json.loads(RECORD.to_json())
    fields.update(changes)
    return json.dumps(fields).encode()


def test_a_record_reads_back_as_written() -> None:
    parsed = UploadRecord.parse(RECORD.to_json(), "s3://b/k.upload.json")
    assert parsed == RECORD and parsed.held == 10 << 20


def test_absent_optional_fields_read_as_none() -> None:
    parsed = UploadRecord.parse(spoiled(sha1=None, validator=None, total=None), "record")
    assert (parsed.sha1, parsed.validator, parsed.total) == (None, None, None)


@pytest.mark.parametrize(("data", "message"), [
    (b"{not json", r"s3://b/k.upload.json: field '\(document\)' is not JSON"),
    (b"[]", r"field '\(document\)' must be a JSON object \(got 'list'\)"),
    (spoiled(version=2), r"field 'version' must be 1 \(got 2\)"),
    (spoiled(upload_id=7), r"field 'upload_id' must be a string \(got 7\)"),
    (spoiled(part_size=-1), r"field 'part_size' must not be negative \(got -1\)"),
    (spoiled(total=True), r"field 'total' must be an integer \(got True\)"),
    (spoiled(digest_state="zz"), r"field 'digest_state' must be hex \(got 'zz'\)"),
    (spoiled(parts=[]), r"field 'parts' must number the parts 1, 2, 3, ... without a gap \(got \[\]\)"),
    (spoiled(parts=[{"number": 1, "etag": "x", "size": 5}, {"number": 3, "etag": "y", "size": 5}]),
     r"field 'parts' must number the parts 1, 2, 3, ... without a gap \(got \[1, 3\]\)"),
    (spoiled(parts=[{"number": 1, "etag": "x"}]),
     r"k.upload.json parts\[0\]: field 'size' must be an integer \(got None\)"),
    (spoiled(parts=["x"]), r"field 'parts\[0\]' must be an object with number, etag and size"),
])
def test_a_bad_record_is_refused_naming_the_field_and_value(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        UploadRecord.parse(data, "s3://b/k.upload.json")
