"""Turn split YAMLs into tar lists, and tar lists into streaming or map-style PyTorch datasets.

`load_yaml_and_extract_tar_list` has ATEK's semantics (URLs kept, relative paths resolved
against the YAML's folder). `ShardStream` is an `IterableDataset` that reads shards sequentially
from local paths, http(s) URLs or s3 URLs, split across distributed ranks and DataLoader workers
(each shard goes to exactly one (rank, worker) slot), with an optional seeded shuffle buffer.
`IndexedShardDataset` is a map-style `Dataset` over local shard sets: `ds[i]` is one positional
read through the set's `_index.json`. Both expand zstd blocks and decode members with an explicit
allow-list (images to float CHW tensors, `.npy` to tensors without pickle, JSON, text), which a
user can extend or override per extension, then apply an optional `decoder` hook to the sample.
Nothing is ever unpickled or `torch.load`-ed, whatever a shard contains.
"""
from __future__ import annotations

import io
import itertools
import json
import multiprocessing
import operator
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from dataset_assets.core.errors import DatasetAssetsError
from dataset_assets.core.index import INDEX_FILE, Block, IndexEntry, Member, read_index
from dataset_assets.core.preprocess import check_image_pixels
from dataset_assets.core.redaction import redact_text, redact_url
from dataset_assets.core.remote_shards import open_url
from dataset_assets.core.shards import SAMPLE_FIELDS, ShardFiles, iter_shard_samples, iter_stream_samples
from dataset_assets.core.tar_lists import is_url, load_yaml_and_extract_tar_list, url_scheme

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "ppm", "pgm", "pbm", "bmp", "webp", "tif", "tiff"})
# The Pillow formats of those extensions: Pillow sniffs the format from the bytes, and some of its
# other plugins are no place for untrusted input (EPS runs Ghostscript).
IMAGE_FORMATS = ("JPEG", "PNG", "PPM", "BMP", "WEBP", "TIFF")

__all__ = ["IndexedShardDataset", "SampleDecoding", "ShardStream", "load_yaml_and_extract_tar_list",
           "make_shard_dataset"]

MemberDecoder = Callable[[bytes], object]
SampleDecoder = Callable[[dict[str, object]], object]
RawSample = dict[str, bytes | bytearray | memoryview]


# Decoding: an allow-list by extension; anything else stays bytes.


def decode_image(data: bytes) -> torch.Tensor:
    """An RGB image as a float32 (3, H, W) tensor in [0, 1], like webdataset's "torchrgb"."""
    with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
        check_image_pixels(image)
        pixels = numpy.array(image.convert("RGB"))
    return torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255)


def decode_npy(data: bytes) -> torch.Tensor | numpy.ndarray:
    """A `.npy` array as a tensor (numpy array if torch has no such dtype); pickled arrays are refused."""
    array = numpy.load(io.BytesIO(data), allow_pickle=False)
    if not array.dtype.isnative:  # a big-endian file, say: torch.from_numpy takes native byte order only
        array = array.astype(array.dtype.newbyteorder("="))
    try:
        return torch.from_numpy(array)
    except TypeError:
        return array


def decode_json(data: bytes) -> object:
    return json.loads(bytes(data))


def decode_text(data: bytes) -> str:
    return str(data, "utf-8")


def decode_class(data: bytes) -> int:
    return int(str(data, "ascii").strip())


DEFAULT_DECODERS: Mapping[str, MemberDecoder] = {
    **{extension: decode_image for extension in IMAGE_EXTENSIONS},
    "npy": decode_npy,
    "json": decode_json,
    "txt": decode_text,
    "cls": decode_class,
}


class SampleDecoding:
    """Decode raw members by extension (full extension first, then its last dotted part), then apply `hook`.

    `member_decoders` adds or overrides per-extension decoders; mapping an extension to None
    keeps that member as raw bytes. Errors name the shard (redacted), sample and member.
    """

    def __init__(self, member_decoders: Mapping[str, MemberDecoder | None] | None = None,
                 hook: SampleDecoder | None = None) -> None:
        self.decoders: dict[str, MemberDecoder | None] = {**DEFAULT_DECODERS, **(member_decoders or {})}
        self.hook = hook

    def _member(self, shard: str, key: str, extension: str, data: bytes) -> object:
        decoder = self.decoders.get(extension, self.decoders.get(extension.rpartition(".")[2].lower()))
        if decoder is None:
            return bytes(data)  # a view of a mapped shard would not pickle to the DataLoader's main process
        try:
            return decoder(data)
        except Exception as error:  # any decoder failure becomes one error naming where it happened
            raise DatasetAssetsError(
                f"{redact_text(shard)}: sample {key!r}: member {extension!r} could not be decoded ({error!r})"
            ) from error

    def __call__(self, shard: str, key: str, sample: RawSample) -> object:
        clashing = SAMPLE_FIELDS.intersection(sample)
        if clashing:  # it would replace the key or shard: webdataset fails the shard on it too
            raise DatasetAssetsError(f"{redact_text(shard)}: sample {key!r}: member {min(clashing)!r} has the name "
                                     f"of the sample's own field")
        decoded: dict[str, object] = {"__key__": key, "__url__": shard}
        decoded.update((ext, self._member(shard, key, ext, data)) for ext, data in sample.items())
        return self.hook(decoded) if self.hook is not None else decoded


