"""MNIST: four gzipped IDX files (train/test images and labels), the format LeCun published.

An IDX file is a big-endian header (two zero bytes, type code 0x08 for unsigned bytes, the number
of dimensions, one uint32 per dimension) followed by the raw array: images are (n, 28, 28)
greyscale, labels (n,) digits 0..9. The dataset's own split is kept: the 60,000 training images
become `train`, the 10,000 test images `validation`. Files come from the mirror torchvision uses,
checked against the sha256 sums published alongside torchvision, TFDS and Keras.
"""
from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy

from dataset_assets.core.handlers.archives import png_from_array, read_gzip
from dataset_assets.core.handlers.base import (
    SINGLE_LABEL,
    Artifact,
    ArtifactError,
    Features,
    Fixture,
    FixtureExample,
    Handler,
    Record,
)

BASE_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
IMAGE_SIZE = 28
# (split, source split name, images artifact, labels artifact)
PARTS = (("train", "train", "train_images", "train_labels"), ("validation", "test", "test_images", "test_labels"))
FIXTURE_COUNTS = {"train": 12, "test": 5}


def _artifact(name: str, filename: str, sha256: str) -> Artifact:
    return Artifact(name, filename, BASE_URL + filename, sha256)


def parse_idx(data: bytes, artifact: str, ndim: int) -> numpy.ndarray:
    """The unsigned-byte array of an IDX file with `ndim` dimensions; anything else raises."""
    header = 4 + 4 * ndim
    if len(data) < header or data[:2] != b"\0\0" or data[2] != 0x08 or data[3] != ndim:
        raise ArtifactError(artifact, None, f"is not an IDX file of unsigned bytes with {ndim} dimension(s) "
                                            f"(header {data[:4].hex() or 'empty'})")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != math.prod(shape):
        raise ArtifactError(artifact, None, f"holds {len(data) - header} bytes after its header, "
                                            f"expected {math.prod(shape)} for shape {shape}")
    return numpy.frombuffer(data, dtype=numpy.uint8, offset=header).reshape(shape)


def idx_bytes(array: numpy.ndarray) -> bytes:
    """Gzipped IDX encoding of an unsigned-byte array (mtime 0, so the same array gives the same bytes)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(numpy.uint8).tobytes(), mtime=0)


class MnistHandler(Handler):
    name = "mnist"
    version = "1"
    description = "MNIST handwritten digits: 28x28 greyscale, 10 classes, 60,000 train / 10,000 test."
    homepage = "http://yann.lecun.com/exdb/mnist/"
    artifacts = (
        _artifact("train_images", "train-images-idx3-ubyte.gz",
                  "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        _artifact("train_labels", "train-labels-idx1-ubyte.gz",
                  "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        _artifact("test_images", "t10k-images-idx3-ubyte.gz",
                  "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        _artifact("test_labels", "t10k-labels-idx1-ubyte.gz",
                  "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    )
    features = Features(SINGLE_LABEL, tuple(str(digit) for digit in range(10)), image_mode="L")

    def _images(self, paths: Mapping[str, Path], artifact: str) -> numpy.ndarray:
        images = parse_idx(read_gzip(paths[artifact], artifact), artifact, 3)
        if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ArtifactError(artifact, None, f"holds images of shape {images.shape[1:]}, not 28x28")
        return images

    def plan(self, paths: Mapping[str, Path]) -> list[Record]:
        records: list[Record] = []
        for split, source_split, images_artifact, labels_artifact in PARTS:
            labels = parse_idx(read_gzip(paths[labels_artifact], labels_artifact), labels_artifact, 1)
            count = len(self._images(paths, images_artifact))
            if count != len(labels):
                raise ArtifactError(labels_artifact, None, f"holds {len(labels)} labels for {count} images "
                                                           f"in artifact '{images_artifact}'")
            for index, label in enumerate(labels.tolist()):
                self.features.check(label, labels_artifact, f"item {index}")
                records.append(Record(f"{source_split}_{index:05d}", split, images_artifact, f"item {index}",
                                      label, {"source_split": source_split, "index": index}))
        return records

    def images(self, paths: Mapping[str, Path], records: Sequence[Record]) -> Iterator[bytes]:
        arrays: dict[str, numpy.ndarray] = {}
        for record in records:
            if record.artifact not in arrays:
                arrays[record.artifact] = self._images(paths, record.artifact)
            yield png_from_array(arrays[record.artifact][record.metadata["index"]])

    def write_fixture(self, folder: Path) -> Fixture:
        rng = numpy.random.default_rng(8)
        folder.mkdir(parents=True, exist_ok=True)
        examples: list[FixtureExample] = []
        for split, source_split, images_artifact, labels_artifact in PARTS:
            count = FIXTURE_COUNTS[source_split]
            images = rng.integers(0, 256, size=(count, IMAGE_SIZE, IMAGE_SIZE), dtype=numpy.uint8)
            labels = rng.integers(0, 10, size=count, dtype=numpy.uint8)
            (folder / self.artifact(images_artifact).filename).write_bytes(idx_bytes(images))
            (folder / self.artifact(labels_artifact).filename).write_bytes(idx_bytes(labels))
            examples += [FixtureExample(f"{source_split}_{index:05d}", split, int(labels[index]), "L",
                                        (IMAGE_SIZE, IMAGE_SIZE), images[index].tobytes()) for index in range(count)]
        return self.fixture_of(folder, examples)
