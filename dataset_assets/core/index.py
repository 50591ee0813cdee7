"""The random-access index of a shard set: for every sample, where each member's bytes are.

One `_index.json` per shard set (the folder holding its shards) is written into the staging
folder together with the shards, so it is published atomically with them. It is compact JSON:

```json
{"format": "dataset_assets.shard_index", "version": 1,
 "shards": [{"name": "shards-0000.tar", "samples": 6, "bytes": 30720, "sha256": "<hex>",
             "compression": null}],
 "blocks": [],
 "samples": [["seq_000_f0000", 0, [["jpg", 1536, 2048], ["json", 4096, 120]]], ...]}
```
A sample row is `[key, shard, [[extension, offset, size], ...]]` with members in tar order.
Without a 4th element, `offset` is the byte offset of the member's data inside the shard file
(header excluded): `pread(shard, size, offset)` returns exactly the member's bytes. With a 4th
element `block` (shards with `"compression": "zstd"`), the sample lives in zstd block
`blocks[block] = [shard, offset, size]` (the data of a `zstd-block-NNNNNN.tar.zst` member) and
`offset` is relative to the *decompressed* block. Shard names are relative to the index's
folder. Nothing in it is ever unpickled.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from dataset_assets.core import storage
from dataset_assets.core.errors import DatasetAssetsError, InvalidInputError
from dataset_assets.core.paths import escape_reason

INDEX_FILE = "_index.json"
INDEX_FORMAT = "dataset_assets.shard_index"
INDEX_VERSION = 1
SHA256_HEX = re.compile(r"[0-9a-f]{64}")

Member = tuple[str, int, int]


class ShardIndexError(InvalidInputError):
    """An `_index.json` is malformed."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard of a set: its name relative to the set's folder, sample count, size, sha256, codec."""

    name: str
    samples: int
    bytes: int
    sha256: str
    compression: str | None = None


@dataclass(frozen=True)
class Block:
    """A zstd-compressed block: the data of one tar member of shard `shard`."""

    shard: int
    offset: int
    size: int


@dataclass(frozen=True)
class IndexEntry:
    """One sample: its key, shard, members `(extension, offset, size)` and block (None if plain)."""

    key: str
    shard: int
    members: tuple[Member, ...]
    block: int | None = None

    def to_row(self) -> list[object]:
        row: list[object] = [self.key, self.shard, [list(member) for member in self.members]]
        return row if self.block is None else [*row, self.block]


@dataclass(frozen=True)
class ShardIndex:
    """Every sample of a shard set, in shard order then tar order."""

    shards: tuple[ShardInfo, ...] = ()
    entries: tuple[IndexEntry, ...] = ()
    blocks: tuple[Block, ...] = ()

    def __len__(self) -> int:
        return len(self.entries)

    def keys(self) -> list[str]:
        return [entry.key for entry in self.entries]

    def to_json(self) -> bytes:
        """Deterministic compact JSON: equal indexes give equal bytes."""
        document = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "shards": [asdict(shard) for shard in self.shards],
            "blocks": [[block.shard, block.offset, block.size] for block in self.blocks],
            "samples": [entry.to_row() for entry in self.entries],
        }
        return (json.dumps(document, separators=(",", ":"), sort_keys=True) + "\n").encode("utf-8")

    def extend(self, other: ShardIndex) -> ShardIndex:
        """This index followed by `other` (shard and block numbers of `other` shifted past ours)."""
        names = {shard.name for shard in self.shards}
        clashing = sorted(names.intersection(shard.name for shard in other.shards))
        if clashing:
            raise DatasetAssetsError(f"cannot extend the index: shards {clashing} are already in it")
        keys = set(self.keys())
        duplicates = [key for key in other.keys() if key in keys]
        if duplicates:
            raise DatasetAssetsError(f"cannot extend the index: sample keys {duplicates[:5]} are already in it")
        shift, block_shift = len(self.shards), len(self.blocks)
        blocks = tuple(Block(b.shard + shift, b.offset, b.size) for b in other.blocks)
        entries = tuple(
            IndexEntry(e.key, e.shard + shift, e.members, None if e.block is None else e.block + block_shift)
            for e in other.entries
        )
        return ShardIndex(self.shards + other.shards, self.entries + entries, self.blocks + blocks)


def index_path(folder: Path) -> Path:
    return folder / INDEX_FILE


def write_index(folder: Path, index: ShardIndex) -> Path:
    """Atomically write `folder/_index.json`; returns its path."""
    path = index_path(folder)
    storage.write_bytes_atomic(path, index.to_json())
    return path


def read_index(folder: Path) -> ShardIndex:
    """Read and validate `folder/_index.json`; errors name the file, the field and the value."""
    path = index_path(folder)
    try:
        document = json.loads(path.read_bytes())
    except OSError as error:
        raise ShardIndexError(str(path), "(file)", str(path), f"cannot be read ({error.strerror})") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ShardIndexError(str(path), "(document)", str(error), "is not valid JSON") from error
    except RecursionError:  # valid JSON nested deeper than the parser recurses
        raise ShardIndexError(str(path), "(document)", None, "is not valid JSON: nested too deeply") from None
    return parse_index(document, str(path))


