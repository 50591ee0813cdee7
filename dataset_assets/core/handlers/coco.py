"""COCO 2017 as multi-label classification: image zips plus the instances JSON in the annotations zip.

`annotations_trainval2017.zip` holds `annotations/instances_{train,val}2017.json` (`images`,
`annotations` with `image_id` and `category_id`, `categories`); `train2017.zip` and `val2017.zip`
hold `<split>2017/<file_name>` JPEGs. An image's labels are the sorted indices, into the 80 COCO
categories in id order, of the categories of its instance annotations; an image without
annotations has none. The dataset's own split is kept: train2017 is `train`, val2017
`validation`. cocodataset.org publishes no sha256, so the catalog pins them.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy

from dataset_assets.core.handlers.archives import MAX_DOCUMENT_BYTES, SafeZip, zip_images
from dataset_assets.core.handlers.base import (
    MULTI_LABEL,
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

ANNOTATIONS = "annotations"
# (split, COCO split name, images artifact)
PARTS = (("train", "train2017", "train_images"), ("validation", "val2017", "val_images"))
CATEGORIES = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
)
CATEGORY_INDEX = {category_id: index for index, (category_id, _) in enumerate(CATEGORIES)}
CATEGORY_NAME = dict(CATEGORIES)
FIXTURE_COUNTS = {"train2017": 6, "val2017": 4}


def instances_member(coco_split: str) -> str:
    return f"annotations/instances_{coco_split}.json"


def _items(document: Any, key: str, member: str) -> list[dict[str, Any]]:
    items = document.get(key) if isinstance(document, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ArtifactError(ANNOTATIONS, member, f"field '{key}' must be a list of objects")
    return items


def _integer(item: dict[str, Any], key: str, member: str, where: str) -> int:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArtifactError(ANNOTATIONS, member, f"{where}: field '{key}' must be an integer (got {value!r})")
    return value


def _check_categories(document: Any, member: str) -> None:
    for category in _items(document, "categories", member):
        category_id = _integer(category, "id", member, "category")
        if CATEGORY_NAME.get(category_id) != category.get("name"):
            raise ArtifactError(ANNOTATIONS, member, f"category {category_id} is named {category.get('name')!r}, "
                                                     f"not a COCO 2017 category (expected "
                                                     f"{CATEGORY_NAME.get(category_id, 'no category')!r})")


def _labels_by_image(document: Any, member: str, image_ids: set[int]) -> dict[int, set[int]]:
    labels: dict[int, set[int]] = {image_id: set() for image_id in image_ids}
    for annotation in _items(document, "annotations", member):
        where = f"annotation {annotation.get('id')!r}"
        image_id = _integer(annotation, "image_id", member, where)
        category_id = _integer(annotation, "category_id", member, where)
        if image_id not in labels:
            raise ArtifactError(ANNOTATIONS, member, f"{where}: image_id {image_id} is not in 'images'")
        if category_id not in CATEGORY_INDEX:
            raise ArtifactError(ANNOTATIONS, member, f"{where}: label out of range: category_id {category_id} "
                                                     f"is not one of the {len(CATEGORIES)} COCO 2017 categories")
        labels[image_id].add(CATEGORY_INDEX[category_id])
    return labels


def _stem(file_name: Any, image_id: int, member: str) -> str:
    """The example key part of an image's `file_name`, which must be a plain `<key>.jpg` (or .jpeg, .png)."""
    stem, dot, extension = str(file_name).rpartition(".")
    if not isinstance(file_name, str) or not dot or extension.lower() not in ("jpg", "jpeg", "png"):
        raise ArtifactError(ANNOTATIONS, member, f"image {image_id}: file_name {file_name!r} is not an image name")
    return example_key(stem, ANNOTATIONS, member)


def _images(document: Any, member: str) -> dict[int, str]:
    """image id -> file name, each name checked to be a plain `<key>.jpg` that no other image's name shares."""
    images: dict[int, str] = {}
    by_stem: dict[str, int] = {}
    for image in _items(document, "images", member):
        image_id = _integer(image, "id", member, "image")
        file_name = image.get("file_name")
        stem = _stem(file_name, image_id, member)
        if image_id in images:
            raise ArtifactError(ANNOTATIONS, member, f"image id {image_id} is listed twice")
        if stem in by_stem:
            other = by_stem[stem]
            raise ArtifactError(ANNOTATIONS, member, f"image {image_id}: file_name {file_name!r} gives the example "
                                                     f"key of image {other} (file_name {images[other]!r})")
        images[image_id], by_stem[stem] = file_name, image_id
    return images


