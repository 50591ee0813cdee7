"""The dataset catalog: which datasets exist, where their manifests come from, how to process them.

The catalog is a YAML file (default: the packaged `dataset_assets/catalog.yaml`, or the path in
`$DATASET_ASSETS_CATALOG`). Loading validates every field and raises `CatalogError` naming the
file, the dotted field path and the bad value. String values may reference environment variables
as `${NAME}` or `${NAME:-default}`, so one catalog serves laptops, CI and clusters.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dataset_assets.core.errors import CatalogError, InvalidInputError
from dataset_assets.core.handlers.registry import get_handler, handler_names
from dataset_assets.core.paths import escape_reason
from dataset_assets.core.preprocess import PreprocessConfig
from dataset_assets.core.redaction import redact_url
from dataset_assets.core.s3 import MAX_PART_SIZE, MIB, MIN_PART_SIZE
from dataset_assets.core.versioned import (
    COMPONENT_KINDS,
    REQUIRED_COMPONENTS,
    Component,
    ExtractLimits,
    PublishSpec,
    VersionedSource,
    check_version,
)

CATALOG_ENV = "DATASET_ASSETS_CATALOG"
PACKAGED_CATALOG = Path(__file__).resolve().parent.parent / "catalog.yaml"
KINDS = ("signed_url", "handler", "versioned")
VERSIONED_FIELDS = ("kind", "description", "owners", "base_url", "versions", "components", "publish", "extract")
EXTRACT_FIELDS = ("max_bytes", "max_members")
PUBLISH_FIELDS = ("bucket", "prefix", "part_size_mib", "concurrency", "endpoint_url")
HANDLER_FIELDS = ("kind", "description", "owners", "handler", "base_url", "artifacts", "samples_per_shard", "split")
# Lenient enough for legacy S3 names (capitals, '_') and R2/MinIO; refuses URLs and paths.
BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}\Z")
SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}\Z")
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

    @property
    def hash(self) -> str:
        """First 16 hex chars of the sha256 of the settings, with the bytes of the explicit split file if readable."""
        path = self.json_path
        settings = {"ratio": self.ratio, "seed": self.seed, "max_sequences": self.max_sequences,
                    "json_path": None if path is None else str(path),
                    "json_sha256": hashlib.sha256(path.read_bytes()).hexdigest()
                    if path is not None and path.is_file() else None}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ArtifactPin:
    """A catalog override of one handler artifact: another URL (a mirror, or `manual`) and/or its sha256."""

    url: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class HandlerSource:
    """A raw-artifact dataset (kind `handler`): the registered handler and where its artifacts come from."""

    name: str
    base_url: str | None = None
    artifacts: Mapping[str, ArtifactPin] = field(default_factory=dict)
    samples_per_shard: int = 1000


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: str
    manifest: ManifestSource
    preprocess: Mapping[str, PreprocessConfig]
    split: SplitSpec = field(default_factory=SplitSpec)
    description: str = ""
    owners: tuple[str, ...] = ()
    handler: HandlerSource | None = None
    versioned: VersionedSource | None = None

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


def _read_url(reader: _Reader, value: Any, field_path: str, allow_manual: bool = False) -> str:
    url = reader.string(value, field_path)
    if not url.startswith(("http://", "https://")) and not (allow_manual and url == "manual"):
        expected = "an http(s) URL or 'manual'" if allow_manual else "an http(s) URL"
        raise reader.fail(field_path, redact_url(url), f"must be {expected}")
    return url


def _read_pins(reader: _Reader, value: Any, field_path: str, handler: str) -> dict[str, ArtifactPin]:
    known = [artifact.name for artifact in get_handler(handler).artifacts]
    pins: dict[str, ArtifactPin] = {}
    for name, pin_value in reader.mapping(value, field_path).items():
        if name not in known:
            raise reader.fail(f"{field_path}.{name}", name,
                              f"is not an artifact of handler {handler} (artifacts: {', '.join(known)})")
        body = reader.mapping(pin_value, f"{field_path}.{name}")
        reader.known_keys(body, f"{field_path}.{name}", ("url", "sha256"))
        url = None if "url" not in body else _read_url(reader, body["url"], f"{field_path}.{name}.url", True)
        sha256 = None if "sha256" not in body else reader.string(body["sha256"], f"{field_path}.{name}.sha256")
        if sha256 is not None and not SHA256.match(sha256):
            raise reader.fail(f"{field_path}.{name}.sha256", sha256, "must be 64 lowercase hex digits")
        pins[name] = ArtifactPin(url=url, sha256=sha256)
    return pins


def _read_handler_dataset(reader: _Reader, name: str, body: Mapping[str, Any]) -> DatasetSpec:
    """A `kind: handler` dataset: `handler`, optional `base_url`, `artifacts` pins, `samples_per_shard`, `split`."""
    field_path = f"datasets.{name}"
    reader.known_keys(body, field_path, HANDLER_FIELDS)
    handler = body.get("handler")
    if handler not in handler_names():
        raise reader.fail(f"{field_path}.handler", handler, f"must be one of: {', '.join(handler_names())}")
    base_url = None if "base_url" not in body else _read_url(reader, body["base_url"], f"{field_path}.base_url")
    samples = body.get("samples_per_shard", 1000)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise reader.fail(f"{field_path}.samples_per_shard", samples, "must be a positive integer")
    split = _read_split(reader, body.get("split", {}), f"{field_path}.split")
    for unused in ("max_sequences", "json_path"):
        if getattr(split, unused) is not None:
            raise reader.fail(f"{field_path}.split.{unused}", body["split"][unused],
                              "is not used by handler datasets (only ratio and seed are)")
    description = body.get("description", "")
    if not isinstance(description, str):
        raise reader.fail(f"{field_path}.description", description, "must be a string")
    pins = _read_pins(reader, body.get("artifacts", {}), f"{field_path}.artifacts", handler)
    owners = _read_owners(reader, body.get("owners", []), f"{field_path}.owners")
    source = HandlerSource(name=handler, base_url=base_url, artifacts=pins, samples_per_shard=samples)
    # Handler datasets have no URL manifest or preprocessing configs: those fields stay empty.
    return DatasetSpec(name=name, kind="handler", manifest=ManifestSource(), preprocess={}, split=split,
                       description=description, owners=owners, handler=source)


def _read_version(reader: _Reader, value: Any, field_path: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        raise reader.fail(field_path, value, "must be a quoted string: YAML reads an unquoted 2023_07_28 as a number")
    try:
        return check_version(value, str(reader.path), field_path)
    except InvalidInputError as error:
        raise reader.fail(field_path, value, error.problem) from None


def _read_versions(reader: _Reader, value: Any, field_path: str) -> tuple[str, ...]:
    """A list of `YYYY_MM_DD` versions, or `dynamic` (the versions sensor lists the published ones): `()`."""
    if value == "dynamic":
        return ()
    if not isinstance(value, list) or not value:
        raise reader.fail(field_path, value, "must be a non-empty list of quoted YYYY_MM_DD versions or 'dynamic'")
    versions = tuple(_read_version(reader, version, f"{field_path}[{index}]") for index, version in enumerate(value))
    if len(set(versions)) != len(versions):
        raise reader.fail(field_path, value, "must not list a version twice")
    return versions


def _read_component_path(reader: _Reader, value: Any, field_path: str) -> str:
    path = reader.string(value, field_path)
    rest = path.replace("{version}", "")
    if "{version}" not in path or "{" in rest or "}" in rest or escape_reason(path) is not None:
        raise reader.fail(field_path, path, "must be a relative path below base_url containing '{version}' "
                                            "(e.g. '{version}/assets.tar')")
    return path


def _read_component(reader: _Reader, name: str, value: Any, field_path: str, versions: tuple[str, ...]) -> Component:
    body = reader.mapping({} if value is None else value, field_path)
    reader.known_keys(body, field_path, ("path", "sha256"))
    kind = COMPONENT_KINDS[name]
    path = _read_component_path(reader, body.get("path", kind.default_path), f"{field_path}.path")
    pins: dict[str, str] = {}
    for version, digest in reader.mapping(body.get("sha256", {}), f"{field_path}.sha256").items():
        where = f"{field_path}.sha256.{version}"
        version = _read_version(reader, version, where)
        if versions and version not in versions:
            raise reader.fail(where, version, f"is not a listed version ({', '.join(versions)})")
        if not isinstance(digest, str) or not SHA256.match(digest):
            raise reader.fail(where, digest, "must be 64 lowercase hex digits")
        pins[version] = digest
    return Component(kind, path, pins)


def _read_components(reader: _Reader, value: Any, field_path: str, versions: tuple[str, ...]
                     ) -> dict[str, Component]:
    body = reader.mapping(value, field_path)
    reader.known_keys(body, field_path, tuple(COMPONENT_KINDS))
    for required in REQUIRED_COMPONENTS:
        if required not in body:
            raise reader.fail(f"{field_path}.{required}", None, "is required")
    return {name: _read_component(reader, name, component, f"{field_path}.{name}", versions)
            for name, component in body.items()}


def _read_int(reader: _Reader, body: Mapping[str, Any], key: str, default: int, minimum: int, field_path: str,
              maximum: int | None = None) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum \
            or (maximum is not None and value > maximum):
        most = "" if maximum is None else f" and at most {maximum}"
        raise reader.fail(f"{field_path}.{key}", value, f"must be an integer of at least {minimum}{most}")
    return value


def _read_prefix(reader: _Reader, value: Any, field_path: str) -> str:
    """A key prefix; an unquoted number is read as its digits, but an empty `prefix:` (null) is refused."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise reader.fail(field_path, value, "must be a string (a key prefix such as 'releases')")
    return reader.expand(str(value), field_path).strip("/")


