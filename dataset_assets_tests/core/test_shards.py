from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy
import pytest
import webdataset
import zstandard

from dataset_assets.core import shards as shards_module
from dataset_assets.core import storage
from dataset_assets.core.errors import DatasetAssetsError, UnsafeArchiveError
from dataset_assets.core.index import INDEX_FILE, IndexEntry, ShardIndex, ShardInfo, read_index, write_index
from dataset_assets.core.loading import IndexedShardDataset
from dataset_assets.core.shards import (
    APPEND_JOURNAL,
    MAX_STREAMED_MEMBER_BYTES,
    SKIP_READ_BYTES,
    Compression,
    MemberData,
    ShardFiles,
    ShardWriter,
    append_shards,
    count_samples,
    iter_shard_samples,
    iter_stream_samples,
    iter_tar_members,
    iter_tar_samples,
    split_member_name,
    verify_shard_set,
)
from dataset_assets_tests.tar_fixtures import header_with_size_field


def sample(sequence: str, frame: int) -> dict[str, bytes]:
    """Members of varied sizes (one crosses the small-member read path) that compress well."""
    image = bytes([frame % 251]) * (700 + 97 * frame) + os.urandom(64)
    return {"jpg": image, "json": b'{"frame": %d}' % frame, "npy": bytes(range(256)) * (1 + frame % 300)}


def samples_of(sequence: str, frames: int) -> list[tuple[str, dict[str, bytes]]]:
    return [(f"{sequence}_f{frame:04d}", sample(sequence, frame)) for frame in range(frames)]


def write_set(folder: Path, samples: list[tuple[str, dict[str, bytes]]], **options: object) -> ShardWriter:
    with ShardWriter(folder, **options) as writer:  # type: ignore[arg-type]
        for key, members in samples:
            writer.write(key, members)
    write_index(folder, writer.index)
    return writer


def tar_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.tar"))}


def read_all(folder: Path) -> list[tuple[str, dict[str, bytes]]]:
    return [item for path in sorted(folder.glob("*.tar")) for item in iter_tar_samples(path)]


def every_reader(path: Path) -> list[Callable[[], object]]:
    """Reading the shard `path` (alone in its folder) with each reader: the local walk, the header count
    and the stream reader, which must refuse the same damage alike."""
    return [lambda: read_all(path.parent), lambda: count_samples(path),
            lambda: list(iter_stream_samples(io.BytesIO(path.read_bytes()), str(path)))]


SEQUENCE = samples_of("seq_a", 40)
BIG = ("seq_a_big", {"bin": os.urandom(200_000), "json": b"{}"})


@pytest.mark.parametrize("compression", [None, Compression(level=3, block_samples=6)])
def test_same_samples_give_byte_identical_shards_and_index(tmp_path: Path, compression: Compression | None) -> None:
    write_set(tmp_path / "one", SEQUENCE, max_samples=16, compression=compression)
    write_set(tmp_path / "two", SEQUENCE, max_samples=16, compression=compression)

    assert tar_files(tmp_path / "one") == tar_files(tmp_path / "two")
    assert len(tar_files(tmp_path / "one")) == 3
    assert (tmp_path / "one" / INDEX_FILE).read_bytes() == (tmp_path / "two" / INDEX_FILE).read_bytes()


def test_plain_shards_are_the_bytes_tarfile_writes_in_pax_format(tmp_path: Path) -> None:
    write_set(tmp_path, SEQUENCE[:5])
    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for key, members in SEQUENCE[:5]:
            for extension in sorted(members):
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mode, info.uname, info.gname = len(members[extension]), 0o644, "", ""
                tar.addfile(info, io.BytesIO(members[extension]))

    assert (tmp_path / "shards-0000.tar").read_bytes() == expected.getvalue()
    with tarfile.open(tmp_path / "shards-0000.tar") as tar:
        assert {(m.mtime, m.uid, m.gid, m.mode) for m in tar} == {(0, 0, 0, 0o644)}


def test_members_are_written_in_sorted_order_whatever_order_the_sample_gives(tmp_path: Path) -> None:
    members = {"npy": b"1" * 10, "jpg": b"2" * 700, "json": b"{}"}
    write_set(tmp_path / "given", [("k0", members)])
    write_set(tmp_path / "reversed", [("k0", dict(reversed(members.items())))])

    assert tar_files(tmp_path / "given") == tar_files(tmp_path / "reversed")
    with tarfile.open(tmp_path / "given" / "shards-0000.tar") as tar:
        assert tar.getnames() == ["k0.jpg", "k0.json", "k0.npy"]


def test_rolls_to_a_new_shard_by_sample_count_or_bytes(tmp_path: Path) -> None:
    """`max_bytes` is reached, not kept under (as webdataset's `maxsize`): a shard takes samples until it
    holds that many bytes, so it ends past the limit by less than its last sample, and never sooner."""
    limit = 3 * 4096
    by_count = write_set(tmp_path / "count", SEQUENCE[:10], max_samples=4)
    by_bytes = write_set(tmp_path / "bytes", SEQUENCE[:10], max_bytes=limit)

    assert [shard.samples for shard in by_count.shards] == [4, 4, 2]
    assert len(by_bytes.shards) > 1 and sum(shard.samples for shard in by_bytes.shards) == 10
    assert all(shard.bytes == (tmp_path / "bytes" / shard.name).stat().st_size for shard in by_bytes.shards)
    for number in range(len(by_bytes.shards)):
        entries = [entry for entry in by_bytes.index.entries if entry.shard == number]
        starts = [min(offset for _, offset, _ in entry.members) - tarfile.BLOCKSIZE for entry in entries]
        ends = [max(offset + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE for _, offset, size in entry.members)
                for entry in entries]
        assert starts[-1] < limit
        assert number == len(by_bytes.shards) - 1 or ends[-1] >= limit


def test_index_entries_read_back_exactly_the_bytes_webdataset_reads(tmp_path: Path) -> None:
    writer = write_set(tmp_path, [*SEQUENCE, BIG], max_samples=16)
    index = read_index(tmp_path)
    dataset = webdataset.WebDataset(sorted(str(p) for p in tmp_path.glob("*.tar")), shardshuffle=False,
                                    empty_check=False)
    expected = [(item["__key__"], {k: v for k, v in item.items() if not k.startswith("__")}) for item in dataset]

    assert index == writer.index and len(index) == len(expected) == 41
    for entry, (key, members) in zip(index.entries, expected):
        path = tmp_path / index.shards[entry.shard].name
        with open(path, "rb") as handle:
            for extension, offset, size in entry.members:
                handle.seek(offset)
                assert handle.read(size) == members[extension]
        assert entry.key == key and {extension for extension, _, _ in entry.members} == set(members)