def parse_index(document: object, source: str) -> ShardIndex:
    if not isinstance(document, dict):
        raise ShardIndexError(source, "(root)", document, "must be a JSON object")
    if document.get("format") != INDEX_FORMAT or document.get("version") != INDEX_VERSION:
        found = (document.get("format"), document.get("version"))
        raise ShardIndexError(source, "format", found, f"must be {INDEX_FORMAT!r} version {INDEX_VERSION}")
    shards = tuple(_shard(item, source, f"shards[{i}]") for i, item in enumerate(_list(document, "shards", source)))
    first: dict[str, int] = {}
    for number, shard in enumerate(shards):  # readers find a shard by its name
        if first.setdefault(shard.name, number) != number:
            raise ShardIndexError(source, f"shards[{number}].name", shard.name, f"is also shards[{first[shard.name]}]")
    blocks = tuple(
        _block(item, len(shards), source, f"blocks[{i}]") for i, item in enumerate(_list(document, "blocks", source))
    )
    entries = tuple(
        _in_its_block(_entry(row, len(shards), len(blocks), source, f"samples[{i}]"), shards, blocks, source, i)
        for i, row in enumerate(_list(document, "samples", source))
    )
    return ShardIndex(shards, entries, blocks)


def _in_its_block(entry: IndexEntry, shards: Sequence[ShardInfo], blocks: Sequence[Block], source: str,
                  number: int) -> IndexEntry:
    """A row of a zstd shard names one of that shard's blocks, a row of a plain shard none: readers trust it."""
    compressed = shards[entry.shard].compression is not None
    if entry.block is None:
        if not compressed:
            return entry
        problem = f"lies in zstd shard {entry.shard} but names no block"
    elif not compressed:
        problem = f"names block {entry.block}, but shard {entry.shard} is not compressed"
    elif blocks[entry.block].shard != entry.shard:
        problem = f"names block {entry.block} of shard {blocks[entry.block].shard}, not of its shard {entry.shard}"
    else:
        return entry
    raise ShardIndexError(source, f"samples[{number}]", entry.to_row(), problem)


def _list(document: dict, key: str, source: str) -> list:
    value = document.get(key)
    if not isinstance(value, list):
        raise ShardIndexError(source, key, value, "must be a list")
    return value


def _count(value: object, source: str, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ShardIndexError(source, where, value, "must be an integer >= 0")


def _reference(value: object, limit: int, source: str, where: str) -> int:
    number = _count(value, source, where)
    if number >= limit:
        raise ShardIndexError(source, where, value, f"must refer to one of {limit} items")
    return number


def _shard(item: object, source: str, where: str) -> ShardInfo:
    if not isinstance(item, dict):
        raise ShardIndexError(source, where, item, "must be an object")
    name = item.get("name")
    reason = escape_reason(name) if isinstance(name, str) else "must be a string"
    if reason is not None:
        raise ShardIndexError(source, f"{where}.name", name,
                              f"must be a relative shard path inside the index folder: {reason}")
    sha256 = item.get("sha256")
    if not isinstance(sha256, str) or SHA256_HEX.fullmatch(sha256) is None:
        raise ShardIndexError(source, f"{where}.sha256", sha256, "must be a 64-character hex digest")
    compression = item.get("compression")
    if compression not in (None, "zstd"):
        raise ShardIndexError(source, f"{where}.compression", compression, "must be null or 'zstd'")
    samples = _count(item.get("samples"), source, f"{where}.samples")
    return ShardInfo(name, samples, _count(item.get("bytes"), source, f"{where}.bytes"), sha256, compression)


def _block(item: object, shards: int, source: str, where: str) -> Block:
    if not isinstance(item, list) or len(item) != 3:
        raise ShardIndexError(source, where, item, "must be [shard, offset, size]")
    return Block(
        _reference(item[0], shards, source, f"{where}[0]"),
        _count(item[1], source, f"{where}[1]"),
        _count(item[2], source, f"{where}[2]"),
    )


def _member(item: object, source: str, where: str) -> Member:
    """An extension is read lowercased, as webdataset and every shard reader read it from the member's name."""
    if not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], str):
        raise ShardIndexError(source, where, item, "must be [extension, offset, size]")
    return item[0].lower(), _count(item[1], source, f"{where}[1]"), _count(item[2], source, f"{where}[2]")


def _entry(row: object, shards: int, blocks: int, source: str, where: str) -> IndexEntry:
    if not isinstance(row, list) or len(row) not in (3, 4) or not isinstance(row[0], str) or not row[0]:
        raise ShardIndexError(source, where, row, "must be [key, shard, members] or [key, shard, members, block]")
    if not isinstance(row[2], list) or not row[2]:
        raise ShardIndexError(source, f"{where}[2]", row[2], "must be a non-empty list of members")
    members = tuple(_member(item, source, f"{where}[2][{i}]") for i, item in enumerate(row[2]))
    extensions = [extension for extension, _, _ in members]
    twice = sorted({extension for extension in extensions if extensions.count(extension) > 1})
    if twice:
        raise ShardIndexError(source, f"{where}[2]", row[2], f"names member {twice[0]!r} twice")
    block = _reference(row[3], blocks, source, f"{where}[3]") if len(row) == 4 else None
    return IndexEntry(row[0], _reference(row[1], shards, source, f"{where}[1]"), members, block)


def member_span(members: Sequence[Member]) -> tuple[int, int]:
    """(start, end) of the byte range covering every member: one read fetches the whole sample."""
    return min(offset for _, offset, _ in members), max(offset + size for _, offset, size in members)


def slice_members(data: bytes | memoryview, start: int, members: Sequence[Member]) -> dict[str, bytes]:
    """The members of one sample, cut out of `data` (which begins at byte `start`)."""
    view = memoryview(data)
    return {extension: bytes(view[offset - start: offset - start + size]) for extension, offset, size in members}
