"""Dagster resources: where data lives on disk and how transfers behave (and where raw shards land)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource
from pydantic import ConfigDict, Field, model_validator

from dataset_assets.core.s3 import MIB, MultipartSettings, S3Destination, S3Url, make_s3_client
from dataset_assets.core.storage import Destination
from dataset_assets.core.transfer import TransferSettings
from dataset_assets.core.versioned import DEFAULT_CACHE_ROOT, version_folder

HOME_ENV = "DATASET_ASSETS_HOME"
DEFAULT_HOME = ".dataset_assets_home"


def default_home() -> str:
    return os.environ.get(HOME_ENV, DEFAULT_HOME)


class DatasetHome(ConfigurableResource):
    """The folder every dataset is materialized under (default `$DATASET_ASSETS_HOME` or `./.dataset_assets_home`).

    Layout per dataset `<ds>`: `url_manifest.json`, `raw/<raw_config>/<sequence>/*.tar`,
    `shards/<config>/<sequence>/*.tar` and `shards/<config>/{local,streamable}_*_tars.yaml`.
    """

    root: str = Field(default_factory=default_home, description="Folder holding every dataset's files.")
    versioned_root: str = Field(default=DEFAULT_CACHE_ROOT,
                                description="Cache root of date-versioned datasets: <root>/<dataset>/<version>/.")

    def dataset_folder(self, dataset: str) -> Path:
        return Path(self.root).resolve() / dataset

    def manifest_path(self, dataset: str) -> Path:
        return self.dataset_folder(dataset) / "url_manifest.json"

    def raw_folder(self, dataset: str, raw_config: str) -> Path:
        return self.dataset_folder(dataset) / "raw" / raw_config

    def shard_set_folder(self, dataset: str, config: str) -> Path:
        return self.dataset_folder(dataset) / "shards" / config

    def version_folder(self, dataset: str, version: str) -> Path:
        return version_folder(self.versioned_root, dataset, version)


class TransferResource(ConfigurableResource):
    """Download behaviour: files in flight, retry attempts and backoff, and an optional S3 destination.

    With `destination` set to `s3://bucket/prefix`, raw shards stream straight into the bucket as
    `<prefix>/<dataset>/raw/<raw_config>/<sequence>/<file>` (multipart, verified) through the
    client of `s3` (a dagster-aws `S3Resource`: endpoint_url, region, credentials), or boto3's
    environment when `s3` is unset. Without it they land in the home folder.
    """

    # A failed validation would otherwise print its input, `s3`'s secret key and session token included.
    model_config = ConfigDict(hide_input_in_errors=True)

    workers: int = Field(default=TransferSettings.workers, ge=1, le=256, description="Files downloaded at once.")
    max_attempts: int = Field(default=5, ge=1, description="Attempts per file on transient errors.")
    backoff_initial_seconds: float = Field(default=0.5, ge=0)
    backoff_max_seconds: float = Field(default=30.0, ge=0)
    retry_after_max_seconds: float = Field(
        default=TransferSettings.retry_after_max_seconds, ge=0,
        description="Longest Retry-After waited out as the server asks; a longer one fails the file at once.")
    timeout_seconds: float = Field(default=60.0, gt=0)
    destination: str | None = Field(default=None, description="s3://bucket/prefix for raw shards (default: home).")
    s3: S3Resource | None = Field(default=None, description="S3 client settings used when destination is s3://.")
    part_size_mib: int = Field(default=MultipartSettings.part_size // MIB, ge=5, description="S3 multipart part size.")
    part_concurrency: int = Field(default=MultipartSettings.concurrency, ge=1, description="S3 parts in flight.")

    @model_validator(mode="after")
    def _s3_needs_destination(self) -> TransferResource:
        """S3 client settings alone would be ignored and the raw shards silently land in the home folder."""
        if self.s3 is not None and self.destination is None:
            raise ValueError("TransferResource: 's3' is set but 'destination' is not; set destination to "
                             "s3://bucket/prefix, or remove 's3' to download into the home folder")
        return self

    def settings(self) -> TransferSettings:
        return TransferSettings(
            workers=self.workers,
            max_attempts=self.max_attempts,
            backoff_initial_seconds=self.backoff_initial_seconds,
            backoff_max_seconds=self.backoff_max_seconds,
            retry_after_max_seconds=self.retry_after_max_seconds,
            timeout_seconds=self.timeout_seconds,
        )

    def destinations(self, dataset: str, folders: Mapping[str, Path]) -> dict[str, Path | Destination]:
        """Where each raw config of `dataset` lands: its home folder, or its place below `destination`."""
        if self.destination is None:
            return dict(folders)
        client = self.s3.get_client() if self.s3 is not None else make_s3_client()
        root = S3Destination(client, S3Url.parse(self.destination, "TransferResource"),
                             MultipartSettings(self.part_size_mib * MIB, self.part_concurrency))
        return {config: root.child(f"{dataset}/raw/{config}") for config in folders}