def test_zstd_blocks_round_trip_and_are_readable_with_zstd_and_tar(tmp_path: Path) -> None:
    plain = write_set(tmp_path / "plain", SEQUENCE, max_samples=16)
    blocked = write_set(tmp_path / "zstd", SEQUENCE, max_samples=16, compression=Compression(block_samples=6))

    assert read_all(tmp_path / "zstd") == read_all(tmp_path / "plain") == SEQUENCE
    assert sum(s.bytes for s in blocked.shards) < sum(s.bytes for s in plain.shards) / 2
    assert [count_samples(tmp_path / "zstd" / s.name) for s in blocked.shards] == [16, 16, 8]
    with tarfile.open(tmp_path / "zstd" / "shards-0000.tar") as outer:
        assert outer.getnames() == ["zstd-block-000000.tar.zst", "zstd-block-000001.tar.zst",
                                    "zstd-block-000002.tar.zst"]
        block = outer.extractfile("zstd-block-000000.tar.zst").read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(zstandard.ZstdDecompressor().decompress(block))) as inner:
        assert inner.getnames()[:3] == ["seq_a_f0000.jpg", "seq_a_f0000.json", "seq_a_f0000.npy"]
        assert len(inner.getnames()) == 6 * 3
    files = ShardFiles([str(tmp_path / "zstd" / s.name) for s in blocked.shards])
    index = read_index(tmp_path / "zstd")
    assert [files.read_members(e.shard, e.members, index.blocks[e.block]) for e in index.entries] == [
        members for _, members in SEQUENCE]


