"""URL manifest parsing: the exact ATEK shape, names that cannot escape, expiry from signed URLs."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from dataset_assets.core.errors import ManifestError
from dataset_assets.core.manifest import MAX_MANIFEST_BYTES, expiry_from_url, load_manifest_file, parse_manifest

SHA1 = "a" * 40


def atek(entries: dict) -> dict:
    return {"atek_data_for_all_configs": {"cubercnn": {"wds_file_urls": entries}}}


def test_parses_atek_shape_and_maps_tar_key_to_filename() -> None:
    data = atek({"seq_b": {"shards-0001_tar": {"download_url": "https://h/b1", "sha1sum": SHA1,
                                               "file_size_bytes": 10},
                           "shards-0000_tar": {"download_url": "https://h/b0"}},
                 "seq_a": {"shards-0000_tar": {"filename": "shards-0000.tar", "download_url": "https://h/a0"}}})
    manifest = parse_manifest(data, "m.json")
    assert manifest.sequences("cubercnn") == ["seq_a", "seq_b"]
    entries = manifest.entries("cubercnn", "seq_b")
    assert [e.filename for e in entries] == ["shards-0000.tar", "shards-0001.tar"]
    assert entries[1].sha1 == SHA1 and entries[1].size == 10
    assert entries[0].sha1 is None and entries[0].size is None
    assert entries[1].relative_path == "seq_b/shards-0001.tar"


def test_optional_fields_given_as_null_count_as_absent() -> None:
    data = atek({"s": {"shards-0000_tar": {"download_url": "https://h/x", "filename": None, "sha1sum": None,
                                           "file_size_bytes": None}}})

    [entry] = parse_manifest(data, "m.json").entries("cubercnn", "s")

    assert (entry.filename, entry.sha1, entry.size) == ("shards-0000.tar", None, None)


@pytest.mark.parametrize(
    ("data", "field", "value"),
    [
        ({}, "atek_data_for_all_configs", "None"),
        ({"atek_data_for_all_configs": []}, "atek_data_for_all_configs", "[]"),
        (atek({"s": {"shards-0000_tar": {"sha1sum": SHA1}}}),
         "atek_data_for_all_configs.cubercnn.wds_file_urls.s.shards-0000_tar.download_url", "None"),
        (atek({"s": {"shards-0000_tar": {"download_url": 7}}}),
         "atek_data_for_all_configs.cubercnn.wds_file_urls.s.shards-0000_tar.download_url", "7"),
        (atek({"s": {"shards-0000_tar": {"download_url": "https://h/x", "file_size_bytes": "10"}}}),
         "atek_data_for_all_configs.cubercnn.wds_file_urls.s.shards-0000_tar.file_size_bytes", "'10'"),
        (atek({"s": {"shards-0000_tar": {"download_url": "https://h/x", "sha1sum": "xyz"}}}),
         "atek_data_for_all_configs.cubercnn.wds_file_urls.s.shards-0000_tar.sha1sum", "'xyz'"),
        (atek({"../etc": {}}), "atek_data_for_all_configs.cubercnn.wds_file_urls.../etc", "'../etc'"),
        (atek({"a/b": {}}), "atek_data_for_all_configs.cubercnn.wds_file_urls.a/b", "'a/b'"),
        (atek({"s": {"k": {"download_url": "https://h/x", "filename": "../../x.tar"}}}),
         "atek_data_for_all_configs.cubercnn.wds_file_urls.s.k.filename", "'../../x.tar'"),
        (atek({"s": {"k": {"download_url": "file:///etc/passwd"}}}),
         "atek_data_for_all_configs.cubercnn.wds_file_urls.s.k.download_url", "'file:///etc/passwd'"),
    ],
)
def test_malformed_manifest_error_names_source_field_and_value(data: dict, field: str, value: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(data, "published.json")
    message = str(caught.value)
    assert message.startswith("published.json: ")
    assert f"field '{field}'" in message
    assert f"(got {value})" in message


@pytest.mark.parametrize("url", ["https://[::1/x", "http://h:abc/x", "http://h:99999/x", "https:///x"])
def test_download_url_that_cannot_be_requested_is_refused_naming_the_field(url: str) -> None:
    data = atek({"s": {"k": {"download_url": url}}})
    with pytest.raises(ManifestError, match=r"^m\.json: field 'atek_data_for_all_configs\.cubercnn\.wds_file_urls"
                                            r"\.s\.k\.download_url' must be an http\(s\) URL"):
        parse_manifest(data, "m.json")


def test_unknown_config_is_named_with_available_ones() -> None:
    manifest = parse_manifest(atek({}), "m.json")
    with pytest.raises(ManifestError, match=r"field 'atek_data_for_all_configs.efm'.*available: cubercnn.*got 'efm'"):
        manifest.require_configs(["efm"])


def test_a_manifest_file_over_the_size_limit_is_refused_naming_its_size_and_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(atek({})))
    with path.open("r+b") as handle:
        handle.truncate(MAX_MANIFEST_BYTES + 1)  # a hole: the file takes a few KiB on disk

    with pytest.raises(ManifestError, match=rf"^{path}: field '<file>' is larger than the {MAX_MANIFEST_BYTES}-byte "
                                            rf"limit \(got '{MAX_MANIFEST_BYTES + 1} bytes'\)$"):
        load_manifest_file(path)


def test_invalid_json_file_error_names_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{"atek_data_for_all_configs": {')
    with pytest.raises(ManifestError, match=rf"{path}: field '<root>' is not valid JSON.*line 1 column"):
        load_manifest_file(path)


def test_error_from_url_source_redacts_signed_query() -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest({}, "https://store.example/m.json?Expires=1&Signature=deadbeefdeadbeef")
    assert "deadbeef" not in str(caught.value)
    assert "https://store.example/m.json?<redacted>" in str(caught.value)


def test_error_value_redacts_signed_download_url() -> None:
    data = atek({"s": {"k": {"download_url": "https://h/x?Signature=topsecretvalue", "file_size_bytes": -1}}})
    with pytest.raises(ManifestError) as caught:
        parse_manifest(data, "m.json")
    assert "topsecretvalue" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://h/f?Expires=1700000000&Signature=x", datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)),
        ("https://h/f?X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-Signature=x",
         datetime(2024, 1, 1, 1, 0, tzinfo=timezone.utc)),
        ("https://h/f?oe=6553F100&_nc_sid=1", datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)),
        ("https://h/f?se=2024-01-01T00:00:00Z&sig=x", datetime(2024, 1, 1, tzinfo=timezone.utc)),
        ("https://h/f", None),
        ("https://h/f?Expires=notanumber", None),
        ("https://[::1/f?Expires=1700000000", None),
    ],
)
def test_expiry_is_read_from_signed_query(url: str, expected: datetime | None) -> None:
    assert expiry_from_url(url) == expected


def test_earliest_expiry_across_entries(tmp_path: Path) -> None:
    data = atek({"s": {"a_tar": {"download_url": "https://h/a?Expires=2000000000"},
                       "b_tar": {"download_url": "https://h/b?Expires=1900000000"}}})
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    assert load_manifest_file(path).earliest_expiry() == datetime.fromtimestamp(1900000000, tz=timezone.utc)
