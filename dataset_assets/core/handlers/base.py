"""The raw-artifact handler interface: what a dataset publishes and how it becomes examples.

A handler names a dataset's downloadable artifacts (an http(s) URL or `MANUAL`, plus the expected
sha256), declares its features (single- or multi-label class names), and turns verified artifact
files into examples in two steps: `plan` reads every label once (cheap) into `Record`s, and
`images` decodes the images of one batch of records into PNG bytes. The split keeps conversion
parallel and deterministic: workers run `images` over fixed batches, one output shard each.
`write_fixture` writes a tiny artifact set in the real format so the whole path runs offline.
"""
from __future__ import annotations

import io
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy
from PIL import Image

from dataset_assets.core.errors import DatasetAssetsError
from dataset_assets.core.storage import digest_file

MANUAL = "manual"
SINGLE_LABEL = "single_label"
MULTI_LABEL = "multi_label"
SPLITS = ("train", "validation")
Label = int | tuple[int, ...]
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")


class ArtifactError(DatasetAssetsError):
    """An artifact (or one member inside it) is missing, unsafe, corrupt or carries a bad label."""

    def __init__(self, artifact: str, member: str | None, problem: str) -> None:
        self.artifact = artifact
        self.member = member
        self.problem = problem
        where = f"artifact '{artifact}'" + (f", member '{member}'" if member else "")
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> tuple[type[ArtifactError], tuple[str, str | None, str]]:
        # Raised inside conversion worker processes: must survive the trip back through pickle.
        return type(self), (self.artifact, self.member, self.problem)


def example_key(key: str, artifact: str, member: str) -> str:
    """`key` if it can name a shard sample (no dots, no slashes), else raise naming where it came from."""
    if not _KEY.match(key):
        raise ArtifactError(artifact, member, f"gives example key {key!r}: only letters, digits, '_' and '-' "
                                              "(at most 128) are allowed")
    return key


@dataclass(frozen=True)
class Artifact:
    """One downloadable file: `url` is http(s) or `MANUAL` (a person must place it by hand).

    `sha256` is None when the provider publishes no checksum; the catalog must then pin one.
    """

    name: str
    filename: str
    url: str
    sha256: str | None = None
    instructions: str = ""


@dataclass(frozen=True)
class Features:
    """What each example carries besides its PNG image: one class index or a set of them."""

    task: str
    label_names: tuple[str, ...]
    image_mode: str = "RGB"

    def check(self, label: Label, artifact: str, member: str) -> Label:
        """Return `label` if every index names a class, else raise naming artifact and member."""
        if (self.task == SINGLE_LABEL) != isinstance(label, int):
            raise ArtifactError(artifact, member, f"label {label!r} does not fit a {self.task} dataset")
        classes = len(self.label_names)
        for index in (label,) if isinstance(label, int) else label:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < classes:
                raise ArtifactError(artifact, member, f"label {index!r} is out of range (0..{classes - 1}, "
                                                      f"{classes} classes)")
        return label

    def to_dict(self) -> dict[str, object]:
        """The dataset-level description written to `features.json`."""
        label_member = {"label.cls": "class index (integer text)"} if self.task == SINGLE_LABEL else {
            "labels.json": "sorted JSON list of class indices"}
        return {
            "task": self.task,
            "label_names": list(self.label_names),
            "image_mode": self.image_mode,
            "members": {"image.png": f"image (PNG, mode {self.image_mode})", **label_member,
                        "metadata.json": "source artifact and member, plus dataset-specific fields"},
        }


@dataclass(frozen=True)
class Record:
    """A planned example without its pixels: where its image lives and what its label is."""

    key: str
    split: str | None
    artifact: str
    member: str
    label: Label
    metadata: Mapping[str, object]


@dataclass(frozen=True)
class Example:
    """A converted example: PNG image bytes, label and metadata, ready to become a shard sample."""

    record: Record
    image: bytes

    def sample(self) -> dict[str, bytes]:
        """The shard sample: `image.png`, `label.cls` or `labels.json`, and `metadata.json`."""
        record = self.record
        metadata = {**record.metadata, "artifact": record.artifact, "member": record.member}
        sample = {"image.png": self.image, "metadata.json": _json_bytes(metadata)}
        if isinstance(record.label, int):
            sample["label.cls"] = str(record.label).encode()
        else:
            sample["labels.json"] = _json_bytes(list(record.label))
        return sample


@dataclass(frozen=True)
class FixtureExample:
    """What a fixture promises one converted example holds: pixels as `mode`, `size` and raw bytes."""

    key: str
    split: str | None
    label: Label
    mode: str
    size: tuple[int, int]
    pixels: bytes

    @classmethod
    def from_encoded(cls, key: str, split: str | None, label: Label, encoded: bytes, mode: str) -> FixtureExample:
        with Image.open(io.BytesIO(encoded)) as image:
            converted = image.convert(mode)
            return cls(key, split, label, mode, converted.size, converted.tobytes())

    def array(self) -> numpy.ndarray:
        channels = len(self.mode)
        shape = (self.size[1], self.size[0]) + ((channels,) if channels > 1 else ())
        return numpy.frombuffer(self.pixels, dtype=numpy.uint8).reshape(shape)


@dataclass(frozen=True)
class Fixture:
    """A tiny artifact set written by `Handler.write_fixture`: file per artifact, its sha256, the examples."""

    folder: Path
    sha256: Mapping[str, str]
    examples: tuple[FixtureExample, ...]


def _json_bytes(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class Handler(ABC):
    """One dataset's artifacts and the code that turns them into uniform examples."""

    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str]
    homepage: ClassVar[str]
    artifacts: ClassVar[tuple[Artifact, ...]]
    features: ClassVar[Features]

    def artifact(self, name: str) -> Artifact:
        for artifact in self.artifacts:
            if artifact.name == name:
                return artifact
        raise KeyError(f"handler {self.name!r} has no artifact {name!r}")

    @abstractmethod
    def plan(self, paths: Mapping[str, Path]) -> list[Record]:
        """Every example's record, in a stable order, labels checked; `paths` maps artifact name to file."""

    @abstractmethod
    def images(self, paths: Mapping[str, Path], records: Sequence[Record]) -> Iterator[bytes]:
        """PNG bytes of each record's image, in order; a member that does not decode raises ArtifactError."""

    @abstractmethod
    def write_fixture(self, folder: Path) -> Fixture:
        """Write a tiny artifact set of the real format into `folder`, one file per artifact filename."""

    def fixture_of(self, folder: Path, examples: Sequence[FixtureExample]) -> Fixture:
        """The `Fixture` of the artifact files `write_fixture` just wrote into `folder`."""
        sha256 = {artifact.name: digest_file(folder / artifact.filename).sha256 for artifact in self.artifacts}
        return Fixture(folder, sha256, tuple(examples))

    def convert(self, paths: Mapping[str, Path]) -> Iterator[Example]:
        """Every example of the verified artifacts at `paths`, in plan order (serial; see core.handlers.records)."""
        records = self.plan(paths)
        for record, image in zip(records, self.images(paths, records), strict=True):
            yield Example(record, image)
