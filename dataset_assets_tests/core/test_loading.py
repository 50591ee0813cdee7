from __future__ import annotations

import io
import json
import os
import pickle
import resource
import socket
import subprocess
import sys
import tarfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dataset_assets.core.errors import DatasetAssetsError, SplitError, UnsafeArchiveError
from dataset_assets.core.index import IndexEntry, ShardIndex, ShardInfo, write_index
from dataset_assets.core.loading import (
    IndexedShardDataset,
    ShardStream,
    load_yaml_and_extract_tar_list,
    make_shard_dataset,
)
from dataset_assets.core.preprocess import MAX_IMAGE_PIXELS
from dataset_assets.core.remote_shards import open_url
from dataset_assets.core.shards import Compression, ShardWriter
from dataset_assets.core.splits import split_sequences, write_split_yamls
from dataset_assets.core.tar_lists import missing_tars, split_overlap
from dataset_assets.demo.server import DemoServer
from dataset_assets_tests import s3_fixtures
from dataset_assets_tests.plain_server import PlainServer
from dataset_assets_tests.s3_fixtures import S3Bucket
from dataset_assets_tests.tcp_proxy import DroppingProxy

moto_endpoint = s3_fixtures.moto_endpoint
moto_client = s3_fixtures.moto_client
s3_bucket = s3_fixtures.s3_bucket


def png_bytes(width: int = 96, height: int = 72) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (255, 128, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(frame: int) -> bytes:
    buffer = io.BytesIO()
    numpy.save(buffer, numpy.full((2, 3), frame, dtype=numpy.float32), allow_pickle=False)
    return buffer.getvalue()


def write_sequence(folder: Path, sequence: str, frames: int, per_shard: int,
                   compression: Compression | None = None) -> list[Path]:
    """Shards of one sequence plus their `_index.json`."""
    with ShardWriter(folder / sequence, max_samples=per_shard, compression=compression) as writer:
        for frame in range(frames):
            ground_truth = json.dumps({"sequence": sequence, "frame": frame}).encode()
            sample = {"png": png_bytes(), "json": ground_truth, "npy": npy_bytes(frame)}
            writer.write(f"{sequence}_f{frame:04d}", sample)
    write_index(folder / sequence, writer.index)
    return [folder / sequence / shard.name for shard in writer.shards]


def write_yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_tar_list_resolves_relative_paths_against_yaml_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_yaml(
        tmp_path / "data" / "local_all_tars.yaml",
        "tars:\n  '0':\n  - 0/shards-0000.tar\n  - 0/shards-0001.tar\n  seq_b:\n  - /abs/seq_b/shards-0000.tar\n",
    )
    monkeypatch.chdir(tmp_path)

    tars = load_yaml_and_extract_tar_list("data/local_all_tars.yaml")

    folder = tmp_path / "data"
    expected = [str(folder / "0" / "shards-0000.tar"), str(folder / "0" / "shards-0001.tar")]
    assert tars == expected + ["/abs/seq_b/shards-0000.tar"]
    assert all(os.path.isabs(tar) for tar in tars)


def test_tar_list_keeps_urls(tmp_path: Path) -> None:
    urls = [
        "https://cdn.example.test/seq/shards-0000.tar?Expires=1&Signature=abc",
        "http://127.0.0.1:8000/seq/shards-0001.tar",
        "s3://bucket/seq/shards-0002.tar",
    ]
    path = write_yaml(tmp_path / "streamable_all_tars.yaml", json.dumps({"tars": {"seq": urls}}))

    assert load_yaml_and_extract_tar_list(path) == urls


def test_pipe_entry_becomes_a_path_not_a_command(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "local_all_tars.yaml", "tars:\n  seq:\n  - 'pipe:touch owned'\n")

    assert load_yaml_and_extract_tar_list(path) == [str(tmp_path / "pipe:touch owned")]


def test_tar_list_round_trips_written_split_yamls(tmp_path: Path) -> None:
    paths = {name: write_sequence(tmp_path, name, frames=2, per_shard=1) for name in ("seq_a", "seq_b", "seq_c")}
    relative = {name: [str(path.relative_to(tmp_path)) for path in tars] for name, tars in paths.items()}

    written = write_split_yamls(tmp_path, split_sequences(relative, ratio=0.7), relative, "local")

    all_tars = load_yaml_and_extract_tar_list(written["all"])
    assert sorted(all_tars) == sorted(str(path) for tars in paths.values() for path in tars)
    assert all(Path(tar).is_file() for tar in all_tars)
    train, validation = (load_yaml_and_extract_tar_list(written[part]) for part in ("train", "validation"))
    assert sorted(train + validation) == sorted(all_tars) and not set(train) & set(validation)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("tars: [a, b\n", "(document)"),
        ("- a.tar\n", "tars"),
        ("other: {}\n", "tars"),
        ("tars: [a.tar]\n", "tars"),
        ("tars:\n  seq: a.tar\n", "tars.seq"),
        ("tars:\n  seq:\n  - 5\n", "tars.seq[0]"),
    ],
)
def test_malformed_tar_yaml_names_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    path = write_yaml(tmp_path / "local_all_tars.yaml", text)

    with pytest.raises(SplitError) as caught:
        load_yaml_and_extract_tar_list(path)

    assert caught.value.field == field
    assert str(path) in str(caught.value)


