from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataset_assets.core.errors import DatasetAssetsError
from dataset_assets.core.index import (
    INDEX_FILE,
    Block,
    IndexEntry,
    ShardIndex,
    ShardIndexError,
    ShardInfo,
    parse_index,
    read_index,
    write_index,
)

SHA = "ab" * 32
PLAIN = ShardIndex(
    shards=(ShardInfo("shards-0000.tar", 2, 10240, SHA),),
    entries=(IndexEntry("k0", 0, (("jpg", 512, 100), ("json", 1536, 7))), IndexEntry("k1", 0, (("jpg", 2560, 5),))),
)
BLOCKED = ShardIndex(
    shards=(ShardInfo("shards-0001.tar", 1, 10240, SHA, "zstd"),),
    entries=(IndexEntry("b0", 0, (("txt", 512, 3),), block=0),),
    blocks=(Block(0, 512, 90),),
)


def test_index_round_trips_through_compact_deterministic_json(tmp_path: Path) -> None:
    path = write_index(tmp_path, PLAIN.extend(BLOCKED))

    assert path == tmp_path / INDEX_FILE
    assert read_index(tmp_path) == PLAIN.extend(BLOCKED)
    document = json.loads(path.read_bytes())
    assert document["samples"] == [["k0", 0, [["jpg", 512, 100], ["json", 1536, 7]]], ["k1", 0, [["jpg", 2560, 5]]],
                                   ["b0", 1, [["txt", 512, 3]], 0]]
    assert document["blocks"] == [[1, 512, 90]]
    assert b" " not in path.read_bytes() and path.read_bytes() == PLAIN.extend(BLOCKED).to_json()


def test_extend_shifts_shard_and_block_numbers() -> None:
    combined = BLOCKED.extend(ShardIndex((ShardInfo("shards-0002.tar", 1, 10240, SHA, "zstd"),),
                                         (IndexEntry("b1", 0, (("txt", 0, 3),), block=0),), (Block(0, 512, 80),)))

    assert combined.entries[1] == IndexEntry("b1", 1, (("txt", 0, 3),), block=1)
    assert combined.blocks[1] == Block(1, 512, 80)


@pytest.mark.parametrize("other", [PLAIN, ShardIndex((ShardInfo("other.tar", 1, 1, SHA),), PLAIN.entries[:1])])
def test_extend_refuses_shards_or_keys_already_indexed(other: ShardIndex) -> None:
    with pytest.raises(DatasetAssetsError, match="already in it"):
        PLAIN.extend(other)


def _document(**changes: object) -> dict[str, object]:
    document = json.loads(BLOCKED.to_json())
    document.update(changes)
    return document


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (["not", "an", "object"], "(root)"),
        (_document(version=2), "format"),
        (_document(shards={}), "shards"),
        (_document(shards=[{"name": "../x.tar", "samples": 1, "bytes": 1, "sha256": SHA}]), "shards[0].name"),
        (_document(shards=[{"name": "C:x.tar", "samples": 1, "bytes": 1, "sha256": SHA}]), "shards[0].name"),
        (_document(shards=[{"name": "a\\..\\..\\x.tar", "samples": 1, "bytes": 1, "sha256": SHA}]), "shards[0].name"),
        (_document(shards=[{"name": 7, "samples": 1, "bytes": 1, "sha256": SHA}]), "shards[0].name"),
        (_document(shards=[{"name": "x.tar", "samples": 1, "bytes": -1, "sha256": SHA}]), "shards[0].bytes"),
        (_document(shards=[{"name": "x.tar", "samples": 1, "bytes": 1, "sha256": "zz"}]), "shards[0].sha256"),
        (_document(shards=[{"name": "x.tar", "samples": 1, "bytes": 1, "sha256": "g" * 64}]), "shards[0].sha256"),
        (_document(blocks=[[3, 0, 1]]), "blocks[0][0]"),
        (_document(samples=[["b0", 0, [["txt", 512, 3]], 7]]), "samples[0][3]"),
        (_document(samples=[["b0", 5, [["txt", 512, 3]]]]), "samples[0][1]"),
        (_document(samples=[["b0", 0, []]]), "samples[0][2]"),
        (_document(samples=[["b0", 0, [["txt", "512", 3]]]]), "samples[0][2][0][1]"),
    ],
)
def test_malformed_index_names_file_field_and_value(document: object, field: str) -> None:
    with pytest.raises(ShardIndexError) as caught:
        parse_index(document, "set/_index.json")

    assert caught.value.field == field
    assert str(caught.value).startswith(f"set/_index.json: field '{field}'")


