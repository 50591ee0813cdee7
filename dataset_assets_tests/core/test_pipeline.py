"""`core.pipeline`: the steps the Dagster assets wire together."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest

from dataset_assets.cli import DEMO_URL_ENV
from dataset_assets.core import pipeline
from dataset_assets.core.catalog import PACKAGED_CATALOG, load_catalog
from dataset_assets.core.transfer import TransferSettings
from dataset_assets.demo.server import DemoServer


def test_the_saved_manifest_is_private_from_before_its_first_signed_url_is_written(
        demo_server: DemoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEMO_URL_ENV, demo_server.base_url)
    spec = load_catalog(PACKAGED_CATALOG).datasets["demo_aria"]
    modes_when_written: list[int] = []
    write_bytes = Path.write_bytes

    def observed_write_bytes(path: Path, data: bytes) -> int:  # a spy: the window it checks has no other witness
        modes_when_written.append(stat.S_IMODE(path.stat().st_mode))
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", observed_write_bytes)
    dest = tmp_path / "url_manifest.json"

    snapshot = pipeline.snapshot_manifest(spec, dest, TransferSettings())

    assert snapshot.path == dest and snapshot.sequences
    assert modes_when_written == [0o600]
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
