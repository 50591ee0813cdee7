"""The compiled walk of local shards (`core/_tarwalk.c`) against the pure-Python stream reader."""
from __future__ import annotations

import functools
import io
import random
import tarfile
from pathlib import Path

import pytest

from dataset_assets.core import shards
from dataset_assets.core._tarwalk import SampleWalker
from dataset_assets.core.errors import DatasetAssetsError
from dataset_assets.core.shards import Compression
from dataset_assets_tests.core.test_shards import SEQUENCE, reader_outcomes, write_set


def _counting_walk(data: bytes) -> tuple[list[tuple[object, object]], list[int], list[str]]:
    """The samples the compiled walker yields over `data`, the positions it asked Python to parse, and the
    zstd blocks it handed over to be expanded."""
    view = memoryview(data)
    asked: list[int] = []
    blocks: list[str] = []

    def slow(position: int, previous: str | None) -> object:
        asked.append(position)
        return shards._member_at(view, "shard.tar", position, previous)

    def expand(name: str, block: memoryview) -> object:
        blocks.append(name)
        return shards._block_samples("shard.tar", False, False, name, block)

    walked = list(SampleWalker(view, "shard.tar", False, slow, expand, DatasetAssetsError))
    return walked, asked, blocks


@pytest.mark.parametrize("compression", [None, Compression(block_samples=4)], ids=["plain", "zstd"])
def test_shards_we_write_are_walked_in_compiled_code_up_to_the_end_block(
        tmp_path: Path, compression: Compression | None) -> None:
    write_set(tmp_path, SEQUENCE, compression=compression)
    data = next(tmp_path.glob("*.tar")).read_bytes()

    walked, asked, blocks = _counting_walk(data)

    assert len(asked) == 1  # the end-of-archive block, and nothing before it
    assert data[asked[0]:asked[0] + tarfile.BLOCKSIZE] == b"\0" * tarfile.BLOCKSIZE
    assert walked == SEQUENCE
    assert len(blocks) == (0 if compression is None else len(SEQUENCE) // 4)  # one block per 4 samples


def _with_checksum(block: bytearray) -> bytearray:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return block


NAMES = ["seq_a_f0000.jpg", "seq_a_f0000.json", "seq_a_f0001.jpg", "a/b.c.d", "ü.txt", "with space.jpg",
         "x\\y.jpg", "\\abs.jpg", "a\\..\\b.jpg", "../up.jpg", "/abs.jpg", "C:drive.jpg", "a..b.jpg", "noext", "dir/",
         "zstd-block-000001.tar.zst", "d/zstd-block-12345.tar.zst", "zstd-block-00000a.tar.zst", "n" * 100,
         # around the 16-byte chunks the compiled name scan reads: dots, slashes and ends at their edges
         "a" * 15 + ".jpg", "a" * 15 + "..b.jpg", "dir_long_name_x/k.jpg", "sub/" * 5 + "k.jpg", "k" * 31 + ".jpg",
         "k" * 95 + ".jpg", "k" * 96 + ".jpg", "k" * 99 + ".", "a" * 14 + "/../k.jpg"]
SIZE, CHECKSUM_END_AND_TYPE, PREFIX_START = range(124, 136), range(154, 157), range(345, 350)
# byte values a mutation writes: around every test the fast path makes on a name, type, size or prefix
VALUES = [0, 0x20, 0x21, ord("."), ord("/"), ord("\\"), ord(":"), ord("0"), ord("7"), ord("8"), ord("x"), 0x7E,
          0x7F, 0x80, 0xFF]


@pytest.mark.timeout(120)
def test_compiled_walk_and_stream_reader_agree_on_headers_with_valid_checksums(tmp_path: Path) -> None:
    """Seeded mutations of name, type, size, checksum-field and prefix bytes, the checksum then made
    valid again so that the compiled fast path, not only the Python parser, decides: every reader
    returns the same samples, or the same error."""
    rng = random.Random(20261206)
    disagreements = []
    for case in range(1000):
        names = rng.sample(NAMES, 3)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT if case % 2 else tarfile.GNU_FORMAT
                          ) as tar:
            for name in names:
                data = rng.randbytes(rng.choice([0, 1, 511, 512, 700]))
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        damaged = bytearray(buffer.getvalue())
        offsets = [member.offset for member in tarfile.open(fileobj=io.BytesIO(bytes(damaged)))]
        header = rng.choice(offsets)
        block = damaged[header:header + tarfile.BLOCKSIZE]
        name = range(0, min(block.find(b"\0") + 1, 100))  # past the name's NUL a change is mostly invisible
        for _ in range(rng.randint(1, 3)):
            field = rng.choice([name, name, name, SIZE, CHECKSUM_END_AND_TYPE, PREFIX_START])
            block[rng.choice(field)] = rng.choice(VALUES)
        damaged[header:header + tarfile.BLOCKSIZE] = _with_checksum(block) if rng.random() < 0.8 else block
        outcomes = reader_outcomes(tmp_path / "case.tar", bytes(damaged))
        if len({repr(outcome) for outcome in outcomes.values()}) != 1:
            disagreements.append((case, outcomes))
    assert disagreements == []


