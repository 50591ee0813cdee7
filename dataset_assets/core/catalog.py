"""The dataset catalog: which datasets exist, where their manifests come from, how to process them.

The catalog is a YAML file (default: the packaged `dataset_assets/catalog.yaml`, or the path in
`$DATASET_ASSETS_CATALOG`). Loading validates every field and raises `CatalogError` naming the
file, the dotted field path and the bad value. String values may reference environment variables
as `${NAME}` or `${NAME:-default}`, so one catalog serves laptops, CI and clusters.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dataset_assets.core.errors import CatalogError
from dataset_assets.core.preprocess import PreprocessConfig
from dataset_assets.core.redaction import redact_url

CATALOG_ENV = "DATASET_ASSETS_CATALOG"
PACKAGED_CATALOG = Path(__file__).resolve().parent.parent / "catalog.yaml"
KINDS = ("signed_url",)
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_ENV_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


@dataclass(frozen=True)
class ManifestSource:
    """Where a dataset's URL manifest is published: an http(s) URL or a local JSON file."""

    url: str | None = None
    path: Path | None = None

    @property
    def location(self) -> str:
        return self.url if self.url is not None else str(self.path)

    def describe(self) -> str:
        """A printable location with any signed query string redacted."""
        return redact_url(self.url) if self.url is not None else str(self.path)


@dataclass(frozen=True)
class SplitSpec:
    """How sequences are split into train and validation (ATEK semantics)."""

    ratio: float = 0.9
    seed: int = 42
    max_sequences: int | None = None
    json_path: Path | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: str
    manifest: ManifestSource
    preprocess: Mapping[str, PreprocessConfig]
    split: SplitSpec = field(default_factory=SplitSpec)
    description: str = ""
    owners: tuple[str, ...] = ()

    @property
    def raw_configs(self) -> list[str]:
        """The manifest configs that must be downloaded to feed every preprocessing config."""
        return sorted({config.source_config for config in self.preprocess.values()})


@dataclass(frozen=True)
class Catalog:
    path: Path
    datasets: Mapping[str, DatasetSpec]

    def dataset(self, name: str) -> DatasetSpec:
        if name not in self.datasets:
            raise CatalogError(str(self.path), "datasets", name,
                               f"is not a dataset in the catalog (known: {', '.join(self.datasets) or 'none'})")
        return self.datasets[name]