def _read_json(archive: SafeZip, member: str) -> Any:
    try:
        return json.loads(archive.read(member, MAX_DOCUMENT_BYTES))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(ANNOTATIONS, member, f"is not valid JSON ({error})") from None
    except RecursionError:
        raise ArtifactError(ANNOTATIONS, member, "is not valid JSON (nested deeper than Python's JSON parser "
                                                 "goes)") from None


class CocoMultiLabelHandler(Handler):
    name = "coco2017_multilabel"
    version = "1"
    description = "COCO 2017 images with the set of object categories present: 80 labels, 118k train / 5k val."
    homepage = "https://cocodataset.org/#download"
    artifacts = (
        Artifact(ANNOTATIONS, "annotations_trainval2017.zip",
                 "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"),
        Artifact("train_images", "train2017.zip", "http://images.cocodataset.org/zips/train2017.zip"),
        Artifact("val_images", "val2017.zip", "http://images.cocodataset.org/zips/val2017.zip"),
    )
    features = Features(MULTI_LABEL, tuple(name for _, name in CATEGORIES), image_mode="RGB")

    def plan(self, paths: Mapping[str, Path]) -> list[Record]:
        records: list[Record] = []
        with SafeZip(paths[ANNOTATIONS], ANNOTATIONS) as annotations:
            for split, coco_split, images_artifact in PARTS:
                with SafeZip(paths[images_artifact], images_artifact) as images_zip:
                    present = set(images_zip.names())
                records += self._part(_read_json(annotations, instances_member(coco_split)),
                                      split, coco_split, images_artifact, present)
        return records

    def _part(self, document: Any, split: str, coco_split: str, images_artifact: str,
              present: set[str]) -> list[Record]:
        member = instances_member(coco_split)
        _check_categories(document, member)
        images = _images(document, member)
        labels = _labels_by_image(document, member, set(images))
        records: list[Record] = []
        for image_id, file_name in sorted(images.items(), key=lambda item: item[1]):
            image_member = f"{coco_split}/{file_name}"
            if image_member not in present:
                raise ArtifactError(images_artifact, image_member,
                                    f"is listed in {member} but missing from the archive")
            label = self.features.check(tuple(sorted(labels[image_id])), ANNOTATIONS, member)
            key = f"{coco_split}_{file_name.rpartition('.')[0]}"
            records.append(Record(key, split, images_artifact, image_member, label,
                                  {"source_split": coco_split, "image_id": image_id}))
        return records

    def images(self, paths: Mapping[str, Path], records: Sequence[Record]) -> Iterator[bytes]:
        return zip_images(paths, records, self.features.image_mode)

    def write_fixture(self, folder: Path) -> Fixture:
        rng = numpy.random.default_rng(2017)
        documents: dict[str, bytes] = {}
        examples: list[FixtureExample] = []
        next_image_id, next_annotation_id = 9, 1
        for split, coco_split, images_artifact in PARTS:
            images: dict[str, bytes] = {}
            document: dict[str, Any] = {"info": {"description": "fixture"}, "licenses": [], "images": [],
                                        "annotations": [], "categories": [
                                            {"supercategory": "fixture", "id": i, "name": n} for i, n in CATEGORIES]}
            for position in range(FIXTURE_COUNTS[coco_split]):
                file_name = f"{next_image_id:012d}.jpg"
                images[f"{coco_split}/{file_name}"] = data = random_jpeg(rng, 20, 14)
                document["images"].append({"id": next_image_id, "file_name": file_name, "width": 20, "height": 14})
                # The first image of each split has no annotations: it must come out with no labels.
                categories = rng.choice(len(CATEGORIES), size=3 * min(position, 1) + position % 2)
                for index in categories.tolist():
                    document["annotations"].append({"id": next_annotation_id, "image_id": next_image_id,
                                                    "category_id": CATEGORIES[index][0], "iscrowd": 0,
                                                    "bbox": [1.0, 1.0, 5.0, 5.0], "area": 25.0})
                    next_annotation_id += 1
                label = tuple(sorted(set(categories.tolist())))
                examples.append(FixtureExample.from_encoded(f"{coco_split}_{next_image_id:012d}", split, label,
                                                            data, "RGB"))
                next_image_id += 1
            write_zip(folder / self.artifact(images_artifact).filename, images)
            documents[instances_member(coco_split)] = json.dumps(document).encode()
        write_zip(folder / self.artifact(ANNOTATIONS).filename, documents)
        return self.fixture_of(folder, examples)
