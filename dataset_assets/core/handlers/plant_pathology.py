"""Plant Pathology 2020 (FGVC7, Kaggle): one zip holding `train.csv` and an `images/` folder of JPEGs.

`train.csv` has one row per labelled image: `image_id`, then a 0/1 column per class (healthy,
multiple_diseases, rust, scab) with exactly one 1; the image is `images/<image_id>.jpg`. Rows of
`test.csv` carry no labels and are skipped. Kaggle serves the zip only to signed-in users who
accepted the competition rules, so the artifact is placed by hand (or fetched from a mirror the
catalog names), and Kaggle publishes no checksum, so the catalog pins its sha256. The dataset has
no labelled validation set: a seeded ratio splits it.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy

from dataset_assets.core.handlers.archives import MAX_DOCUMENT_BYTES, SafeZip, zip_images
from dataset_assets.core.handlers.base import (
    MANUAL,
    SINGLE_LABEL,
    Artifact,
    ArtifactError,
    Features,
    Fixture,
    FixtureExample,
    Handler,
    Record,
    example_key,
)
from dataset_assets.core.handlers.fixtures import random_jpeg, write_zip

ARCHIVE = "archive"
LABELS_MEMBER = "train.csv"
CLASSES = ("healthy", "multiple_diseases", "rust", "scab")
FIXTURE_TRAIN = 10
FIXTURE_TEST = 2


def _label(row: Mapping[str, str], line: int) -> int:
    values = [row[name] for name in CLASSES]
    if any(value not in ("0", "1") for value in values) or values.count("1") != 1:
        shown = ", ".join(f"{name}={value}" for name, value in zip(CLASSES, values))
        raise ArtifactError(ARCHIVE, LABELS_MEMBER, f"line {line}: label out of range: expected exactly one "
                                                    f"class set to 1 and the others 0, got {shown}")
    return values.index("1")


def _csv_lines(text: str) -> Iterator[tuple[int, list[str]]]:
    """(line, fields) of each CSV row; a row the csv module cannot read fails naming its line."""
    reader = csv.reader(io.StringIO(text))
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise ArtifactError(ARCHIVE, LABELS_MEMBER, f"line {reader.line_num}: is not readable CSV "
                                                        f"({error})") from None
        yield reader.line_num, values


def _rows(text: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row by column name) of each non-blank row; a row must have as many fields as the header."""
    reader = _csv_lines(text)
    header = next(reader, (0, None))[1]
    missing = [name for name in ("image_id",) + CLASSES if name not in (header or [])]
    if header is None or missing:
        raise ArtifactError(ARCHIVE, LABELS_MEMBER, f"lacks column(s) {', '.join(missing)} (header: {header})")
    repeated = [name for name in ("image_id",) + CLASSES if header.count(name) > 1]
    if repeated:
        raise ArtifactError(ARCHIVE, LABELS_MEMBER, f"the header names column(s) {', '.join(repeated)} more than "
                                                    f"once, so their values are ambiguous (header: {header})")
    for line, values in reader:
        if not values:
            continue
        if len(values) != len(header):
            raise ArtifactError(ARCHIVE, LABELS_MEMBER, f"line {line}: has {len(values)} fields, "
                                                        f"the header has {len(header)}")
        yield line, dict(zip(header, values))


class PlantPathologyHandler(Handler):
    name = "plant_pathology_2020"
    version = "1"
    description = "Apple leaf diseases (FGVC7 2020): RGB photos, 4 classes, 1,821 labelled images."
    homepage = "https://www.kaggle.com/c/plant-pathology-2020-fgvc7"
    artifacts = (
        Artifact(ARCHIVE, "plant-pathology-2020-fgvc7.zip", MANUAL, None,
                 "sign in to Kaggle, accept the rules at https://www.kaggle.com/c/plant-pathology-2020-fgvc7 and "
                 "run `kaggle competitions download -c plant-pathology-2020-fgvc7`"),
    )
    features = Features(SINGLE_LABEL, CLASSES, image_mode="RGB")

    def plan(self, paths: Mapping[str, Path]) -> list[Record]:
        with SafeZip(paths[ARCHIVE], ARCHIVE) as archive:
            try:
                text = archive.read(LABELS_MEMBER, MAX_DOCUMENT_BYTES).decode("utf-8-sig")
            except UnicodeDecodeError as error:
                raise ArtifactError(ARCHIVE, LABELS_MEMBER, f"is not UTF-8 text ({error})") from None
            members = set(archive.names())
        records: list[Record] = []
        lines: dict[str, int] = {}
        for line, row in _rows(text):
            key = example_key(row["image_id"] or "", ARCHIVE, f"{LABELS_MEMBER} line {line}")
            if key in lines:
                raise ArtifactError(ARCHIVE, LABELS_MEMBER, f"line {line}: image_id {key!r} is already listed "
                                                            f"on line {lines[key]}")
            lines[key] = line
            member = f"images/{key}.jpg"
            if member not in members:
                raise ArtifactError(ARCHIVE, member, f"is listed on line {line} of {LABELS_MEMBER} "
                                                     "but missing from the archive")
            records.append(Record(key, None, ARCHIVE, member, _label(row, line), {"image_id": key}))
        return records

    def images(self, paths: Mapping[str, Path], records: Sequence[Record]) -> Iterator[bytes]:
        return zip_images(paths, records, self.features.image_mode)

    def write_fixture(self, folder: Path) -> Fixture:
        rng = numpy.random.default_rng(2020)
        images = {f"Train_{index}": random_jpeg(rng, 24, 16) for index in range(FIXTURE_TRAIN)}
        tests = {f"Test_{index}": random_jpeg(rng, 24, 16) for index in range(FIXTURE_TEST)}
        labels = {image_id: int(rng.integers(0, len(CLASSES))) for image_id in images}
        train_csv = "image_id," + ",".join(CLASSES) + "\n" + "".join(
            f"{image_id}," + ",".join("1" if index == label else "0" for index in range(len(CLASSES))) + "\n"
            for image_id, label in labels.items())
        members = {"train.csv": train_csv.encode(), "test.csv": ("image_id\n" + "\n".join(tests) + "\n").encode(),
                   "sample_submission.csv": ("image_id," + ",".join(CLASSES) + "\n").encode()}
        members |= {f"images/{image_id}.jpg": data for image_id, data in (images | tests).items()}
        write_zip(folder / self.artifact(ARCHIVE).filename, members)
        examples = [FixtureExample.from_encoded(image_id, None, labels[image_id], images[image_id], "RGB")
                    for image_id in images]
        return self.fixture_of(folder, examples)
