"""Turn split YAMLs into tar lists and tar lists into streaming PyTorch datasets.

`load_yaml_and_extract_tar_list` has ATEK's semantics (URLs kept, relative paths resolved
against the YAML's folder). `make_shard_dataset` wraps `webdataset.WebDataset` so shards are
split across nodes and DataLoader workers without duplicates, and decodes members with an
explicit allow-list (images, JSON, `.npy` without pickle); nothing is ever unpickled or
`torch.load`-ed, whatever a shard contains.
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import numpy
import webdataset
import yaml
from torch.utils.data import IterableDataset

from dataset_assets.core.errors import DatasetAssetsError, SplitError
from dataset_assets.core.redaction import redact_text

URL_SCHEMES = frozenset({"http", "https", "s3", "gs"})


def is_url(entry: str) -> bool:
    """Whether a tar-list entry is kept as a URL rather than resolved as a path."""
    return urlsplit(entry).scheme.lower() in URL_SCHEMES


def _read_yaml(path: Path) -> object:
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except OSError as error:
        raise SplitError(str(path), "(file)", str(path), f"cannot be read ({error})") from error
    except yaml.YAMLError as error:
        raise SplitError(str(path), "(document)", str(error).splitlines()[0], "is not valid YAML") from error


def _sequence_entries(path: Path, sequence: object, entries: object) -> list[str]:
    if not isinstance(entries, list):
        raise SplitError(str(path), f"tars.{sequence}", entries, "must be a list of tar paths or URLs")
    for index, entry in enumerate(entries):
        if not isinstance(entry, str) or not entry:
            raise SplitError(str(path), f"tars.{sequence}[{index}]", entry, "must be a non-empty string")
    return entries


def load_yaml_and_extract_tar_list(yaml_path: str | Path) -> list[str]:
    """All tars of a `{"tars": {sequence: [path or URL, ...]}}` YAML, in file order.

    URLs (http, https, s3, gs) are kept as they are; any other entry is joined to the YAML's
    folder and returned as an absolute path, so a `pipe:` entry can never reach a shell.
    """
    path = Path(yaml_path)
    document = _read_yaml(path)
    if not isinstance(document, dict) or "tars" not in document:
        raise SplitError(str(path), "tars", document, "is required: the YAML must be a mapping with a 'tars' key")
    sequences = document["tars"]
    if not isinstance(sequences, dict):
        raise SplitError(str(path), "tars", sequences, "must map sequence names to lists of tars")
    folder = os.path.dirname(os.path.abspath(path))
    tars: list[str] = []
    for sequence, entries in sequences.items():
        for entry in _sequence_entries(path, sequence, entries):
            tars.append(entry if is_url(entry) else os.path.abspath(os.path.join(folder, entry)))
    return tars


def _decode_plain(key: str, data: bytes) -> object:
    """webdataset handler for the non-image members we trust; others stay raw bytes."""
    extension = key.rpartition(".")[2].lower()
    if extension == "json":
        return json.loads(data)
    if extension == "npy":
        return numpy.load(io.BytesIO(data), allow_pickle=False)
    return None


def _raise_naming_sample(error: Exception) -> bool:
    """webdataset error handler: its DecodingError has an empty message, so name shard, sample and member.

    The shard URL is redacted because streamable tar lists carry signed, expiring links.
    """
    if isinstance(error, webdataset.DecodingError):
        shard = redact_text(str(error.url))
        raise DatasetAssetsError(
            f"{shard}: sample {error.key!r}: member {error.k!r} could not be decoded ({error.__cause__!r})"
        ) from error
    raise error


def _check_tar_list(tar_list: Sequence[str]) -> list[str]:
    if isinstance(tar_list, str):
        raise TypeError("tar_list must be a sequence of paths or URLs, not a single string")
    tars = [str(tar) for tar in tar_list]
    if not tars:
        raise DatasetAssetsError("tar list is empty: nothing to load")
    for tar in tars:
        if urlsplit(tar).scheme.lower() == "pipe":
            raise DatasetAssetsError(f"tar list entry {tar!r} is a shell pipe; only paths and URLs are loaded")
    return tars


def make_shard_dataset(
    tar_list: Sequence[str],
    decoder: Callable[[dict], dict] | None = None,
    shuffle_buffer: int = 0,
) -> IterableDataset:
    """A streaming dataset of decoded samples: images as float CHW tensors, JSON as dicts, npy as arrays.

    Each sample also carries webdataset's `__key__` and `__url__`. Shards are split by node and
    by DataLoader worker; a worker left without shards yields nothing instead of failing.
    """
    dataset = webdataset.WebDataset(
        _check_tar_list(tar_list),
        shardshuffle=False,
        nodesplitter=webdataset.split_by_node,
        workersplitter=webdataset.split_by_worker,
        empty_check=False,
    )
    dataset = dataset.shuffle(shuffle_buffer).decode(
        webdataset.imagehandler("torchrgb"), _decode_plain, pre=[], post=[], handler=_raise_naming_sample
    )
    return dataset.map(decoder) if decoder is not None else dataset