class _Reader:
    """Validating accessors that name the catalog file and field path in every error."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, field_path: str, value: Any, problem: str) -> CatalogError:
        return CatalogError(str(self.path), field_path, value, problem)

    def mapping(self, value: Any, field_path: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(field_path, value, "must be a mapping")
        return value

    def known_keys(self, value: Mapping[str, Any], field_path: str, allowed: tuple[str, ...]) -> None:
        for key in value:
            if key not in allowed:
                raise self.fail(f"{field_path}.{key}", key, f"is not a known field (allowed: {', '.join(allowed)})")

    def string(self, value: Any, field_path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(field_path, value, "must be a non-empty string")
        return self.expand(value, field_path)

    def name(self, value: Any, field_path: str) -> str:
        if not isinstance(value, str) or not NAME.match(value):
            raise self.fail(field_path, value, "must start with a letter and hold only letters, digits and '_'")
        return value

    def expand(self, value: str, field_path: str) -> str:
        def substitute(match: re.Match[str]) -> str:
            name, default = match.group("name"), match.group("default")
            if name in os.environ:
                return os.environ[name]
            if default is None:
                raise self.fail(field_path, match.group(0), f"references environment variable {name}, which is unset")
            return default

        return _ENV_REFERENCE.sub(substitute, value)

    def path_value(self, value: Any, field_path: str) -> Path:
        path = Path(self.string(value, field_path)).expanduser()
        return path if path.is_absolute() else (self.path.parent / path).resolve()


def _read_manifest_source(reader: _Reader, value: Any, field_path: str) -> ManifestSource:
    body = reader.mapping(value, field_path)
    reader.known_keys(body, field_path, ("url", "path"))
    if ("url" in body) == ("path" in body):
        raise reader.fail(field_path, dict(body), "must give exactly one of 'url' or 'path'")
    if "url" in body:
        url = reader.string(body["url"], f"{field_path}.url")
        if not url.startswith(("http://", "https://")):
            raise reader.fail(f"{field_path}.url", redact_url(url), "must be an http(s) URL")
        return ManifestSource(url=url)
    return ManifestSource(path=reader.path_value(body["path"], f"{field_path}.path"))


def _read_split(reader: _Reader, value: Any, field_path: str) -> SplitSpec:
    body = reader.mapping(value, field_path)
    reader.known_keys(body, field_path, ("ratio", "seed", "max_sequences", "json_path"))
    ratio = body.get("ratio", 0.9)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        raise reader.fail(f"{field_path}.ratio", ratio, "must be a number between 0 and 1")
    seed = body.get("seed", 42)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise reader.fail(f"{field_path}.seed", seed, "must be an integer")
    max_sequences = body.get("max_sequences")
    if max_sequences is not None and (isinstance(max_sequences, bool) or not isinstance(max_sequences, int)
                                      or max_sequences < 1):
        raise reader.fail(f"{field_path}.max_sequences", max_sequences, "must be a positive integer or null")
    json_path = body.get("json_path")
    return SplitSpec(
        ratio=float(ratio),
        seed=seed,
        max_sequences=max_sequences,
        json_path=None if json_path is None else reader.path_value(json_path, f"{field_path}.json_path"),
    )


def _read_owners(reader: _Reader, value: Any, field_path: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise reader.fail(field_path, value, "must be a list of owner names or e-mails")
    return tuple(reader.string(owner, f"{field_path}[{index}]") for index, owner in enumerate(value))


def _read_dataset(reader: _Reader, name: str, value: Any) -> DatasetSpec:
    field_path = f"datasets.{name}"
    body = reader.mapping(value, field_path)
    reader.known_keys(body, field_path, ("kind", "description", "owners", "manifest", "preprocess", "split"))
    if "kind" not in body:
        raise reader.fail(f"{field_path}.kind", None, f"is required (one of: {', '.join(KINDS)})")
    kind = body["kind"]
    if kind not in KINDS:
        raise reader.fail(f"{field_path}.kind", kind, f"must be one of: {', '.join(KINDS)}")
    if "manifest" not in body:
        raise reader.fail(f"{field_path}.manifest", None, "is required")
    preprocess_body = reader.mapping(body.get("preprocess"), f"{field_path}.preprocess")
    if not preprocess_body:
        raise reader.fail(f"{field_path}.preprocess", {}, "must define at least one preprocessing config")
    preprocess = {
        config_name: PreprocessConfig.from_mapping(
            reader.name(config_name, f"{field_path}.preprocess.{config_name}"),
            config_body, str(reader.path), f"{field_path}.preprocess.{config_name}",
        )
        for config_name, config_body in preprocess_body.items()
    }
    description = body.get("description", "")
    if not isinstance(description, str):
        raise reader.fail(f"{field_path}.description", description, "must be a string")
    return DatasetSpec(
        name=name,
        kind=kind,
        manifest=_read_manifest_source(reader, body["manifest"], f"{field_path}.manifest"),
        preprocess=preprocess,
        split=_read_split(reader, body.get("split", {}), f"{field_path}.split"),
        description=description,
        owners=_read_owners(reader, body.get("owners", []), f"{field_path}.owners"),
    )


def parse_catalog(data: Any, path: Path) -> Catalog:
    """Validate decoded catalog YAML; `path` is named in every error."""
    reader = _Reader(path)
    root = reader.mapping(data, "<root>")
    reader.known_keys(root, "<root>", ("datasets",))
    datasets_body = reader.mapping(root.get("datasets"), "datasets")
    if not datasets_body:
        raise reader.fail("datasets", {}, "must define at least one dataset")
    datasets = {
        reader.name(name, f"datasets.{name}"): _read_dataset(reader, name, value)
        for name, value in datasets_body.items()
    }
    return Catalog(path=path, datasets=datasets)


def load_catalog(path: Path | None = None) -> Catalog:
    """Load and validate the catalog at `path` (default: `$DATASET_ASSETS_CATALOG` or the packaged one)."""
    path = Path(path or os.environ.get(CATALOG_ENV) or PACKAGED_CATALOG).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise CatalogError(str(path), "<file>", str(path), "does not exist") from error
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(error, "problem", error)
        raise CatalogError(str(path), "<root>", where, f"is not valid YAML: {problem}") from error
    return parse_catalog(data, path)