@pytest.mark.parametrize("where", ["body", "frame header"])
def test_corrupt_zstd_block_names_the_shard_and_block(tmp_path: Path, where: str) -> None:
    write_set(tmp_path, SEQUENCE[:6], compression=Compression(block_samples=6))
    shard = tmp_path / "shards-0000.tar"
    block = read_index(tmp_path).blocks[0]
    data = bytearray(shard.read_bytes())
    data[block.offset + (block.size // 2 if where == "body" else 0)] ^= 0xFF
    shard.write_bytes(bytes(data))

    with pytest.raises(DatasetAssetsError, match=r"shards-0000\.tar:zstd-block-000000\.tar\.zst: corrupt zstd block"):
        read_all(tmp_path)
    assert verify_shard_set(tmp_path).problems


def test_sample_keys_that_would_escape_or_clash_are_refused(tmp_path: Path) -> None:
    with ShardWriter(tmp_path) as writer:
        for key in ("", "a.b", "/abs", "../up", "x/../y", "C:drive", "\\\\host\\share", "zstd-block-000001"):
            with pytest.raises(DatasetAssetsError, match="invalid sample key"):
                writer.write(key, {"txt": b"x"})
        with pytest.raises(DatasetAssetsError, match="invalid member extension"):
            writer.write("ok", {"a/b": b"x"})


@pytest.mark.parametrize(("key", "extension"), [
    ("seq_a_f0000", "a\\..\\..\\evil"), ("seq_a_f0000", "a\\.."), ("seq_a_f0000", "a\0b"), ("seq_a\0f0000", "json")])
def test_a_member_name_the_readers_would_refuse_or_cut_short_is_refused_when_written(
        tmp_path: Path, key: str, extension: str) -> None:
    """A backslash is a separator to the readers (`..` behind it escapes), and a tar name ends at its
    first NUL: such a sample would be unreadable, or read back under another key or extension."""
    with ShardWriter(tmp_path) as writer:
        with pytest.raises(DatasetAssetsError, match="invalid (sample key|member extension)"):
            writer.write(key, {extension: b"x"})
        writer.write("seq_a_f0001", {"json": b"{}"})

    assert read_all(tmp_path) == [("seq_a_f0001", {"json": b"{}"})]


@pytest.mark.parametrize(("key", "extension", "problem"), [
    ("seq_a_f0000", "JPG", r"member extension 'JPG' has capitals: webdataset reads it as 'jpg'"),
    ("seq_a_f0000", "seg.Npy", r"member extension 'seg.Npy' has capitals: webdataset reads it as 'seg.npy'"),
    ("seq_a/", "json", r"invalid sample key 'seq_a/': its last part is empty"),
])
def test_a_member_name_webdataset_would_read_differently_is_refused_when_written(
        tmp_path: Path, key: str, extension: str, problem: str) -> None:
    """webdataset lowercases extensions, and a key ending in `/` gives a hidden file `seq_a/.json`."""
    with ShardWriter(tmp_path) as writer:
        with pytest.raises(DatasetAssetsError, match=problem):
            writer.write(key, {extension: b"1", "txt": b"2"})
        writer.write("seq_a_f0001", {"json": b"{}"})
    write_index(tmp_path, writer.index)

    read = webdataset.WebDataset(str(tmp_path / "shards-0000.tar"), shardshuffle=False, empty_check=False)
    assert [sample["__key__"] for sample in read] == read_index(tmp_path).keys() == ["seq_a_f0001"]


def test_a_key_written_twice_is_refused_so_every_index_row_is_a_sample_webdataset_reads(tmp_path: Path) -> None:
    """webdataset (and our readers) merge consecutive members of one key into one sample: a second
    `write` of a key would leave two index rows for what readers see as one sample."""
    with ShardWriter(tmp_path) as writer:
        writer.write("seq_a_f0000", {"jpg": b"first"})
        with pytest.raises(DatasetAssetsError, match=r"sample key 'seq_a_f0000' was already written"):
            writer.write("seq_a_f0000", {"json": b"{}"})
        writer.write("seq_a_f0001", {"json": b"{}"})
    write_index(tmp_path, writer.index)

    shard = str(tmp_path / "shards-0000.tar")
    read = [s["__key__"] for s in webdataset.WebDataset(shard, shardshuffle=False, empty_check=False)]
    assert read == read_index(tmp_path).keys() == ["seq_a_f0000", "seq_a_f0001"]
    assert verify_shard_set(tmp_path).problems == ()


def crafted_tar(path: Path, member: tarfile.TarInfo, tar_format: int = tarfile.PAX_FORMAT) -> Path:
    with tarfile.open(path, "w", format=tar_format) as tar:
        tar.addfile(_regular("seq_a_f0000.json", b"{}"), io.BytesIO(b"{}"))
        tar.addfile(member, io.BytesIO(b"evil") if member.isreg() else None)
    return path


def _regular(name: str, data: bytes = b"evil") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


CRAFTED: dict[str, tuple[Callable[[], tarfile.TarInfo], int, str]] = {
    "dotdot": (lambda: _regular("../evil.json"), tarfile.PAX_FORMAT, "'..' would escape"),
    "nested dotdot": (lambda: _regular("seq/../../evil.json"), tarfile.PAX_FORMAT, "'..' would escape"),
    "absolute": (lambda: _regular("/etc/cron.d/evil"), tarfile.PAX_FORMAT, "absolute paths"),
    "pax long dotdot": (lambda: _regular("../" + "a" * 120 + ".json"), tarfile.PAX_FORMAT, "'..' would escape"),
    "gnu long absolute": (lambda: _regular("/" + "b" * 120 + ".json"), tarfile.GNU_FORMAT, "absolute paths"),
    "symlink": (lambda: _special("seq_a_f0001.json", tarfile.SYMTYPE, "/etc/passwd"), tarfile.PAX_FORMAT, "symlink"),
    "hard link": (lambda: _special("seq_a_f0001.json", tarfile.LNKTYPE, "/etc/passwd"), tarfile.PAX_FORMAT,
                  "hard link"),
    "gnu long symlink": (lambda: _special("seq_a_f0001.json", tarfile.SYMTYPE, "/" + "c" * 120), tarfile.GNU_FORMAT,
                         "symlink"),
    "gnu long hard link": (lambda: _special("seq_a_f0001.json", tarfile.LNKTYPE, "/" + "c" * 120),
                           tarfile.GNU_FORMAT, "hard link"),
    "char device": (lambda: _special("seq_a_f0001.tty", tarfile.CHRTYPE), tarfile.PAX_FORMAT, "device"),
    "block device": (lambda: _special("seq_a_f0001.sda", tarfile.BLKTYPE), tarfile.PAX_FORMAT, "device"),
    "fifo": (lambda: _special("seq_a_f0001.fifo", tarfile.FIFOTYPE), tarfile.PAX_FORMAT, "device or special"),
    "directory": (lambda: _special("seq_a_f0001", tarfile.DIRTYPE), tarfile.PAX_FORMAT, "directory"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_tar_members_are_rejected_with_archive_member_and_reason(tmp_path: Path, case: str) -> None:
    make, tar_format, reason = CRAFTED[case]
    member = make()
    path = crafted_tar(tmp_path / "crafted.tar", member, tar_format)

    for read in every_reader(path):
        with pytest.raises(UnsafeArchiveError) as caught:
            read()
        assert caught.value.archive == str(path) and caught.value.member.rstrip("/") == member.name
        assert reason in str(caught.value)


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            tar.addfile(_regular(name, data), io.BytesIO(data))
    return buffer.getvalue()


def test_a_zstd_block_inside_a_block_is_refused_by_the_local_and_the_stream_reader(tmp_path: Path) -> None:
    inner = zstandard.ZstdCompressor(write_content_size=True).compress(_tar_bytes([("seq_a_f0000.json", b"{}")]))
    outer = zstandard.ZstdCompressor(write_content_size=True).compress(
        _tar_bytes([("seq_a_f0001.json", b"{}"), ("zstd-block-000001.tar.zst", inner)]))
    path = tmp_path / "nested.tar"
    path.write_bytes(_tar_bytes([("zstd-block-000000.tar.zst", outer)]))

    with pytest.raises(UnsafeArchiveError, match="nested zstd blocks are not allowed") as mapped:
        list(iter_tar_samples(path))
    with open(path, "rb") as stream, pytest.raises(UnsafeArchiveError, match="nested zstd blocks") as streamed:
        list(iter_stream_samples(stream, str(path)))
    with pytest.raises(UnsafeArchiveError, match="nested zstd blocks are not allowed") as counted:
        count_samples(path)
    for caught in (mapped, streamed, counted):
        assert caught.value.archive == f"{path}:zstd-block-000000.tar.zst"
        assert caught.value.member == "zstd-block-000001.tar.zst"


def test_samples_before_between_and_after_zstd_blocks_come_out_in_order_from_every_reader(tmp_path: Path) -> None:
    """A block's samples stand apart from the members around it, even of the same key, and keep their place."""
    compress = zstandard.ZstdCompressor(write_content_size=True).compress
    first = compress(_tar_bytes([("seq_a_f0001.json", b"1"), ("seq_a_f0002.json", b"2")]))
    second = compress(_tar_bytes([("seq_a_f0004.json", b"4")]))
    shard = tmp_path / "shards-0000.tar"
    data = _tar_bytes([("seq_a_f0000.jpg", b"0j"), ("seq_a_f0000.json", b"0"), ("zstd-block-000000.tar.zst", first),
                       ("zstd-block-000001.tar.zst", second), ("seq_a_f0004.jpg", b"4j")])

    outcomes = reader_outcomes(shard, data)

    expected = [("seq_a_f0000", {"jpg": b"0j", "json": b"0"}), ("seq_a_f0001", {"json": b"1"}),
                ("seq_a_f0002", {"json": b"2"}), ("seq_a_f0004", {"json": b"4"}), ("seq_a_f0004", {"jpg": b"4j"})]
    readers = ("mapped bytes", "mapped views", "mapped, tagged", "stream")
    assert outcomes == {reader: ("samples", expected) for reader in readers}
    assert count_samples(shard) == len(expected)


@pytest.mark.parametrize("extra", ["second frame", "garbage"])
def test_a_zstd_block_with_bytes_after_its_frame_is_refused_not_cut_short(tmp_path: Path, extra: str) -> None:
    """A block is one frame: what follows it (a second frame of samples, damage) must not be dropped silently."""
    compress = zstandard.ZstdCompressor(write_checksum=True).compress
    frame = compress(_tar_bytes([("seq_a_f0000.json", b"{}")]))
    tail = compress(_tar_bytes([("seq_a_f0001.json", b"{}")])) if extra == "second frame" else b"garbage"
    shard = tmp_path / "shards-0000.tar"

    outcomes = reader_outcomes(shard, _tar_bytes([("zstd-block-000000.tar.zst", frame + tail)]))

    assert set(map(repr, outcomes.values())) == {repr((
        "DatasetAssetsError", f"{shard}:zstd-block-000000.tar.zst: corrupt zstd block "
                              f"(compressed input contains {len(tail)} bytes of unused data, which is disallowed)"))}
    with pytest.raises(DatasetAssetsError, match="corrupt zstd block"):
        count_samples(shard)


@pytest.mark.parametrize("size_field", [b"-0000001000\0", b"+0000000010\0", b"1_000\0\0\0\0\0\0\0",
                                        b"0000000001x\0", b"\xff" + b"\xff" * 10 + b"\xfe"])
def test_a_size_field_that_is_not_plain_octal_is_refused_by_every_reader(tmp_path: Path, size_field: bytes) -> None:
    path = tmp_path / "shards-0000.tar"
    path.write_bytes(header_with_size_field("seq_a_f0000.json", size_field) + b"{}".ljust(1024, b"\0")
                     + b"\0" * 1024)

    for read in every_reader(path):
        with pytest.raises(DatasetAssetsError, match=r"shards-0000\.tar: invalid tar header at byte 0 \("
                           r"(size field .* is not an octal number|negative size -\d+)\)"):
            read()


def test_a_streamed_member_declaring_more_than_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    huge = b"\x80" + (MAX_STREAMED_MEMBER_BYTES + 1).to_bytes(11, "big")  # GNU base-256
    data = header_with_size_field("seq_a_f0000.bin", huge) + b"x" * 4096

    with pytest.raises(DatasetAssetsError, match=rf"member 'seq_a_f0000\.bin' declares {MAX_STREAMED_MEMBER_BYTES + 1}"
                       r" bytes, more than the \d+ a streamed member may hold"):
        list(iter_stream_samples(io.BytesIO(data), "remote.tar"))


def test_a_pax_size_in_non_ascii_digits_is_refused(tmp_path: Path) -> None:
    member = _regular("seq_a_f0000.json", b"{}")
    member.pax_headers = {"size": "\u0662"}  # ARABIC-INDIC DIGIT TWO: str.isdigit() and int() take it
    crafted_tar(tmp_path / "shards-0000.tar", member)

    with pytest.raises(DatasetAssetsError, match=r"pax size '\u0662' is not a number >= 0"):
        read_all(tmp_path)


@pytest.mark.timeout(20)  # each of these once looped forever
@pytest.mark.parametrize("record", [b"xx comment=abc\n", b"15_comment=abc\n", b"99 comment=abc\n",
                                    b"15 comment=abc\0", b"03 comment=abc\n"])
def test_a_malformed_pax_record_is_refused_by_every_reader(tmp_path: Path, record: bytes) -> None:
    member = _regular("seq_a_f0000.json", b"{}")
    member.pax_headers = {"comment": "abc"}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(member, io.BytesIO(b"{}"))
    assert buffer.getvalue().count(b"15 comment=abc\n") == 1
    path = tmp_path / "shards-0000.tar"
    path.write_bytes(buffer.getvalue().replace(b"15 comment=abc\n", record))

    for read in every_reader(path):
        with pytest.raises(DatasetAssetsError, match=r"shards-0000\.tar: malformed pax header record at byte 0"):
            read()


Outcome = tuple[str, object]


def reader_outcomes(path: Path, data: bytes) -> dict[str, Outcome]:
    """What each reader makes of `data`: its samples as bytes, or the type and text of its error."""
    path.write_bytes(data)
    readers = {
        "mapped bytes": lambda: iter_tar_samples(path),
        "mapped views": lambda: iter_tar_samples(path, views=True),
        "mapped, tagged": lambda: _untagged(str(path)),
        "stream": lambda: iter_stream_samples(io.BytesIO(data), str(path)),
    }
    outcomes: dict[str, Outcome] = {}
    for name, read in readers.items():
        try:
            outcomes[name] = ("samples", [(key, {ext: bytes(value) for ext, value in sample.items()})
                                          for key, sample in read()])
        except DatasetAssetsError as error:
            outcomes[name] = (type(error).__name__, _comparable(str(error)))
    return outcomes


def _untagged(shard: str) -> Iterator[tuple[str, dict[str, MemberData]]]:
    """`iter_shard_samples(shard)` without the tag it puts first, which must be `shard`."""
    for tag, key, sample in iter_shard_samples(shard):
        assert tag is shard
        yield key, sample


def _comparable(message: str) -> str:
    """An error message without what only one kind of reader can say of a member past the end: the
    stream reader does not know how many bytes are left, and refuses a member over 1 GiB up front,
    which in these small tars is past the end."""
    if "truncated tar archive" in message:
        return message.partition(" (")[0]
    if "a streamed member may hold" in message:
        return f"{message.partition(': ')[0]}: truncated tar archive"
    return message


def _header_spans(data: bytes) -> list[int]:
    """Offsets of every header and extended-header byte of a tar (what lies before each member's data)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [offset for member in tar for offset in range(member.offset, member.offset_data)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_every_reader_answers_damaged_headers_with_a_named_error_or_the_samples(
        tmp_path: Path, tar_format: int) -> None:
    """Seeded mutations of header bytes (long names, pax records): each reader either reads the tar or
    raises `DatasetAssetsError`; no other exception, no endless loop (the timeout fails the test)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
        for number in range(3):
            member = _regular(f"{'d' * 120}/seq_a_f{number:04d}.json" if number else f"seq_a_f{number:04d}.json",
                              b"{}" * number * 100)
            if tar_format == tarfile.PAX_FORMAT:
                member.pax_headers = {"comment": f"frame {number}"}
            tar.addfile(member, io.BytesIO(b"{}" * number * 100))
    original = buffer.getvalue()
    spans = _header_spans(original)
    rng = random.Random(tar_format)
    for _ in range(300):
        damaged = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.choice(spans)] = rng.choice([rng.randrange(256), 0, 0x20, 0x0A, ord("0"), ord("=")])
        reader_outcomes(tmp_path / "shards-0000.tar", bytes(damaged))  # any other exception fails the test


def test_truncated_tar_and_bad_header_checksum_name_the_file(tmp_path: Path) -> None:
    write_set(tmp_path, SEQUENCE[:3])
    shard = tmp_path / "shards-0000.tar"
    data = shard.read_bytes()
    for cut in (1500, 1636, 2048):  # inside a member, inside the next header, right after it
        shard.write_bytes(data[:cut])
        with pytest.raises(DatasetAssetsError, match=r"shards-0000\.tar: truncated tar archive"):
            read_all(tmp_path)
        with open(shard, "rb") as stream, pytest.raises(DatasetAssetsError, match="truncated tar archive"):
            list(iter_tar_members(stream, str(shard)))
    corrupted = bytearray(data)
    corrupted[3] ^= 0x01  # inside the first member's name
    shard.write_bytes(bytes(corrupted))
    with pytest.raises(DatasetAssetsError, match=r"shards-0000\.tar: invalid tar header at byte 0 \(checksum"):
        read_all(tmp_path)


def test_counting_a_shard_cut_inside_a_member_fails_like_reading_it(tmp_path: Path) -> None:
    """Counting seeks over member data; a seek past the end of the file must not pass for a whole member."""
    write_set(tmp_path, [BIG])
    shard = tmp_path / "shards-0000.tar"
    shard.write_bytes(shard.read_bytes()[:100_000])  # inside the 200 kB member

    with pytest.raises(DatasetAssetsError, match=r"shards-0000\.tar: truncated tar archive \(member 'seq_a_big\.bin'"):
        count_samples(shard)
    with open(shard, "rb") as stream, pytest.raises(DatasetAssetsError, match="truncated tar archive"):
        list(iter_tar_members(stream, str(shard), read_data=False))
    with pytest.raises(DatasetAssetsError, match="truncated tar archive"):
        read_all(tmp_path)


def test_count_samples_groups_members_as_the_readers_do(tmp_path: Path) -> None:
    """A key whose members are not adjacent is two samples to every reader (and to webdataset)."""
    block = zstandard.ZstdCompressor(write_checksum=True).compress(_tar_bytes([("b.json", b"{}"), ("c.json", b"{}")]))
    path = tmp_path / "third_party.tar"
    path.write_bytes(_tar_bytes([("a.txt", b"1"), ("b.txt", b"2"), ("a.json", b"{}"),
                                 ("zstd-block-000000.tar.zst", block), ("c.txt", b"3")]))

    read = [key for key, _ in iter_tar_samples(path)]

    assert read == ["a", "b", "a", "b", "c", "c"]
    assert count_samples(path) == len(read)


def test_a_full_disk_while_writing_names_the_shard(tmp_path: Path) -> None:
    """/dev/full answers every write with ENOSPC: a real full device, reached through a symlink."""
    (tmp_path / "shards-0000.tar").symlink_to("/dev/full")
    with pytest.raises(DatasetAssetsError, match=r"shards-0000\.tar: cannot write shard \(No space left on device\)"):
        write_set(tmp_path, [*SEQUENCE, BIG], max_samples=100)


@pytest.mark.parametrize("compression", [None, Compression(block_samples=4)], ids=["plain", "zstd"])
def test_views_are_read_only_and_equal_to_the_bytes_webdataset_reads(
    tmp_path: Path, compression: Compression | None
) -> None:
    write_set(tmp_path, [*SEQUENCE, BIG], max_samples=16, compression=compression)
    views = [item for path in sorted(tmp_path.glob("*.tar")) for item in iter_tar_samples(path, views=True)]

    assert [key for key, _ in views] == [key for key, _ in [*SEQUENCE, BIG]]
    assert {key: {ext: bytes(data) for ext, data in members.items()} for key, members in views} == dict(
        [*SEQUENCE, BIG])
    assert all(isinstance(data, memoryview) and data.readonly for _, members in views for data in members.values())
    if compression is None:
        plain = [(s["__key__"], s["jpg"]) for s in webdataset.WebDataset(
            [str(path) for path in sorted(tmp_path.glob("*.tar"))], shardshuffle=False, empty_check=False)
            if "jpg" in s]
        assert plain == [(key, bytes(members["jpg"])) for key, members in views if "jpg" in members]


def test_views_outlive_the_iterator_and_a_shard_replaced_by_rename(tmp_path: Path) -> None:
    write_set(tmp_path, SEQUENCE[:3])
    shard = tmp_path / "shards-0000.tar"
    views = list(iter_tar_samples(shard, views=True))
    replacement = tmp_path / "replacement.tar"
    replacement.write_bytes(b"\0" * 1024)
    os.replace(replacement, shard)  # how every writer of ours publishes a shard

    assert [(key, {ext: bytes(data) for ext, data in members.items()}) for key, members in views] == SEQUENCE[:3]
    assert list(iter_tar_samples(shard)) == []


def test_empty_shard_has_no_samples_and_a_missing_one_or_a_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "empty.tar").write_bytes(b"")
    assert list(iter_tar_samples(tmp_path / "empty.tar")) == []
    with pytest.raises(DatasetAssetsError, match=r"missing\.tar: cannot open shard \(No such file or directory\)"):
        list(iter_tar_samples(tmp_path / "missing.tar"))
    (tmp_path / "folder.tar").mkdir()
    with pytest.raises(DatasetAssetsError, match=r"folder\.tar: cannot open shard \(Is a directory\)"):
        list(iter_tar_samples(tmp_path / "folder.tar"))


@pytest.mark.parametrize("tar_format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_reader_agrees_with_tarfile_on_third_party_formats(tmp_path: Path, tar_format: int) -> None:
    names = ["seq/" + "long" * 30 + "/k.jpg", "ü/é.txt", "k2.empty", "k3.bin"]
    path = tmp_path / "third_party.tar"
    with tarfile.open(path, "w", format=tar_format) as tar:
        for number, name in enumerate(names):
            data = os.urandom(number * 700)
            tar.addfile(_regular(name, data), io.BytesIO(data))
        big = os.urandom(2 * SKIP_READ_BYTES + 5)  # skipped in several reads on an unseekable stream
        tar.addfile(_regular("k4.big", big), io.BytesIO(big))
    with tarfile.open(path) as tar, open(path, "rb") as stream:
        expected = [(m.name, m.offset_data, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
        assert [(m.name, m.offset, m.data) for m in iter_tar_members(stream, str(path))] == expected
    unseekable = io.BufferedReader(_Unseekable(path.read_bytes()), 1000)  # like an HTTP body: skips read
    headers_only = [(m.name, m.offset, m.data) for m in iter_tar_members(unseekable, str(path), read_data=False)]
    assert headers_only == [(name, offset, None) for name, offset, _ in expected]


class _Unseekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self._data.readinto(buffer)


def test_appending_a_sequence_extends_the_index_and_leaves_existing_shards_untouched(tmp_path: Path) -> None:
    write_set(tmp_path, SEQUENCE, max_samples=16)
    before = {path.name: (path.read_bytes(), path.stat().st_ino, path.stat().st_mtime_ns)
              for path in tmp_path.glob("*.tar")}
    index_before = read_index(tmp_path)
    added = samples_of("seq_b", 20)

    index = append_shards(tmp_path, iter(added), max_samples=16)

    assert {name: (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns)
            for name, p in ((n, tmp_path / n) for n in before)} == before
    assert index == read_index(tmp_path)
    assert index.shards[:3] == index_before.shards and index.entries[:40] == index_before.entries
    assert [shard.name for shard in index.shards[3:]] == ["shards-0003.tar", "shards-0004.tar"]
    assert read_all(tmp_path) == SEQUENCE + added
    assert verify_shard_set(tmp_path).problems == ()
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".staging")]


@pytest.mark.parametrize(("appended", "key", "where"), [
    (SEQUENCE[2:4], "seq_a_f0002", "the shard set already holds it, in shards-0001.tar"),
    ([SEQUENCE[6], SEQUENCE[5], SEQUENCE[6]], "seq_a_f0006", "it comes twice in the samples being appended"),
], ids=["indexed", "twice"])
def test_append_refusing_a_duplicate_key_names_the_key_the_set_and_where_it_is_and_publishes_nothing(
        tmp_path: Path, appended: list[tuple[str, dict[str, bytes]]], key: str, where: str) -> None:
    write_set(tmp_path, SEQUENCE[:5], max_samples=2)
    index_bytes = (tmp_path / INDEX_FILE).read_bytes()

    with pytest.raises(DatasetAssetsError) as caught:
        append_shards(tmp_path, iter(appended))

    assert str(caught.value) == f"{tmp_path}: cannot append sample {key!r}: {where}"
    assert (tmp_path / INDEX_FILE).read_bytes() == index_bytes
    assert sorted(path.name for path in tmp_path.glob("*.tar")) == [f"shards-000{n}.tar" for n in range(3)]


def test_append_never_overwrites_a_file_that_is_not_in_the_index(tmp_path: Path) -> None:
    """The first new shard number skips existing files; the ones after it must not clobber a stray either."""
    write_set(tmp_path, SEQUENCE[:8], max_samples=4)
    index_bytes = (tmp_path / INDEX_FILE).read_bytes()
    stray = tmp_path / "shards-0003.tar"
    stray.write_bytes(b"a file the set does not list")

    with pytest.raises(DatasetAssetsError, match=r"shards-0003\.tar.* not in the index"):
        append_shards(tmp_path, iter(samples_of("seq_b", 8)), max_samples=4)

    assert stray.read_bytes() == b"a file the set does not list"
    assert (tmp_path / INDEX_FILE).read_bytes() == index_bytes
    assert sorted(path.name for path in tmp_path.glob("*.tar")) == ["shards-0000.tar", "shards-0001.tar",
                                                                    "shards-0003.tar"]
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".append")] == []


def test_concurrent_appends_keep_every_sample(tmp_path: Path) -> None:
    write_set(tmp_path, SEQUENCE[:4])
    sequences = [samples_of(f"seq_{name}", 6) for name in "bcd"]
    threads = [threading.Thread(target=append_shards, args=(tmp_path, iter(s))) for s in sequences]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    index = read_index(tmp_path)
    assert sorted(index.keys()) == sorted(key for key, _ in SEQUENCE[:4] + [i for s in sequences for i in s])
    assert verify_shard_set(tmp_path).problems == ()


APPENDER = """
import os, signal, sys, time
from pathlib import Path
from dataset_assets.core import shards
folder, when = Path(sys.argv[1]), sys.argv[2]
if when == "indexing":  # SIGKILL itself with its shards renamed in and its index not yet written
    shards.write_index = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
def samples():
    for frame in range(20):
        yield f"seq_b_f{frame:04d}", {"bin": bytes([frame]) * 5000}
    if when == "writing":  # SIGKILLed by the test while its shards are in the staging folder
        print("ready", flush=True)
        time.sleep(60)
shards.append_shards(folder, samples(), max_samples=8)
"""


def _append_killed_while(when: str, folder: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", APPENDER, str(folder), when], stdout=subprocess.PIPE, text=True)
    try:
        if when == "writing":
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
    finally:
        if when == "writing":
            child.kill()
        assert child.wait(timeout=60) == -signal.SIGKILL


@pytest.mark.parametrize("when", ["writing", "indexing"])
def test_an_append_killed_mid_way_is_undone_by_the_next_append(tmp_path: Path, when: str) -> None:
    write_set(tmp_path, SEQUENCE, max_samples=16)
    index_bytes = (tmp_path / INDEX_FILE).read_bytes()

    _append_killed_while(when, tmp_path)

    left = sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".append"))
    strays = sorted(path.name for path in tmp_path.glob("*.tar"))[3:]
    if when == "writing":
        assert len(left) == 1 and left[0].endswith(".staging") and strays == []
    else:
        assert len(left) == 2 and APPEND_JOURNAL in left and left[0].endswith(".staging")
        assert strays == ["shards-0003.tar", "shards-0004.tar", "shards-0005.tar"]
        assert len(verify_shard_set(tmp_path).problems) == 3
    assert (tmp_path / INDEX_FILE).read_bytes() == index_bytes

    added = samples_of("seq_b", 10)
    index = append_shards(tmp_path, iter(added), max_samples=16)

    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".append")] == []
    assert [shard.name for shard in index.shards[3:]] == ["shards-0003.tar"]
    assert read_all(tmp_path) == SEQUENCE + added
    assert verify_shard_set(tmp_path).problems == ()