def test_empty_split_yaml_gives_an_empty_list(tmp_path: Path) -> None:
    assert load_yaml_and_extract_tar_list(write_yaml(tmp_path / "local_validation_tars.yaml", "tars: {}\n")) == []


def test_dataset_decodes_images_json_and_npy(tmp_path: Path) -> None:
    tars = write_sequence(tmp_path, "seq_a", frames=3, per_shard=2)

    samples = list(make_shard_dataset([str(tar) for tar in tars]))

    assert [sample["__key__"] for sample in samples] == ["seq_a_f0000", "seq_a_f0001", "seq_a_f0002"]
    image = samples[0]["png"]
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32 and image.shape == (3, 72, 96)
    assert torch.allclose(image[:, 0, 0], torch.tensor([1.0, 128 / 255, 0.0]))
    assert samples[2]["json"] == {"sequence": "seq_a", "frame": 2}
    assert isinstance(samples[2]["npy"], torch.Tensor)
    assert torch.equal(samples[2]["npy"], torch.full((2, 3), 2.0))


def test_npy_members_in_either_byte_order_decode_to_the_same_tensor(tmp_path: Path) -> None:
    """`.npy` records its byte order; torch.from_numpy refuses a non-native one, so the decoder converts."""
    values = numpy.arange(6, dtype=numpy.float32).reshape(2, 3)
    members = {}
    for order in "<>":
        buffer = io.BytesIO()
        numpy.save(buffer, values.astype(f"{order}f4"), allow_pickle=False)
        members[f"{'little' if order == '<' else 'big'}.npy"] = buffer.getvalue()
    with ShardWriter(tmp_path) as writer:
        writer.write("seq_a_f0000", members)
    write_index(tmp_path, writer.index)
    tars = [tmp_path / "shards-0000.tar"]

    for sample in (next(iter(ShardStream(tars))), IndexedShardDataset(tars)[0]):
        assert torch.equal(sample["little.npy"], torch.from_numpy(values))
        assert torch.equal(sample["big.npy"], torch.from_numpy(values))


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled!",))


def test_dataset_never_unpickles_members(tmp_path: Path) -> None:
    payload = pickle.dumps(_Boom())
    with ShardWriter(tmp_path) as writer:
        writer.write("seq_a_f0000", {"pyd": payload, "pth": payload, "json": b"{}"})

    sample = next(iter(make_shard_dataset([str(tmp_path / "shards-0000.tar")])))

    assert (sample["pyd"], sample["pth"]) == (payload, payload)


def test_image_members_are_never_handed_to_ghostscript(tmp_path: Path) -> None:
    """A `.png` member holding PostScript: Pillow would run Ghostscript (where installed) to render it."""
    postscript = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n"
    with ShardWriter(tmp_path) as writer:
        writer.write("seq_a_f0000", {"png": postscript})

    with pytest.raises(DatasetAssetsError, match=r"sample 'seq_a_f0000': member 'png' could not be decoded") as caught:
        list(make_shard_dataset([str(tmp_path / "shards-0000.tar")]))
    assert "Ghostscript" not in str(caught.value)


