"""Helpers shared by the handler tests: pinned catalogs for fixtures and readers of record shards."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy
import webdataset
import yaml
from PIL import Image

from dataset_assets.core.catalog import ArtifactPin, Catalog, HandlerSource, load_catalog
from dataset_assets.core.handlers.base import SINGLE_LABEL, SPLITS, Features, Fixture, FixtureExample, Handler
from dataset_assets.core.shards import iter_tar_samples
from dataset_assets.core.splits import split_sequences
from dataset_assets.core.storage import digest_file


def pinned_source(handler: Handler, folder: Path, samples_per_shard: int = 4) -> HandlerSource:
    """A catalog source pinning the sha256 of whatever artifact files `folder` holds now."""
    pins = {artifact.name: ArtifactPin(sha256=digest_file(folder / artifact.filename).sha256)
            for artifact in handler.artifacts}
    return HandlerSource(name=handler.name, artifacts=pins, samples_per_shard=samples_per_shard)


def handler_dataset(handler: Handler, fixture: Fixture, base_url: str | None, samples_per_shard: int = 4) -> dict:
    """The catalog YAML body of a handler dataset fed by `fixture` (served at `base_url`, if any)."""
    body: dict = {"kind": "handler", "handler": handler.name, "samples_per_shard": samples_per_shard,
                  "artifacts": {name: {"sha256": sha256} for name, sha256 in fixture.sha256.items()},
                  "split": {"ratio": 0.7, "seed": 7}}
    if base_url is not None:
        body["base_url"] = base_url
    return body


def write_catalog(tmp_path: Path, datasets: dict[str, dict]) -> Catalog:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"datasets": datasets}))
    return load_catalog(path)


def decoded_label(sample: dict, features: Features) -> int | tuple[int, ...]:
    """The label of a raw (undecoded) sample: `label.cls` text or the `labels.json` list."""
    if features.task == SINGLE_LABEL:
        return int(sample["label.cls"])
    return tuple(json.loads(sample["labels.json"]))


def shard_paths(records: Path, split: str) -> list[str]:
    return [str(records / split / name) for name in
            json.loads((records / "features.json").read_text())["splits"][split]["shards"]]


def read_with_webdataset(paths: list[str]) -> dict[str, dict]:
    """Every sample of `paths` as plain `webdataset` streams it, by key."""
    dataset = webdataset.WebDataset(paths, shardshuffle=False, empty_check=False)
    return {sample["__key__"]: sample for sample in dataset}


def read_with_tar_reader(paths: list[str]) -> dict[str, dict]:
    """Every sample of `paths` through `core.shards.iter_tar_samples` (the safe reader), by key."""
    return {key: sample for path in paths for key, sample in iter_tar_samples(Path(path))}


def pixels(png: bytes) -> numpy.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return numpy.asarray(image)


def expected_splits(fixture: Fixture, ratio: float, seed: int) -> dict[str, list[FixtureExample]]:
    """The fixture's examples per split: their own, else ATEK's seeded ratio over sorted keys."""
    seeded = split_sequences([example.key for example in fixture.examples if example.split is None], ratio, seed)
    train = set(seeded.train)
    return {split: [example for example in fixture.examples
                    if (example.split or ("train" if example.key in train else "validation")) == split]
            for split in SPLITS}


def assert_samples_match(samples: dict[str, dict], examples: list[FixtureExample], features: Features) -> None:
    """Raw samples hold exactly `examples`: same keys, labels and pixels, and name their source member."""
    expected = {example.key: example for example in examples}
    assert sorted(samples) == sorted(expected)
    for key, sample in samples.items():
        assert decoded_label(sample, features) == expected[key].label, key
        numpy.testing.assert_array_equal(pixels(sample["image.png"]), expected[key].array(), err_msg=key)
        assert json.loads(sample["metadata.json"])["member"]