@pytest.mark.parametrize("name", ["../outside.tar", "C:outside.tar", "sub\\..\\..\\outside.tar"])
def test_a_journal_naming_a_file_outside_the_set_is_refused_and_removes_nothing(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "set"
    write_set(folder, SEQUENCE, max_samples=16)
    outside = tmp_path / "outside.tar"
    outside.write_bytes(b"not the set's")
    (folder / APPEND_JOURNAL).write_text(json.dumps([name]))

    with pytest.raises(DatasetAssetsError, match=rf"{APPEND_JOURNAL}: expected a list of relative shard names"):
        append_shards(folder, iter(samples_of("seq_b", 2)))

    assert outside.read_bytes() == b"not the set's"
    assert read_all(folder) == SEQUENCE


def test_shard_files_read_correctly_from_many_threads(tmp_path: Path) -> None:
    writer = write_set(tmp_path, [*SEQUENCE, BIG], max_samples=8)
    files = ShardFiles([str(tmp_path / shard.name) for shard in writer.shards], max_open=2)
    entries = list(writer.index.entries) * 5

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda e: files.read_members(e.shard, e.members), entries))

    assert results == [members for _, members in [*SEQUENCE, BIG]] * 5


def test_an_index_entry_past_the_end_of_its_zstd_block_is_an_error_not_short_bytes(tmp_path: Path) -> None:
    """Plain reads refuse a range past the end of the shard; a range past the end of a block must fail alike."""
    writer = write_set(tmp_path, SEQUENCE[:4], compression=Compression(block_samples=2))
    files = ShardFiles([str(tmp_path / shard.name) for shard in writer.shards])
    entry = writer.index.entries[1]
    block = writer.index.blocks[entry.block]  # type: ignore[index]
    size = len(zstandard.ZstdDecompressor().decompress(
        (tmp_path / "shards-0000.tar").read_bytes()[block.offset:block.offset + block.size]))
    stale = tuple((extension, offset + size, length) for extension, offset, length in entry.members)

    with pytest.raises(DatasetAssetsError, match=rf"shards-0000\.tar@{block.offset}: bytes \d+\.\.\d+ are past "
                                                 rf"the end of the {size}-byte block"):
        files.read_members(0, stale, block)