def test_pickled_npy_member_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    numpy.save(buffer, numpy.array([_Boom()], dtype=object), allow_pickle=True)
    with ShardWriter(tmp_path) as writer:
        writer.write("seq_a_f0000", {"npy": buffer.getvalue()})

    with pytest.raises(DatasetAssetsError, match=r"shards-0000\.tar: sample 'seq_a_f0000': member 'npy'"):
        list(make_shard_dataset([str(tmp_path / "shards-0000.tar")]))


def add_frame_index(sample: dict) -> dict:
    return {"key": sample["__key__"], "frame": sample["json"]["frame"]}


def test_decoder_is_applied_to_every_sample(tmp_path: Path) -> None:
    tars = write_sequence(tmp_path, "seq_a", frames=2, per_shard=1)

    samples = list(make_shard_dataset([str(tar) for tar in tars], decoder=add_frame_index))

    assert [(sample["key"], sample["frame"]) for sample in samples] == [("seq_a_f0000", 0), ("seq_a_f0001", 1)]


def test_shuffle_buffer_keeps_every_sample_once(tmp_path: Path) -> None:
    tars = write_sequence(tmp_path, "seq_a", frames=12, per_shard=4)

    keys = [sample["__key__"] for sample in make_shard_dataset([str(tar) for tar in tars], shuffle_buffer=8)]

    assert sorted(keys) == [f"seq_a_f{frame:04d}" for frame in range(12)]


def test_dataloader_two_workers_yield_each_sample_once(tmp_path: Path) -> None:
    tars = write_sequence(tmp_path, "seq_a", frames=10, per_shard=2) + write_sequence(tmp_path, "seq_b", 5, 2)
    dataset = make_shard_dataset([str(tar) for tar in tars], decoder=add_frame_index)

    loaded = list(DataLoader(dataset, batch_size=None, num_workers=2))

    keys = [sample["key"] for sample in loaded]
    expected = [f"seq_a_f{frame:04d}" for frame in range(10)] + [f"seq_b_f{frame:04d}" for frame in range(5)]
    assert sorted(keys) == sorted(expected)
    assert len(keys) == len(set(keys))


def test_views_decode_like_bytes_and_undecoded_members_reach_dataloader_workers_as_bytes(tmp_path: Path) -> None:
    tars = [str(tar) for tar in write_sequence(tmp_path, "seq_a", frames=6, per_shard=2)]
    keep_raw = {"json": None}

    loaded = list(DataLoader(ShardStream(tars, member_decoders=keep_raw, views=True), batch_size=None, num_workers=2))
    expected = list(ShardStream(tars, member_decoders=keep_raw))

    by_key = {sample["__key__"]: sample for sample in loaded}
    assert sorted(by_key) == [sample["__key__"] for sample in expected]
    for sample in expected:
        assert type(by_key[sample["__key__"]]["json"]) is bytes and by_key[sample["__key__"]]["json"] == sample["json"]
        assert torch.equal(by_key[sample["__key__"]]["png"], sample["png"])
        assert torch.equal(by_key[sample["__key__"]]["npy"], sample["npy"])
    raw = [members for _, _, members in ShardStream(tars, views=True).raw_samples()]
    assert {type(data) for members in raw for data in members.values()} == {memoryview}


def test_more_workers_than_shards_is_not_an_error(tmp_path: Path) -> None:
    tars = write_sequence(tmp_path, "seq_a", frames=3, per_shard=10)
    dataset = make_shard_dataset([str(tars[0])], decoder=add_frame_index)

    loaded = list(DataLoader(dataset, batch_size=None, num_workers=2))

    assert sorted(sample["key"] for sample in loaded) == ["seq_a_f0000", "seq_a_f0001", "seq_a_f0002"]


@pytest.mark.parametrize("tar_list", [["pipe:cat /etc/passwd"], []])
def test_dataset_refuses_pipes_and_empty_lists(tar_list: list[str]) -> None:
    with pytest.raises(DatasetAssetsError):
        make_shard_dataset(tar_list)


