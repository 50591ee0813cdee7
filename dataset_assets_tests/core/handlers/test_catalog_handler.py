"""Catalog datasets of kind `handler`: values are read; each bad field is named with its value."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dataset_assets.core.catalog import ArtifactPin, load_catalog
from dataset_assets.core.errors import CatalogError

DIGEST = "ab" * 32
VALID = {
    "kind": "handler",
    "handler": "mnist",
    "base_url": "http://127.0.0.1:1/mnist",
    "artifacts": {"train_labels": {"sha256": DIGEST}, "test_labels": {"url": "manual"}},
    "samples_per_shard": 50,
    "split": {"ratio": 0.8, "seed": 3},
    "owners": ["ml@example.com"],
}


def load_with(tmp_path: Path, **changes: object) -> object:
    body = {key: value for key, value in (VALID | changes).items() if value is not None}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"datasets": {"digits": body}}))
    return load_catalog(path)


def test_handler_dataset_values_are_read(tmp_path: Path) -> None:
    spec = load_with(tmp_path).dataset("digits")
    assert spec.kind == "handler" and spec.owners == ("ml@example.com",)
    assert spec.handler.name == "mnist" and spec.handler.samples_per_shard == 50
    assert spec.handler.base_url == "http://127.0.0.1:1/mnist"
    assert spec.handler.artifacts == {"train_labels": ArtifactPin(sha256=DIGEST), "test_labels": ArtifactPin("manual")}
    assert (spec.split.ratio, spec.split.seed) == (0.8, 3)
    assert spec.preprocess == {}


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"handler": "imagenet"}, "handler", "must be one of: coco2017_multilabel, mnist, plant_pathology_2020"),
        ({"base_url": "ftp://mirror/mnist"}, "base_url", "must be an http(s) URL"),
        ({"artifacts": {"images": {"sha256": DIGEST}}}, "artifacts.images", "is not an artifact of handler mnist"),
        ({"artifacts": {"train_labels": {"sha256": "ABC"}}}, "artifacts.train_labels.sha256",
         "must be 64 lowercase hex digits"),
        ({"artifacts": {"train_labels": {"url": "file:///etc/passwd"}}}, "artifacts.train_labels.url",
         "must be an http(s) URL or 'manual'"),
        ({"artifacts": {"train_labels": {"md5": DIGEST}}}, "artifacts.train_labels.md5", "is not a known field"),
        ({"samples_per_shard": 0}, "samples_per_shard", "must be a positive integer"),
        ({"split": {"ratio": 1.5}}, "split.ratio", "must be a number between 0 and 1"),
        ({"split": {"max_sequences": 3}}, "split.max_sequences", "is not used by handler datasets"),
        ({"manifest": {"url": "http://x/m.json"}}, "manifest", "is not a known field"),
    ],
)
def test_bad_handler_fields_name_file_field_and_value(tmp_path: Path, changes: dict, field: str,
                                                      problem: str) -> None:
    with pytest.raises(CatalogError) as raised:
        load_with(tmp_path, **changes)
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'catalog.yaml'}: field 'datasets.digits.{field}' {problem}")
    assert "(got " in message