def test_shard_files_refuse_to_keep_no_handle_open(tmp_path: Path) -> None:
    """With max_open=0 every handle was closed as soon as it was opened, and each read failed later
    with 'I/O operation on closed file'."""
    writer = write_set(tmp_path, SEQUENCE[:2])
    paths = [str(tmp_path / shard.name) for shard in writer.shards]

    with pytest.raises(ValueError, match="max_open must be >= 1, got 0"):
        ShardFiles(paths, max_open=0)
    assert ShardFiles(paths, max_open=1).read_members(0, writer.index.entries[1].members) == SEQUENCE[1][1]


def test_verify_shard_set_reports_an_index_entry_past_the_end(tmp_path: Path) -> None:
    write_set(tmp_path, SEQUENCE[:3])
    shard = tmp_path / "shards-0000.tar"
    shard.write_bytes(shard.read_bytes()[:2048])

    check = verify_shard_set(tmp_path)

    assert check.index_rows == 3 and check.samples == 0
    assert any("sha256" in problem for problem in check.problems)
    assert any("truncated" in problem for problem in check.problems)


def _tar_with_global_pax(path: Path, global_fields: dict[str, str]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, pax_headers=global_fields) as tar:
        for name in ("seq_a_f0000.json", "seq_a_f0001.json"):
            tar.addfile(_regular(name, b"{}"), io.BytesIO(b"{}"))
    return path