def _read_publish(reader: _Reader, value: Any, field_path: str) -> PublishSpec:
    """`bucket`, `prefix`, `part_size_mib` (5 to 5120, the S3 limits), `concurrency`, `endpoint_url`."""
    body = reader.mapping(value, field_path)
    reader.known_keys(body, field_path, PUBLISH_FIELDS)
    bucket = reader.string(body.get("bucket"), f"{field_path}.bucket")
    if not BUCKET.match(bucket):
        raise reader.fail(f"{field_path}.bucket", bucket, "must be a bucket name (letters, digits, '.', '_', '-'; "
                                                          "the key prefix goes in 'prefix')")
    prefix = "" if "prefix" not in body else _read_prefix(reader, body["prefix"], f"{field_path}.prefix")
    endpoint = body.get("endpoint_url")
    if endpoint is not None and endpoint != "":  # empty (or null): AWS's own endpoint
        endpoint = reader.string(endpoint, f"{field_path}.endpoint_url")
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise reader.fail(f"{field_path}.endpoint_url", endpoint, "must be an http(s) URL (or empty: AWS's own)")
    return PublishSpec(bucket=bucket, prefix=prefix,
                       part_size_mib=_read_int(reader, body, "part_size_mib", PublishSpec.part_size_mib,
                                               MIN_PART_SIZE // MIB, field_path, MAX_PART_SIZE // MIB),
                       concurrency=_read_int(reader, body, "concurrency", PublishSpec.concurrency, 1, field_path),
                       endpoint_url=endpoint or None)


def _read_extract(reader: _Reader, value: Any, field_path: str) -> ExtractLimits:
    """`max_bytes` and `max_members` of each tarball extracted on download, each at least 1."""
    body = reader.mapping(value, field_path)
    reader.known_keys(body, field_path, EXTRACT_FIELDS)
    return ExtractLimits(max_bytes=_read_int(reader, body, "max_bytes", ExtractLimits.max_bytes, 1, field_path),
                         max_members=_read_int(reader, body, "max_members", ExtractLimits.max_members, 1, field_path))


def _read_versioned_dataset(reader: _Reader, name: str, body: Mapping[str, Any]) -> DatasetSpec:
    """A `kind: versioned` dataset: `base_url`, `versions` (list or `dynamic`), `components`, optional `publish`
    and `extract` (limits)."""
    field_path = f"datasets.{name}"
    reader.known_keys(body, field_path, VERSIONED_FIELDS)
    versions = _read_versions(reader, body.get("versions"), f"{field_path}.versions")
    publish = None if "publish" not in body else _read_publish(reader, body["publish"], f"{field_path}.publish")
    if not versions and publish is None:
        raise reader.fail(f"{field_path}.versions", "dynamic", "needs a 'publish' section: the versions sensor "
                                                               "lists the versions published there")
    description = body.get("description", "")
    if not isinstance(description, str):
        raise reader.fail(f"{field_path}.description", description, "must be a string")
    source = VersionedSource(
        base_url=_read_url(reader, body.get("base_url"), f"{field_path}.base_url"),
        versions=versions,
        components=_read_components(reader, body.get("components"), f"{field_path}.components", versions),
        publish=publish,
        extract=_read_extract(reader, body.get("extract", {}), f"{field_path}.extract"),
    )
    # Versioned datasets have no URL manifest or preprocessing configs: those fields stay empty.
    return DatasetSpec(name=name, kind="versioned", manifest=ManifestSource(), preprocess={}, description=description,
                       owners=_read_owners(reader, body.get("owners", []), f"{field_path}.owners"), versioned=source)


def _read_dataset(reader: _Reader, name: str, value: Any) -> DatasetSpec:
    field_path = f"datasets.{name}"
    body = reader.mapping(value, field_path)
    if body.get("kind") == "handler":
        return _read_handler_dataset(reader, name, body)
    if body.get("kind") == "versioned":
        return _read_versioned_dataset(reader, name, body)
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
    except (OSError, UnicodeDecodeError) as error:
        raise CatalogError(str(path), "<file>", str(path), f"cannot be read ({error})") from error
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(error, "problem", error)
        raise CatalogError(str(path), "<root>", where, f"is not valid YAML: {problem}") from error
    return parse_catalog(data, path)