def _check_tar_list(tar_list: Sequence[str | Path]) -> list[str]:
    if isinstance(tar_list, (str, Path)):
        raise TypeError("tar_list must be a sequence of paths or URLs, not a single string")
    tars = [str(tar) for tar in tar_list]
    if not tars:
        raise DatasetAssetsError("tar list is empty: nothing to load")
    for tar in tars:
        if url_scheme(tar) == "pipe":
            raise DatasetAssetsError(f"tar list entry {tar!r} is a shell pipe; only paths and URLs are loaded")
    return tars


def _distributed(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if (rank is None) != (world_size is None):
        raise ValueError(f"rank and world_size must be given together, got rank={rank}, world_size={world_size}")
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    return rank, world_size


def _url_samples(url: str) -> Iterator[tuple[str, str, RawSample]]:
    with open_url(url) as stream:
        for key, sample in iter_stream_samples(stream, redact_url(url)):
            yield url, key, sample


def _shuffled(samples: Iterator[tuple[str, str, RawSample]], size: int,
              rng: random.Random) -> Iterator[tuple[str, str, RawSample]]:
    """Reservoir-style shuffle buffer: each incoming sample swaps with a random buffered one."""
    buffer: list[tuple[str, str, RawSample]] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        slot = rng.randrange(size)
        buffer[slot], sample = sample, buffer[slot]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


class ShardStream(IterableDataset):
    """Stream decoded samples of a tar list (local paths, http(s) or s3 URLs), shards read sequentially.

    The shard list is split across ranks (`rank`/`world_size`, else `torch.distributed` when
    initialized) and DataLoader workers: slot `rank * workers + worker` reads shards
    `slot, slot + slots, ...`, so every sample is read exactly once per epoch. With more slots than
    shards some slots read nothing (for DDP, give every rank as many shards). `shuffle_buffer > 0`
    shuffles the shard order (same permutation on every rank, seeded by `seed` and `set_epoch`)
    and samples through a buffer of that many raw samples.

    Local shards are read through a memory map. With `views=True` their raw members are
    zero-copy read-only `memoryview`s of the map (the map lives while any view does) instead of
    `bytes` copies, for decoders that take any bytes-like object (`numpy.frombuffer`,
    `torch.frombuffer`, PIL and the default decoders do); members without a decoder still come
    out of `__iter__` as `bytes`, so decoded samples always pickle to DataLoader workers' parent.
    """

    def __init__(
        self,
        tar_list: Sequence[str | Path],
        decoder: SampleDecoder | None = None,
        member_decoders: Mapping[str, MemberDecoder | None] | None = None,
        shuffle_buffer: int = 0,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        views: bool = False,
    ) -> None:
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.tars = _check_tar_list(tar_list)
        self.decoding = SampleDecoding(member_decoders, decoder)
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.views = views
        _distributed(rank, world_size)
        self._epoch = multiprocessing.RawValue("q", 0)

    @property
    def epoch(self) -> int:
        return self._epoch.value

    def set_epoch(self, epoch: int) -> None:
        """Shared memory carries `epoch` to DataLoader workers, also persistent ones, which keep
        the copy of this dataset they were started with across epochs."""
        self._epoch.value = epoch

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        if multiprocessing.context.get_spawning_popen() is None:  # a copy, not a worker: the epoch by value
            state["_epoch"] = self.epoch
        else:  # a spawned worker starts without this process's torch.distributed group: send its rank along
            state["rank"], state["world_size"] = _distributed(self.rank, self.world_size)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        if isinstance(state["_epoch"], int):
            state["_epoch"] = multiprocessing.RawValue("q", state["_epoch"])
        self.__dict__.update(state)

    def _slot(self) -> tuple[int, int]:
        rank, world_size = _distributed(self.rank, self.world_size)
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        return rank * workers + worker_id, world_size * workers

    def shards_for_this_worker(self) -> list[str]:
        """The shards this (rank, worker) slot reads this epoch."""
        order = list(self.tars)
        if self.shuffle_buffer:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        slot, slots = self._slot()
        return order[slot::slots]

    def raw_samples(self) -> Iterator[tuple[str, str, RawSample]]:
        """`(shard, key, {extension: data})` of this slot's shards, undecoded and unshuffled."""
        return itertools.chain.from_iterable(map(self._shard_samples, self.shards_for_this_worker()))

    def _shard_samples(self, tar: str) -> Iterator[tuple[str, str, RawSample]]:
        return _url_samples(tar) if is_url(tar) else iter_shard_samples(tar, self.views)

    def __iter__(self) -> Iterator[object]:
        samples = self.raw_samples()
        if self.shuffle_buffer:
            slot = self._slot()[0]
            samples = _shuffled(samples, self.shuffle_buffer, random.Random(f"{self.seed}:{self.epoch}:{slot}"))
        for shard, key, sample in samples:
            yield self.decoding(shard, key, sample)


def make_shard_dataset(
    tar_list: Sequence[str | Path], decoder: SampleDecoder | None = None, shuffle_buffer: int = 0
) -> ShardStream:
    """A `ShardStream` of decoded samples: images as float CHW tensors, JSON as objects, npy as tensors.

    Each sample also carries `__key__` and `__url__` (the shard it came from).
    """
    return ShardStream(tar_list, decoder=decoder, shuffle_buffer=shuffle_buffer)


class IndexedShardDataset(Dataset):
    """Map-style dataset over indexed local shard sets: `len(ds)`, and `ds[i]` by positional reads.

    `sources` are shard paths (each must be listed in the `_index.json` of its own folder, as in
    a split YAML's tar list) or shard-set folders (every shard of their index, in index order).
    Samples are numbered in source order, then index order, which is the order `ShardStream`
    yields them in without shuffling. Reads go through `ShardFiles`: per-thread, per-process
    handles, so it is safe from threads and from DataLoader workers (`num_workers > 0`).
    """

    def __init__(
        self,
        sources: Sequence[str | Path],
        decoder: SampleDecoder | None = None,
        member_decoders: Mapping[str, MemberDecoder | None] | None = None,
        max_open_files: int = 64,
    ) -> None:
        paths: list[str] = []
        self.keys: list[str] = []
        self._rows: list[tuple[int, tuple[Member, ...], Block | None]] = []
        for folder, shards in _resolve_sources(_check_tar_list(sources)):
            index = read_index(folder)
            entries: dict[int, list[IndexEntry]] = {number: [] for number in range(len(index.shards))}
            for entry in index.entries:
                entries[entry.shard].append(entry)
            by_name = {shard.name: number for number, shard in enumerate(index.shards)}
            for name, source in shards or [(name, str(folder / name)) for name in by_name]:
                if name not in by_name:
                    raise DatasetAssetsError(f"{folder / name}: not listed in {folder / INDEX_FILE}")
                paths.append(source)
                for entry in entries[by_name[name]]:
                    self.keys.append(entry.key)
                    block = None if entry.block is None else index.blocks[entry.block]
                    self._rows.append((len(paths) - 1, entry.members, block))
        self.files = ShardFiles(paths, max_open=max_open_files)
        self.decoding = SampleDecoding(member_decoders, decoder)

    def __len__(self) -> int:
        return len(self._rows)

    def read(self, index: int) -> tuple[str, str, RawSample]:
        """`(shard, key, {extension: bytes})` of sample `index` (any integer, numpy's and torch's too), undecoded."""
        try:
            number = operator.index(index)
        except TypeError:
            raise TypeError(f"sample index must be an integer, not {type(index).__name__}") from None
        if not -len(self._rows) <= number < len(self._rows):
            raise IndexError(f"sample index {number} out of range for {len(self._rows)} samples")
        number %= len(self._rows)
        shard, members, block = self._rows[number]
        return self.files.paths[shard], self.keys[number], self.files.read_members(shard, members, block)

    def __getitem__(self, index: int) -> object:
        return self.decoding(*self.read(index))


def _resolve_sources(sources: Sequence[str]) -> list[tuple[Path, list[tuple[str, str]]]]:
    """Group sources into (index folder, [(shard name, source)]); an empty list means the whole folder.

    A shard keeps its source as spelled, which `ShardStream` reports as `__url__` too.
    """
    resolved: list[tuple[Path, list[tuple[str, str]]]] = []
    for source in sources:
        if is_url(source):
            raise DatasetAssetsError(f"{redact_url(source)}: the map-style dataset reads local shards only")
        path = Path(source)
        if path.is_dir():
            resolved.append((path, []))
        elif resolved and resolved[-1][0] == path.parent and resolved[-1][1]:
            resolved[-1][1].append((path.name, source))
        else:
            resolved.append((path.parent, [(path.name, source)]))
    return resolved