@pytest.mark.parametrize(("keyword", "value"), [("path", "../evil.json"), ("size", "0"),
                                                ("GNU.sparse.size", "2")])
def test_a_global_pax_header_that_would_rename_or_resize_every_member_is_refused(
        tmp_path: Path, keyword: str, value: str) -> None:
    path = _tar_with_global_pax(tmp_path / "shards-0000.tar", {keyword: value})
    with tarfile.open(path) as tar:  # tarfile, so webdataset, applies it to every member after it
        assert keyword != "path" or tar.getnames() == ["../evil.json", "../evil.json"]

    for read in every_reader(path):
        with pytest.raises(UnsafeArchiveError, match=rf"shards-0000\.tar: member .*rejected: a global pax header "
                                                     rf"may not set {keyword!r}"):
            read()


def test_a_global_pax_header_with_only_a_comment_is_read_past(tmp_path: Path) -> None:
    path = _tar_with_global_pax(tmp_path / "shards-0000.tar", {"comment": "9b8ed81"})  # as `git archive` writes

    assert read_all(tmp_path) == [("seq_a_f0000", {"json": b"{}"}), ("seq_a_f0001", {"json": b"{}"})]
    assert count_samples(path) == 2


@pytest.mark.parametrize("extension", ["__key__", "__url__", "__local_path__"])
def test_an_extension_named_like_a_sample_field_is_refused_as_webdataset_cannot_read_it(
        tmp_path: Path, extension: str) -> None:
    """A member `k.__key__` would overwrite the sample's `__key__` (or webdataset fails the shard on it)."""
    with ShardWriter(tmp_path) as writer:
        with pytest.raises(DatasetAssetsError, match=rf"sample 'seq_a_f0000': member extension {extension!r} "
                                                     r"is the name of a field webdataset adds to every sample"):
            writer.write("seq_a_f0000", {extension: b"x", "json": b"{}"})
        writer.write("seq_a_f0001", {"json": b"{}"})

    read = list(webdataset.WebDataset(str(tmp_path / "shards-0000.tar"), shardshuffle=False, empty_check=False))
    assert [sample["__key__"] for sample in read] == ["seq_a_f0001"]