def test_a_member_past_16_mib_is_walked_in_compiled_code_with_its_exact_size() -> None:
    """Sizes are read eight octal digits at a time: this one has digits set on both sides of that split."""
    size = 8 ** 8 + 3 * 8 ** 7 + 0o7654321
    payload = random.Random(3).randbytes(size)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in [("k.bin", payload), ("k.json", b"{}")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    walked, asked, _ = _counting_walk(buffer.getvalue())

    assert len(asked) == 1  # the end-of-archive block only
    assert walked == [("k", {"bin": payload, "json": b"{}"})]


def test_a_parser_result_outside_the_buffer_is_refused_before_any_byte_is_read() -> None:
    """The compiled walker copies bytes at the offsets the Python parser returns; an impossible
    result (a bug) must raise, never read past the buffer."""
    view = memoryview(b"\1" * 1024)
    impossible = [("k.bin", "k", "bin", 512, 4096, 4608, False), ("k.bin", "k", "bin", 512, 10, 0, False)]
    for member in impossible:
        with pytest.raises(SystemError, match="impossible member"):
            list(SampleWalker(view, "x.tar", False, functools.partial(lambda m, *_: m, member), iter,
                              DatasetAssetsError))


def test_a_member_twice_in_one_sample_is_refused_by_the_compiled_walk(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ["k.jpg", "k.json", "k.jpg"]:
            tar.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
    outcomes = reader_outcomes(tmp_path / "twice.tar", buffer.getvalue())

    assert set(map(repr, outcomes.values())) == {repr(("DatasetAssetsError",
                                                       f"{tmp_path / 'twice.tar'}: sample 'k' has member 'jpg' twice"))}


@pytest.mark.parametrize("views", [False, True], ids=["bytes", "views"])
@pytest.mark.parametrize("compression", [None, Compression(block_samples=4)], ids=["plain", "zstd"])
def test_a_tag_comes_first_in_every_sample_of_plain_members_and_of_blocks(
        tmp_path: Path, compression: Compression | None, views: bool) -> None:
    write_set(tmp_path, SEQUENCE, compression=compression)
    shard = str(next(tmp_path.glob("*.tar")))

    tagged = [(tag, key, {ext: bytes(data) for ext, data in sample.items()})
              for tag, key, sample in shards.iter_shard_samples(shard, views)]

    assert tagged == [(shard, key, sample) for key, sample in SEQUENCE]


def test_a_tagging_walker_refuses_block_items_that_are_not_pairs(tmp_path: Path) -> None:
    write_set(tmp_path, SEQUENCE, compression=Compression(block_samples=4))
    view = memoryview(next(tmp_path.glob("*.tar")).read_bytes())
    slow = functools.partial(shards._member_at, view, "shard.tar")

    walker = SampleWalker(view, "shard.tar", False, slow, lambda name, data: iter([("k", {}, "extra")]),
                          DatasetAssetsError, tag="shard.tar")

    with pytest.raises(SystemError, match="expand must yield"):
        list(walker)
