"""Dagster resources: where data lives on disk and how transfers behave."""
from __future__ import annotations

import os
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from dataset_assets.core.transfer import TransferSettings

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

    def dataset_folder(self, dataset: str) -> Path:
        return Path(self.root).resolve() / dataset

    def manifest_path(self, dataset: str) -> Path:
        return self.dataset_folder(dataset) / "url_manifest.json"

    def raw_folder(self, dataset: str, raw_config: str) -> Path:
        return self.dataset_folder(dataset) / "raw" / raw_config

    def shard_set_folder(self, dataset: str, config: str) -> Path:
        return self.dataset_folder(dataset) / "shards" / config


class TransferResource(ConfigurableResource):
    """Download behaviour: files in flight, retry attempts and backoff."""

    workers: int = Field(default=4, ge=1, le=256, description="Files downloaded at once.")
    max_attempts: int = Field(default=5, ge=1, description="Attempts per file on transient errors.")
    backoff_initial_seconds: float = Field(default=0.5, ge=0)
    backoff_max_seconds: float = Field(default=30.0, ge=0)
    timeout_seconds: float = Field(default=60.0, gt=0)

    def settings(self) -> TransferSettings:
        return TransferSettings(
            workers=self.workers,
            max_attempts=self.max_attempts,
            backoff_initial_seconds=self.backoff_initial_seconds,
            backoff_max_seconds=self.backoff_max_seconds,
            timeout_seconds=self.timeout_seconds,
        )
