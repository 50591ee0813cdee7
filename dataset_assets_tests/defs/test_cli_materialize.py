"""`dagster asset materialize` run as a subprocess against the code location, like CI would."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dagster import AssetKey, DagsterInstance

from dataset_assets.cli import DEMO_URL_ENV
from dataset_assets.defs.resources import HOME_ENV
from dataset_assets.demo.server import DemoServer
from dataset_assets_tests.defs.conftest import DEMO


def dagster_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dagster", *args], env=env, cwd=cwd, text=True,
                          capture_output=True, timeout=240)


def test_dagster_asset_materialize_cli_records_partition_in_instance(tmp_path: Path, demo_server: DemoServer) -> None:
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), HOME_ENV: str(tmp_path / "home"),
           DEMO_URL_ENV: demo_server.base_url}
    project = Path(__file__).resolve().parents[2]
    module = ["-m", "dataset_assets.definitions"]

    manifest = dagster_cli(["asset", "materialize", *module, "--select", f"{DEMO}/url_manifest"], env, project)
    assert manifest.returncode == 0, manifest.stderr[-3000:]
    raw = dagster_cli(["asset", "materialize", *module, "--select", f"{DEMO}/raw_shards", "--partition", "seq_001"],
                      env, project)
    assert raw.returncode == 0, raw.stderr[-3000:]

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        assert "seq_001" in instance.get_dynamic_partitions(f"{DEMO}_sequences")
        records = instance.fetch_materializations(AssetKey([DEMO, "raw_shards"]), limit=10).records
        assert [record.partition_key for record in records] == ["seq_001"]
    assert sorted(p.name for p in (tmp_path / "home" / DEMO / "raw" / "cubercnn" / "seq_001").iterdir()) == [
        "shards-0000.tar", "shards-0001.tar"]