@pytest.mark.parametrize(("key", "extension"), [
    ("seq_a_\udcc3\udca9", "json"), ("seq_a_\ud800", "json"), ("seq_a_f0000", "js\udcc3\udca9"),
    ("seq_a_f0000", "js\ud800")])
def test_a_name_that_would_not_read_back_as_written_is_refused_before_any_byte(
        tmp_path: Path, key: str, extension: str) -> None:
    """`\\udcc3\\udca9` is written as the UTF-8 bytes of `é` (and read back as `é`, a key the index does
    not hold); a surrogate outside `\\udc80-\\udcff` has no bytes at all."""
    with ShardWriter(tmp_path) as writer:
        with pytest.raises(DatasetAssetsError, match="invalid (sample key|member extension)"):
            writer.write(key, {"bin": b"x", extension: b"{}"})
        writer.write("seq_a_f0001", {"json": b"{}"})
    write_index(tmp_path, writer.index)

    assert read_all(tmp_path) == [("seq_a_f0001", {"json": b"{}"})]
    assert verify_shard_set(tmp_path).problems == ()


def test_a_zstd_block_numbered_past_999999_is_expanded_by_every_reader(tmp_path: Path) -> None:
    """A writer numbers blocks over its whole run, 6 digits at least: with `block_samples=1`, its
    millionth sample lands in `zstd-block-1000000.tar.zst`. Writing a million blocks takes too long
    for a test, so the blocks of a small set are renamed to such numbers."""
    write_set(tmp_path / "written", SEQUENCE[:3], compression=Compression(block_samples=1))
    shard = tmp_path / "shards-0000.tar"
    with tarfile.open(tmp_path / "written" / "shards-0000.tar") as written, \
            tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as renamed:
        for number, member in enumerate(written.getmembers()):
            data = written.extractfile(member).read()  # type: ignore[union-attr]
            member.name = f"zstd-block-{1_000_000 + number}.tar.zst"
            renamed.addfile(member, io.BytesIO(data))

    assert read_all(tmp_path) == SEQUENCE[:3]
    assert [(key, dict(sample)) for key, sample in iter_stream_samples(io.BytesIO(shard.read_bytes()), str(shard))] \
        == SEQUENCE[:3]
    assert count_samples(shard) == 3


def test_a_shard_cut_right_after_a_pax_header_is_truncated_to_every_reader(tmp_path: Path) -> None:
    """A pax header describes the member after it: ending there is a cut, not the end of the archive."""
    path = tmp_path / "shards-0000.tar"
    path.write_bytes(_tar_bytes([("seq_a_f0000.json", b"{}"), ("seq_a_" + "f" * 120 + ".json", b"{}")]))
    path.write_bytes(path.read_bytes()[:2048])  # the first member, then the second's pax header and its records

    for read in every_reader(path):
        with pytest.raises(DatasetAssetsError, match=r"shards-0000\.tar: truncated tar archive \(header after member "
                                                     r"'seq_a_f0000\.json'\)"):
            read()


@pytest.mark.parametrize("compression", [None, Compression(block_samples=2)])
def test_members_given_as_arrays_or_typed_views_are_stored_as_all_their_bytes(
        tmp_path: Path, compression: Compression | None) -> None:
    """`len` of a numpy array or a float32 memoryview counts items: a header sized by it leaves the rest
    of the bytes where the next header should be."""
    array = numpy.arange(300, dtype=numpy.float32)
    write_set(tmp_path, [("seq_a_f0000", {"bin": array}), ("seq_a_f0001", {"bin": memoryview(array)}),
                         ("seq_a_f0002", {"bin": bytearray(b"xyz")})], compression=compression)

    expected = [("seq_a_f0000", {"bin": array.tobytes()}), ("seq_a_f0001", {"bin": array.tobytes()}),
                ("seq_a_f0002", {"bin": b"xyz"})]
    assert read_all(tmp_path) == expected
    assert verify_shard_set(tmp_path).problems == ()
    if compression is None:
        read = webdataset.WebDataset(str(tmp_path / "shards-0000.tar"), shardshuffle=False, empty_check=False)
        assert [(sample["__key__"], {"bin": sample["bin"]}) for sample in read] == expected


@pytest.mark.parametrize("data", ["text", numpy.arange(12, dtype=numpy.int64).reshape(3, 4)[:, 1]])
def test_a_member_that_is_not_contiguous_bytes_is_refused_before_any_byte(tmp_path: Path, data: object) -> None:
    with ShardWriter(tmp_path) as writer:
        with pytest.raises(DatasetAssetsError, match=r"sample 'seq_a_f0000': member 'bin' is not a contiguous "
                                                     r"bytes-like object"):
            writer.write("seq_a_f0000", {"bin": data, "aaa": b"first"})  # type: ignore[dict-item]
        writer.write("seq_a_f0001", {"json": b"{}"})

    assert read_all(tmp_path) == [("seq_a_f0001", {"json": b"{}"})]


