"""Fixtures for Dagster-layer tests: a temp DagsterInstance, a temp home, the demo catalog on loopback."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, Definitions, instance_for_test

from dataset_assets.cli import DEMO_URL_ENV
from dataset_assets.core.catalog import PACKAGED_CATALOG, Catalog, load_catalog
from dataset_assets.defs.builder import build_definitions
from dataset_assets.defs.resources import DatasetHome, TransferResource
from dataset_assets.demo.server import DemoServer

DEMO = "demo_aria"


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    """A real sqlite-backed DagsterInstance in a temporary DAGSTER_HOME."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    with instance_for_test(temp_dir=str(dagster_home)) as test_instance:
        yield test_instance


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def demo_catalog(demo_server: DemoServer, monkeypatch: pytest.MonkeyPatch) -> Catalog:
    """The packaged catalog, its demo dataset pointed at this test's demo server."""
    monkeypatch.setenv(DEMO_URL_ENV, demo_server.base_url)
    return load_catalog(PACKAGED_CATALOG)


def make_defs(catalog: Catalog, home: Path, max_attempts: int = 3) -> Definitions:
    transfer = TransferResource(max_attempts=max_attempts, backoff_initial_seconds=0.01, backoff_max_seconds=0.1)
    return build_definitions(catalog, home=DatasetHome(root=str(home)), transfer=transfer)