def test_dataset_refuses_a_single_string(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        make_shard_dataset(str(tmp_path / "shards-0000.tar"))


def assert_same_samples(left: list[dict], right: list[dict]) -> None:
    assert [sample["__key__"] for sample in left] == [sample["__key__"] for sample in right]
    for one, other in zip(left, right):
        assert one.keys() == other.keys()
        for name, value in one.items():
            assert torch.equal(value, other[name]) if isinstance(value, torch.Tensor) else value == other[name]


@pytest.mark.parametrize("compression", [None, Compression(block_samples=3)])
def test_map_style_dataset_returns_the_same_samples_as_the_stream(
    tmp_path: Path, compression: Compression | None
) -> None:
    tars = write_sequence(tmp_path, "seq_a", 7, 3, compression) + write_sequence(tmp_path, "seq_b", 4, 3, compression)

    streamed = list(ShardStream(tars))
    mapped = IndexedShardDataset(tars)

    assert len(mapped) == len(streamed) == 11
    assert_same_samples([mapped[i] for i in range(len(mapped))], streamed)
    assert_same_samples([mapped[-1]], streamed[-1:])


def test_map_style_dataset_names_each_shard_as_the_tar_list_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`__url__` is the tar-list entry, spelled as given, in both datasets."""
    write_sequence(tmp_path, "seq_a", 4, 2)
    monkeypatch.chdir(tmp_path)
    tars = ["./seq_a/shards-0000.tar", "seq_a//shards-0001.tar"]

    streamed = [sample["__url__"] for sample in ShardStream(tars)]
    mapped = IndexedShardDataset(tars)

    assert [mapped[i]["__url__"] for i in range(len(mapped))] == streamed == [tars[0]] * 2 + [tars[1]] * 2


def test_map_style_dataset_over_a_folder_and_out_of_range_index(tmp_path: Path) -> None:
    write_sequence(tmp_path, "seq_a", 5, 2)
    dataset = IndexedShardDataset([tmp_path / "seq_a"], decoder=add_frame_index)

    assert [dataset[i]["frame"] for i in range(len(dataset))] == [0, 1, 2, 3, 4]
    with pytest.raises(IndexError, match="out of range for 5 samples"):
        dataset[5]


def test_map_style_dataset_takes_integer_like_indices_and_names_a_bad_one_as_given(tmp_path: Path) -> None:
    write_sequence(tmp_path, "seq_a", 5, 2)
    dataset = IndexedShardDataset([tmp_path / "seq_a"], decoder=add_frame_index)

    assert [dataset[i]["frame"] for i in (numpy.int64(3), torch.tensor(4), -5)] == [3, 4, 0]
    with pytest.raises(IndexError, match=r"sample index -6 out of range for 5 samples"):
        dataset[-6]
    for index in (slice(0, 2), 1.0, "1"):
        with pytest.raises(TypeError, match=rf"sample index must be an integer, not {type(index).__name__}"):
            dataset[index]  # type: ignore[index]


def write_sparse_shard(folder: Path, big: int, small: bytes) -> ShardIndex:
    """A shard of a `big`-byte member, zeros but for b"head" and b"tail" at its ends, then `small`.

    The big member's middle is a hole left by `truncate`, so the file takes a few KiB on disk."""
    def header(name: str, size: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.size = size
        return info.tobuf(tarfile.PAX_FORMAT)

    def padding(size: int) -> bytes:
        return bytes(-size % tarfile.BLOCKSIZE)

    shard = folder / "shards-0000.tar"
    with shard.open("wb") as handle:
        handle.write(header("big.bin", big))
        big_offset = handle.tell()
        handle.write(b"head")
        handle.truncate(big_offset + big - 4)
        handle.seek(0, os.SEEK_END)
        handle.write(b"tail" + padding(big) + header("small.txt", len(small)))
        small_offset = handle.tell()
        handle.write(small + padding(len(small)) + bytes(2 * tarfile.BLOCKSIZE))
    entries = (IndexEntry("big", 0, (("bin", big_offset, big),)),
               IndexEntry("small", 0, (("txt", small_offset, len(small)),)))
    return ShardIndex((ShardInfo(shard.name, 2, shard.stat().st_size, "0" * 64),), entries)


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_map_style_dataset_reads_a_member_of_2_gib_or_more_whole(tmp_path: Path) -> None:
    """Linux returns at most 0x7ffff000 bytes per read: a bigger member takes several, not a
    "past the end of the file" error, and is read into one buffer, never copied whole."""
    big = 0x7FFFF000 + (1 << 20) + 3
    write_index(tmp_path, write_sparse_shard(tmp_path, big, b"the member after the big one"))
    dataset = IndexedShardDataset([tmp_path])
    before = resident_bytes()

    _, key, members = dataset.read(0)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    data = members["bin"]
    assert (key, len(data)) == ("big", big)
    assert (data[:4], data[-4:]) == (b"head", b"tail")
    assert data[0x7FFFF000 - 8: 0x7FFFF000 + 8] == bytes(16)
    assert peak < before + big * 1.25
    del data, members
    assert dataset.read(1)[1:] == ("small", {"txt": b"the member after the big one"})


def test_map_style_dataset_refuses_urls_and_unindexed_shards(tmp_path: Path) -> None:
    tars = write_sequence(tmp_path, "seq_a", 2, 2)
    with pytest.raises(DatasetAssetsError, match="local shards only"):
        IndexedShardDataset(["https://example.test/shards-0000.tar?Signature=secret"])
    with pytest.raises(DatasetAssetsError, match=r"shards-0009\.tar: not listed in .*_index\.json"):
        IndexedShardDataset([tars[0].with_name("shards-0009.tar")])


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_map_style_dataset_with_two_dataloader_workers_yields_every_sample_once(
        tmp_path: Path, start_method: str) -> None:
    """Forked workers inherit the dataset, and must not share the parent's open handles; spawned ones get
    it pickled, open handles left behind."""
    tars = write_sequence(tmp_path, "seq_a", 9, 2, Compression(block_samples=2))
    dataset = IndexedShardDataset(tars, decoder=add_frame_index)
    dataset[0]  # handles opened in the parent must not leak into the workers

    loaded = list(DataLoader(dataset, batch_size=None, num_workers=2, shuffle=True,
                             multiprocessing_context=start_method))

    assert sorted(sample["frame"] for sample in loaded) == list(range(9))


def test_map_style_dataset_is_safe_from_many_threads(tmp_path: Path) -> None:
    tars = write_sequence(tmp_path, "seq_a", 12, 4, Compression(block_samples=3))
    dataset = IndexedShardDataset(tars, decoder=add_frame_index)
    order = list(range(12)) * 4

    with ThreadPoolExecutor(max_workers=4) as pool:
        frames = list(pool.map(lambda i: dataset[i]["frame"], order))

    assert frames == order


def test_stream_split_over_two_ranks_and_two_workers_yields_every_sample_once(tmp_path: Path) -> None:
    tars = [tar for name in ("seq_a", "seq_b", "seq_c") for tar in write_sequence(tmp_path, name, 6, 2)]
    keys: list[str] = []
    for rank in range(2):
        dataset = ShardStream(tars, decoder=add_frame_index, rank=rank, world_size=2)
        keys += [sample["key"] for sample in DataLoader(dataset, batch_size=None, num_workers=2)]

    assert sorted(keys) == sorted(f"seq_{s}_f{frame:04d}" for s in "abc" for frame in range(6))
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("given", [{"rank": 1}, {"world_size": 2}])
def test_a_rank_without_a_world_size_or_the_reverse_is_refused(tmp_path: Path, given: dict[str, int]) -> None:
    """Half a distributed setting used to be dropped: every such rank read every shard."""
    tars = write_sequence(tmp_path, "seq_a", 4, 1)

    with pytest.raises(ValueError, match="rank and world_size must be given together"):
        ShardStream(tars, **given)


DISTRIBUTED_RANK = """
import json, sys
import torch.distributed
from torch.utils.data import DataLoader
from dataset_assets.core.loading import ShardStream
store, rank, tars, context = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
loader = DataLoader(ShardStream(tars), batch_size=None, num_workers=2, multiprocessing_context=context)
print(json.dumps([sample["__key__"] for sample in loader]))
torch.distributed.destroy_process_group()
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_ranks_of_a_torch_distributed_group_split_the_shards_in_any_worker_start_method(
        tmp_path: Path, context: str) -> None:
    """Two real gloo ranks, each with two DataLoader workers: a spawned worker starts without the
    parent's process group, yet must read as the rank of the process that started it."""
    tars = [str(tar) for name in ("seq_a", "seq_b") for tar in write_sequence(tmp_path, name, 4, 1)]
    ranks = [subprocess.Popen([sys.executable, "-c", DISTRIBUTED_RANK, str(tmp_path / "store"), str(rank),
                               json.dumps(tars), context], stdout=subprocess.PIPE, text=True) for rank in range(2)]
    keys = []
    for process in ranks:
        output, _ = process.communicate(timeout=240)
        assert process.returncode == 0
        keys += json.loads(output.splitlines()[-1])

    assert sorted(keys) == sorted(f"seq_{s}_f{frame:04d}" for s in "ab" for frame in range(4))


def test_shuffle_is_seeded_and_changes_with_the_epoch(tmp_path: Path) -> None:
    tars = write_sequence(tmp_path, "seq_a", 20, 4)

    def keys(epoch: int, seed: int = 7) -> list[str]:
        dataset = ShardStream(tars, decoder=add_frame_index, shuffle_buffer=5, seed=seed)
        dataset.set_epoch(epoch)
        return [sample["key"] for sample in dataset]

    assert keys(0) == keys(0) != keys(1)
    assert sorted(keys(1)) == sorted(keys(0, seed=8)) == [f"seq_a_f{frame:04d}" for frame in range(20)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_set_epoch_reaches_persistent_dataloader_workers(tmp_path: Path, context: str) -> None:
    """Persistent workers keep their copy of the dataset across epochs: the epoch set in the main
    process must still decide their shuffle, as it does for workers started afresh each epoch."""
    tars = write_sequence(tmp_path, "seq_a", 12, 2)

    def orders(persistent: bool) -> list[list[str]]:
        dataset = ShardStream(tars, decoder=add_frame_index, shuffle_buffer=3, seed=5)
        loader = DataLoader(dataset, batch_size=None, num_workers=2, persistent_workers=persistent,
                            multiprocessing_context=context)
        epochs = []
        for epoch in range(3):
            dataset.set_epoch(epoch)
            epochs.append([sample["key"] for sample in loader])
        return epochs

    persistent = orders(persistent=True)
    assert persistent == orders(persistent=False)
    assert persistent[0] != persistent[1] != persistent[2]


def test_member_decoders_add_override_or_keep_raw_bytes(tmp_path: Path) -> None:
    tars = write_sequence(tmp_path, "seq_a", 1, 1)
    decoders = {"png": None, "json": lambda data: json.loads(data)["frame"]}

    sample = next(iter(ShardStream(tars, member_decoders=decoders)))

    assert sample["png"] == png_bytes() and sample["json"] == 0 and isinstance(sample["npy"], torch.Tensor)


@dataclass(frozen=True)
class ServedSequence:
    """A demo sequence's signed shard URLs, its local shards, and the first shard's URL path and size."""

    urls: list[str]
    local: list[str]
    first: str
    size: int


def served_sequence(server: DemoServer, source: Path, sequence: str = "seq_000") -> ServedSequence:
    manifest = json.loads(urllib.request.urlopen(f"{server.base_url}/manifest.json").read())
    urls = sorted(entry["download_url"] for entry in
                  manifest["atek_data_for_all_configs"]["cubercnn"]["wds_file_urls"][sequence].values())
    local = sorted(str(path) for path in (source / "cubercnn" / sequence).glob("*.tar"))
    first = Path(local[0])
    return ServedSequence(urls, local, f"/files/cubercnn/{sequence}/{first.name}", first.stat().st_size)


def test_stream_reads_signed_http_urls_like_local_files(demo_server: DemoServer, demo_source: Path) -> None:
    served = served_sequence(demo_server, demo_source)

    remote = list(ShardStream(served.urls, decoder=add_frame_index))

    assert remote == list(ShardStream(served.local, decoder=add_frame_index))


def test_a_connection_dropped_mid_shard_resumes_from_the_byte_it_reached(demo_server: DemoServer,
                                                                         demo_source: Path) -> None:
    served = served_sequence(demo_server, demo_source)
    demo_server.faults.drop_after_bytes(served.size // 3, times=2, path_contains=served.first)  # at 1/3, then 2/3
    demo_server.stats.reset()

    remote = list(ShardStream(served.urls, decoder=add_frame_index))

    assert remote == list(ShardStream(served.local, decoder=add_frame_index))
    ranges = [record.range_header for record in demo_server.stats.requests if record.path == served.first]
    assert ranges[0] is None and len(ranges) == 3
    assert all(header is not None and header.startswith("bytes=") for header in ranges[1:])
    assert demo_server.stats.body_bytes_sent(served.first) == served.size


def test_a_resumed_shard_skips_what_it_had_when_the_server_ignores_range(demo_server: DemoServer,
                                                                         demo_source: Path) -> None:
    served = served_sequence(demo_server, demo_source)
    demo_server.faults.drop_after_bytes(served.size // 3, path_contains=served.first)
    demo_server.faults.ignore_range()
    demo_server.stats.reset()

    remote = list(ShardStream(served.urls, decoder=add_frame_index))

    assert remote == list(ShardStream(served.local, decoder=add_frame_index))
    assert demo_server.stats.body_bytes_sent(served.first) == served.size // 3 + served.size


def test_a_shard_that_changes_upstream_between_attempts_is_refused_not_spliced(demo_server: DemoServer,
                                                                               demo_source: Path) -> None:
    served = served_sequence(demo_server, demo_source)
    demo_server.faults.drop_after_bytes(served.size // 3, path_contains=served.first)
    samples = iter(ShardStream(served.urls[:1]))
    next(samples)
    demo_server.faults.replace_content(served.first, bytes(served.size))

    with pytest.raises(DatasetAssetsError, match=r"\?<redacted>: changed while it was read \(at byte \d+\)"):
        list(samples)


def test_a_shard_whose_connection_keeps_dropping_fails_naming_the_redacted_url(demo_server: DemoServer,
                                                                               demo_source: Path) -> None:
    served = served_sequence(demo_server, demo_source)
    demo_server.faults.drop_after_bytes(0, times=100, path_contains="/files/cubercnn/seq_000/")

    with pytest.raises(DatasetAssetsError, match=r"shards-\d+\.tar\?<redacted>: connection lost 4 times in a row, "
                                                 r"last at byte 0") as caught:
        list(ShardStream(served.urls))
    assert "signature" not in str(caught.value)


def test_http_error_names_the_redacted_url(demo_server: DemoServer) -> None:
    url = f"{demo_server.base_url}/files/cubercnn/seq_000/shards-0000.tar?expires=1&signature=forged"

    with pytest.raises(DatasetAssetsError, match=r"shards-0000\.tar\?<redacted>: HTTP 403") as caught:
        list(ShardStream([url]))
    assert "forged" not in str(caught.value)


@pytest.mark.parametrize("entry", ["http://[::1/x.tar?sig=abcdef", "https://user:pw@[::1/x.tar?sig=abcdef"])
def test_a_malformed_url_entry_is_an_error_naming_it_redacted_not_a_bare_value_error(entry: str) -> None:
    def open_entry() -> None:
        with open_url(entry):
            pass

    expected = r"^https?://\[::1/x\.tar\?<redacted>: not a valid URL \(Invalid IPv6 URL\)$"
    for read in (open_entry, lambda: list(ShardStream([entry]))):
        with pytest.raises(DatasetAssetsError, match=expected) as caught:
            read()
        assert "abcdef" not in str(caught.value) and "pw" not in str(caught.value)


def test_a_refused_unsigned_http_url_is_not_called_an_expired_link(plain_server: PlainServer) -> None:
    plain_server.fail("/open/shards-0000.tar", 403)

    with pytest.raises(DatasetAssetsError) as caught:
        list(ShardStream([plain_server.url("/open/shards-0000.tar")]))

    assert str(caught.value) == f"{plain_server.url('/open/shards-0000.tar')}: HTTP 403"


def test_stream_reads_s3_urls(tmp_path: Path, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    tars = write_sequence(tmp_path, "seq_a", 5, 2)
    for tar in tars:
        s3_bucket.client.upload_file(str(tar), s3_bucket.name, f"seq_a/{tar.name}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_bucket.endpoint_url)

    remote = list(ShardStream([f"s3://{s3_bucket.name}/seq_a/{tar.name}" for tar in tars], decoder=add_frame_index))

    assert [sample["frame"] for sample in remote] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("drops", [1, 2])
def test_an_s3_shard_whose_connection_drops_mid_body_resumes_from_the_byte_it_reached(
        tmp_path: Path, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch, drops: int) -> None:
    tars = write_sequence(tmp_path, "seq_a", 5, 5)
    s3_bucket.client.upload_file(str(tars[0]), s3_bucket.name, "seq_a/shards-0000.tar")
    endpoint = urlsplit(s3_bucket.endpoint_url)
    with DroppingProxy((endpoint.hostname, endpoint.port)) as proxy:
        proxy.drop_after(tars[0].stat().st_size // 3, times=drops)  # response headers and a third of the body
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)

        remote = list(ShardStream([f"s3://{s3_bucket.name}/seq_a/shards-0000.tar"], decoder=add_frame_index))

        assert proxy.dropped == drops
    assert remote == list(ShardStream(tars, decoder=add_frame_index))


def test_an_s3_shard_replaced_between_attempts_is_refused_not_spliced(
        tmp_path: Path, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    tars = write_sequence(tmp_path, "seq_a", 5, 5)
    s3_bucket.client.upload_file(str(tars[0]), s3_bucket.name, "seq_a/shards-0000.tar")
    endpoint = urlsplit(s3_bucket.endpoint_url)
    with DroppingProxy((endpoint.hostname, endpoint.port)) as proxy:
        proxy.drop_after(tars[0].stat().st_size // 3)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        samples = iter(ShardStream([f"s3://{s3_bucket.name}/seq_a/shards-0000.tar"]))
        next(samples)
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="seq_a/shards-0000.tar", Body=bytes(1 << 16))

        with pytest.raises(DatasetAssetsError, match=r"s3://.*/seq_a/shards-0000\.tar: changed while it was read"):
            list(samples)


def test_an_unreachable_s3_endpoint_is_an_error_naming_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as closed:  # a port nothing listens on once this socket is closed
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    for name, value in s3_fixtures.DUMMY_AWS_ENV.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(DatasetAssetsError, match=r"s3://bucket/seq_a/shards-0000\.tar: cannot read s3 object"):
        list(ShardStream(["s3://bucket/seq_a/shards-0000.tar"]))


def test_stream_rejects_a_crafted_tar(tmp_path: Path) -> None:
    path = tmp_path / "crafted.tar"
    with tarfile.open(path, "w") as tar:
        link = tarfile.TarInfo("seq_a_f0000.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tar.addfile(link)

    with pytest.raises(UnsafeArchiveError, match=r"crafted\.tar: member 'seq_a_f0000\.json' rejected: symlink"):
        list(ShardStream([path]))


def test_split_helpers_find_overlap_and_missing_files(tmp_path: Path) -> None:
    train = write_yaml(tmp_path / "local_train_tars.yaml", "tars:\n  a: [a/0.tar]\n  b: [b/0.tar]\n")
    validation = write_yaml(tmp_path / "local_validation_tars.yaml", "tars:\n  b: [b/0.tar]\n  c: [c/0.tar]\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "0.tar").write_bytes(b"")

    assert split_overlap(train, validation) == ["b", str(tmp_path / "b" / "0.tar")]
    assert missing_tars(train) == [str(tmp_path / "b" / "0.tar")]


def test_the_dagster_layer_does_not_import_torch() -> None:
    """Split checks read YAMLs through `core.tar_lists`; torch would add seconds to every Dagster process."""
    code = "import sys, dataset_assets.definitions; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_an_image_member_over_the_pixel_limit_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    """A 8200x8200 PNG of one colour is ~70 kB and would decode to a 800 MB float tensor: a decompression bomb."""
    buffer = io.BytesIO()
    Image.new("L", (8200, 8200)).save(buffer, format="PNG", compress_level=1)
    with ShardWriter(tmp_path) as writer:
        writer.write("seq_a_f0000", {"png": buffer.getvalue()})

    with pytest.raises(DatasetAssetsError, match=r"sample 'seq_a_f0000': member 'png' could not be decoded .*"
                                                 rf"8200x8200 pixels, over the {MAX_IMAGE_PIXELS} limit"):
        list(make_shard_dataset([str(tmp_path / "shards-0000.tar")]))


@pytest.mark.parametrize("extension", ["__key__", "__url__"])
def test_a_member_named_like_a_sample_field_is_an_error_not_a_replaced_key(tmp_path: Path, extension: str) -> None:
    shard = tmp_path / "shards-0000.tar"
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("seq_a_f0000.json", f"seq_a_f0000.{extension}"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))

    with pytest.raises(DatasetAssetsError, match=rf"shards-0000\.tar: sample 'seq_a_f0000': member {extension!r} "
                                                 r"has the name of the sample's own field"):
        list(ShardStream([str(shard)]))
