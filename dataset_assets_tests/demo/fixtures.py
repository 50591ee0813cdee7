"""Shared pytest fixtures for the embedded demo: a generated source folder and a running server.

`demo_source` and `demo_files` are session-scoped (the folder is generated once and never
modified); `demo_server` is a fresh server per test, so faults, stats and clock never leak.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dataset_assets.demo.generate import DemoFile, generate_demo_source
from dataset_assets.demo.server import DemoServer


@pytest.fixture(scope="session")
def demo_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the default demo dataset: `<config>/<sequence>/shards-NNNN.tar`."""
    folder = tmp_path_factory.mktemp("demo_source")
    generate_demo_source(folder)
    return folder


@pytest.fixture(scope="session")
def demo_files(demo_source: Path) -> list[DemoFile]:
    """Every file of `demo_source` with its size and sha1 (generation is idempotent, so this only verifies)."""
    return generate_demo_source(demo_source)


@pytest.fixture
def demo_server(demo_source: Path) -> Iterator[DemoServer]:
    """A started DemoServer over `demo_source` on a random loopback port."""
    with DemoServer(demo_source) as server:
        yield server
