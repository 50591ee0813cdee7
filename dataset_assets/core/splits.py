"""ATEK-compatible train/validation splits of sequences and the tar-list YAMLs that publish them.

A split is either seeded (names sorted, shuffled with `random.Random(seed)` — the same
permutation ATEK gets from `random.seed(seed); random.shuffle(names)` — optionally cut to the
first `max_sequences`, first `int(n * ratio)` to train) or read from an explicit JSON
`{"train_sequences": [...], "val_sequences": [...]}`. The split is published as
`<prefix>_{train,validation,all}_tars.yaml`, byte-identical to what ATEK's downloader writes.
"""
from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from dataset_assets.core import storage
from dataset_assets.core.errors import DatasetAssetsError, SplitError
from dataset_assets.core.tar_lists import load_tars_by_sequence

SPLIT_JSON_KEYS = ("train_sequences", "val_sequences")
YAML_PREFIXES = ("local", "streamable")


@dataclass(frozen=True)
class Split:
    """Sequence names per split; `ignored` names an explicit split file listed but were unavailable."""

    train: tuple[str, ...]
    validation: tuple[str, ...]
    ignored: tuple[str, ...] = ()

    @property
    def all(self) -> tuple[str, ...]:
        return self.train + self.validation


def split_sequences(
    sequences: Iterable[str], ratio: float = 0.9, seed: int = 42, max_sequences: int | None = None
) -> Split:
    """Seeded split with ATEK's semantics; `max_sequences` of None or <= 0 keeps every sequence."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise SplitError("split_sequences", "ratio", ratio, "must be a number between 0 and 1")
    names = sorted(set(sequences))
    random.Random(seed).shuffle(names)
    if max_sequences is not None and max_sequences > 0:
        names = names[:max_sequences]
    cut = int(len(names) * ratio)
    return Split(train=tuple(names[:cut]), validation=tuple(names[cut:]))


def _read_json(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SplitError(str(path), "(file)", str(path), f"cannot be read ({error})") from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        lines = text.splitlines() or [""]
        line = lines[min(error.lineno, len(lines)) - 1]
        raise SplitError(
            str(path), "(document)", line, f"is not valid JSON ({error.msg} at line {error.lineno})"
        ) from error


def _names(document: Mapping[str, object], key: str, path: Path) -> list[str]:
    if key not in document:
        raise SplitError(str(path), key, None, "is required")
    value = document[key]
    if not isinstance(value, list):
        raise SplitError(str(path), key, value, "must be a list of sequence names")
    seen: set[str] = set()
    for index, name in enumerate(value):
        if not isinstance(name, str) or not name:
            raise SplitError(str(path), f"{key}[{index}]", name, "must be a non-empty string")
        if name in seen:
            raise SplitError(str(path), f"{key}[{index}]", name, f"is listed twice in {key}")
        seen.add(name)
    return value


def load_split_json(path: Path, available: Iterable[str]) -> Split:
    """Read an explicit split; names not in `available` are dropped and reported in `ignored`."""
    document = _read_json(path)
    if not isinstance(document, dict):
        raise SplitError(str(path), "(root)", document, f"must be an object with keys {list(SPLIT_JSON_KEYS)}")
    train = _names(document, "train_sequences", path)
    validation = _names(document, "val_sequences", path)
    train_set = set(train)
    for index, name in enumerate(validation):
        if name in train_set:
            raise SplitError(str(path), f"val_sequences[{index}]", name, "is also listed in train_sequences")
    present = set(available)
    return Split(
        train=tuple(name for name in train if name in present),
        validation=tuple(name for name in validation if name in present),
        ignored=tuple(name for name in train + validation if name not in present),
    )


def _tars_yaml(sequences: Sequence[str], tars_by_sequence: Mapping[str, Sequence[str]]) -> bytes:
    missing = [sequence for sequence in sequences if sequence not in tars_by_sequence]
    if missing:
        raise DatasetAssetsError(f"no tar list for sequences {missing} of the split")
    # Plain lists and str: yaml.dump would tag tuples as !!python/tuple, unlike ATEK's output.
    tars = {str(sequence): [str(tar) for tar in tars_by_sequence[sequence]] for sequence in sequences}
    return yaml.dump({"tars": tars}, default_flow_style=False).encode("utf-8")


def _published_sequences(path: Path) -> frozenset[str] | None:
    """The sequences a published split YAML lists; None when there is none or it cannot be read."""
    try:
        return frozenset(load_tars_by_sequence(path))
    except SplitError:
        return None


def write_split_yamls(
    folder: Path, split: Split, tars_by_sequence: Mapping[str, Sequence[str]], prefix: str
) -> dict[str, Path]:
    """Atomically write `<prefix>_{train,validation,all}_tars.yaml` into `folder`.

    `prefix` is "local" (entries are paths relative to `folder`) or "streamable" (entries are URLs, signed
    ones being live credentials: those files are owner-only, as the manifest snapshot is).
    Each file is replaced atomically, and the train and validation files on disk are disjoint at
    every moment, even if the process dies between two replacements: each is first shrunk to the
    sequences it keeps (old and new split), then grown to the new split. With a disjoint old split,
    (T0∩T1, V0), (T0∩T1, V0∩V1), (T1, V0∩V1) and (T1, V1) never share a sequence.
    """
    if prefix not in YAML_PREFIXES:
        raise ValueError(f"prefix must be one of {list(YAML_PREFIXES)}, got {prefix!r}")
    parts = {"train": split.train, "validation": split.validation, "all": split.all}
    # Render all three before writing any, so a missing tar list leaves no partial set behind.
    contents = {part: _tars_yaml(sequences, tars_by_sequence) for part, sequences in parts.items()}
    written = {part: folder / f"{prefix}_{part}_tars.yaml" for part in parts}
    private = prefix == "streamable"
    for part in ("train", "validation"):
        published = _published_sequences(written[part])
        if published is None:
            continue
        kept = [sequence for sequence in parts[part] if sequence in published]
        if len(kept) < len(published):
            storage.write_bytes_atomic(written[part], _tars_yaml(kept, tars_by_sequence), private)
    for part, data in contents.items():
        storage.write_bytes_atomic(written[part], data, private)
    return written