def test_a_shard_listed_twice_is_refused() -> None:
    """Readers find a shard by name: with two rows of one name, the rows of one of them could not be reached
    (the map-style dataset read one shard's samples at the other's offsets, or dropped them)."""
    shard = {"name": "shards-0000.tar", "samples": 1, "bytes": 10240, "sha256": SHA, "compression": None}
    document = _document(shards=[shard, shard], blocks=[], samples=[["k0", 0, [["txt", 512, 3]]],
                                                                    ["k1", 1, [["txt", 512, 3]]]])

    with pytest.raises(ShardIndexError) as caught:
        parse_index(document, "set/_index.json")

    assert caught.value.field == "shards[1].name" and "is also shards[0]" in str(caught.value)


@pytest.mark.parametrize(("row", "problem"), [
    (["b0", 1, [["txt", 512, 3]]], "lies in zstd shard 1 but names no block"),
    (["k0", 0, [["txt", 512, 3]], 0], "names block 0, but shard 0 is not compressed"),
    (["b0", 2, [["txt", 512, 3]], 0], "names block 0 of shard 1, not of its shard 2"),
])
def test_a_sample_row_whose_block_does_not_fit_its_shard_is_refused(row: list[object], problem: str) -> None:
    """A reader of a row trusts its block: without the right one it returns compressed bytes, or bytes
    of another shard, as the sample's members."""
    shards = [{"name": f"shards-000{n}.tar", "samples": 1, "bytes": 10240, "sha256": SHA, "compression": codec}
              for n, codec in enumerate([None, "zstd", "zstd"])]

    with pytest.raises(ShardIndexError) as caught:
        parse_index(_document(shards=shards, blocks=[[1, 512, 90], [2, 512, 90]], samples=[row]), "set/_index.json")

    assert caught.value.field == "samples[0]" and problem in str(caught.value)


def test_unreadable_index_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ShardIndexError, match=r"_index\.json: field '\(file\)'"):
        read_index(tmp_path)
    (tmp_path / INDEX_FILE).write_text("{not json")
    with pytest.raises(ShardIndexError, match=r"_index\.json: field '\(document\)'"):
        read_index(tmp_path)


def test_an_index_nested_too_deeply_names_the_file_not_a_recursion_error(tmp_path: Path) -> None:
    """An `_index.json` comes with the shards it describes, so from wherever they were fetched."""
    (tmp_path / INDEX_FILE).write_text('{"shards": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ShardIndexError, match=r"_index\.json: field '\(document\)' is not valid JSON: nested too"):
        read_index(tmp_path)


@pytest.mark.parametrize("extensions", [["jpg", "JPG"], ["jpg", "jpg"]])
def test_a_sample_row_naming_one_member_twice_is_refused(extensions: list[str]) -> None:
    """Extensions are read lowercased, as webdataset reads them: `JPG` beside `jpg` is one member twice,
    of which a reader would silently return one."""
    shard = {"name": "shards-0000.tar", "samples": 1, "bytes": 10240, "sha256": SHA, "compression": None}
    members = [[extension, 512 + 1024 * n, 3] for n, extension in enumerate(extensions)]

    with pytest.raises(ShardIndexError) as caught:
        parse_index(_document(shards=[shard], blocks=[], samples=[["k0", 0, members]]), "set/_index.json")

    assert caught.value.field == "samples[0][2]" and "names member 'jpg' twice" in str(caught.value)
