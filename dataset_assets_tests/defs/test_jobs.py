"""The jobs the sensors and schedules launch, run in-process against a real instance and the demo server."""
import shutil
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance

from dataset_assets.cli import DEMO_URL_ENV
from dataset_assets.core.catalog import PACKAGED_CATALOG, load_catalog
from dataset_assets.core.manifest import load_manifest_file
from dataset_assets.defs.materialize import materialize_dataset
from dataset_assets.demo.server import DemoServer
from dataset_assets_tests.defs.conftest import DEMO, make_defs


def listed(yaml_path: Path) -> dict[str, list[str]]:
    return yaml.safe_load(yaml_path.read_text())["tars"]


def test_refresh_links_job_writes_the_splits_from_the_manifest_it_just_fetched(
    demo_source: Path, home: Path, instance: DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = Path(shutil.copytree(demo_source, tmp_path / "source"))
    with DemoServer(source) as server:
        monkeypatch.setenv(DEMO_URL_ENV, server.base_url)
        defs = make_defs(load_catalog(PACKAGED_CATALOG), home)
        materialize_dataset(defs, instance, DEMO, ["seq_000", "seq_001", "seq_002"])
        for config in ("cubercnn", "efm"):
            shutil.rmtree(source / config / "seq_002")  # withdrawn by the publisher
        server.advance_clock(600)  # so the refreshed links differ from the old ones
        result = defs.resolve_job_def(f"{DEMO}_refresh_links").execute_in_process(instance=instance)

    assert result.success
    manifest = load_manifest_file(home / DEMO / "url_manifest.json")
    folder = home / DEMO / "shards" / "cubercnn_small"
    streamable = listed(folder / "streamable_all_tars.yaml")
    assert sorted(streamable) == sorted(listed(folder / "local_all_tars.yaml")) == ["seq_000", "seq_001"]
    assert streamable == {sequence: [entry.url for entry in manifest.entries("cubercnn", sequence)]
                          for sequence in ("seq_000", "seq_001")}