def test_a_zstd_block_is_closed_before_it_outgrows_what_the_readers_decompress(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Readers refuse a block declaring more than `MAX_BLOCK_BYTES` (1 GiB): 16 samples of 100 MB made
    one. The limit is lowered here so that a test need not hold gigabytes."""
    monkeypatch.setattr(shards_module, "MAX_BLOCK_BYTES", 50_000)
    written = [(f"seq_a_f{i:04d}", {"bin": bytes([i]) * 20_000, "json": b"{}"}) for i in range(10)]
    with ShardWriter(tmp_path, compression=Compression(block_samples=16)) as writer:
        for key, sample in written:
            writer.write(key, sample)
        with pytest.raises(DatasetAssetsError, match=r"sample 'seq_a_big': its 60\d\d\d bytes of tar do not fit "
                                                     r"in a zstd block \(at most 50000\)"):
            writer.write("seq_a_big", {"bin": b"x" * 60_000})
    write_index(tmp_path, writer.index)

    assert read_all(tmp_path) == written
    assert verify_shard_set(tmp_path).problems == ()


@pytest.mark.timeout(30)  # a second append with such a pattern once looked for a free number forever
@pytest.mark.parametrize(("pattern", "problem"), [("shards.tar", "gives every shard the same name"),
                                                  ("../shards-{index:04d}.tar", "'..' would escape"),
                                                  ("shards-{number}.tar", "must format")])
def test_a_shard_name_pattern_that_would_overwrite_or_escape_is_refused(tmp_path: Path, pattern: str,
                                                                        problem: str) -> None:
    folder = tmp_path / "set"
    with pytest.raises(ValueError, match=problem):
        ShardWriter(folder, pattern=pattern, max_samples=2)
    for _ in range(2):
        with pytest.raises(ValueError, match=problem):
            append_shards(folder, iter(SEQUENCE[:3]), pattern=pattern, max_samples=2)

    assert sorted(path.name for path in tmp_path.rglob("*.tar")) == []


@pytest.mark.parametrize(("key", "extension"), [("__cache__/seq_a_f0000", "json"), ("__seq_a_f0000", "x__")])
def test_a_member_name_webdataset_skips_as_metadata_is_refused(tmp_path: Path, key: str, extension: str) -> None:
    """webdataset drops members whose name starts with `__<name>__/` (or is `__...__`) without a word."""
    with ShardWriter(tmp_path) as writer:
        with pytest.raises(DatasetAssetsError, match=r"webdataset skips it as metadata"):
            writer.write(key, {extension: b"{}"})
        writer.write("seq_a_f0001", {"json": b"{}"})

    read = webdataset.WebDataset(str(tmp_path / "shards-0000.tar"), shardshuffle=False, empty_check=False)
    assert [sample["__key__"] for sample in read] == [key for key, _ in read_all(tmp_path)] == ["seq_a_f0001"]


# Member names of a third-party tar, and what webdataset 1.0 makes of each (`base_plus_ext`,
# `group_by_keys(lcase=True)`, metadata skipped): a (key, extension), or None where it skips the member.
THIRD_PARTY_NAMES: list[tuple[str, tuple[str, str] | None]] = [
    ("k1.jpg", ("k1", "jpg")),
    ("README", None),  # no dot: skipped, and the sample around it goes on
    ("k1.TXT", ("k1", "txt")),
    (".hidden", None),
    ("k2.Seg.NPY", ("k2", "seg.npy")),
    ("d/.cfg", ("d/", "cfg")),  # the key runs over the slash to the first dot
    ("x.y/.cfg", None),
    ("x.y/noext", None),
    ("__meta__", None),
    ("__cache__/k3.jpg", None),
    ("d/K4.jpg", ("d/K4", "jpg")),
    ("k5.", ("k5", "")),
]


@pytest.mark.parametrize("tar_format", [tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT])
def test_every_reader_keys_and_skips_third_party_member_names_as_webdataset_does(
        tmp_path: Path, tar_format: int) -> None:
    """Our stream reader, our mapped reader (compiled walk and Python parser, bytes and views) and the
    header count give every member of a foreign tar the key and lowercased extension webdataset gives it,
    and skip the members it skips."""
    path = tmp_path / "third_party.tar"
    with tarfile.open(path, "w", format=tar_format) as tar:
        for number, (name, _) in enumerate(THIRD_PARTY_NAMES):
            data = b"%d" % number * (1 + number * 97)
            tar.addfile(_regular(name, data), io.BytesIO(data))
    data = {name: b"%d" % number * (1 + number * 97) for number, (name, _) in enumerate(THIRD_PARTY_NAMES)}
    expected = [("k1", {"jpg": data["k1.jpg"], "txt": data["k1.TXT"]}), ("k2", {"seg.npy": data["k2.Seg.NPY"]}),
                ("d/", {"cfg": data["d/.cfg"]}), ("d/K4", {"jpg": data["d/K4.jpg"]}), ("k5", {"": data["k5."]})]

    read = webdataset.WebDataset(str(path), shardshuffle=False, empty_check=False)
    assert [(s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")}) for s in read] == expected
    outcomes = reader_outcomes(path, path.read_bytes())
    assert outcomes == {reader: ("samples", expected) for reader in outcomes}
    assert count_samples(path) == len(expected)
    assert [split_member_name(name) for name, _ in THIRD_PARTY_NAMES] == [split for _, split in THIRD_PARTY_NAMES]


def test_extensions_equal_but_for_case_are_one_member_twice_to_every_reader(tmp_path: Path) -> None:
    """webdataset fails the shard on `k.jpg` beside `k.JPG`; so does every reader of ours, naming both."""
    path = tmp_path / "shards-0000.tar"
    path.write_bytes(_tar_bytes([("k.jpg", b"1"), ("k.JPG", b"2")]))

    with pytest.raises(ValueError, match="duplicate file name"):
        list(webdataset.WebDataset(str(path), shardshuffle=False, empty_check=False))
    assert list(reader_outcomes(path, path.read_bytes()).values()) == 4 * [
        ("DatasetAssetsError", f"{path}: sample 'k' has member 'jpg' twice")]


def test_an_index_row_with_a_capital_extension_reads_as_webdataset_reads_the_member(tmp_path: Path) -> None:
    """A set written before capitals were refused lists `JPG` in its index: the map-style dataset,
    like every other reader, gives that member as `jpg`, the bytes webdataset gives."""
    path = tmp_path / "shards-0000.tar"
    path.write_bytes(_tar_bytes([("k1.JPG", b"image"), ("k1.json", b"{}")]))
    with tarfile.open(path) as tar:
        members = tuple((m.name.partition(".")[2], m.offset_data, m.size) for m in tar)
    digest = storage.digest_file(path)
    write_index(tmp_path, ShardIndex((ShardInfo(path.name, 1, digest.size, digest.sha256),),
                                     (IndexEntry("k1", 0, members),)))

    read = webdataset.WebDataset(str(path), shardshuffle=False, empty_check=False)
    expected = [{k: v for k, v in s.items() if not k.startswith("__")} for s in read]
    assert expected == [{"jpg": b"image", "json": b"{}"}]
    assert [IndexedShardDataset([tmp_path]).read(0)[2]] == expected
    assert verify_shard_set(tmp_path).problems == ()
