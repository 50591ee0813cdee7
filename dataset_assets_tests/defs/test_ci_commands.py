"""The README's "Materialize from CI" commands, run verbatim as subprocesses against a temp instance."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from dagster import AssetKey, DagsterInstance
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from dataset_assets.cli import DEMO_URL_ENV
from dataset_assets.defs.resources import HOME_ENV
from dataset_assets.demo.server import DemoServer
from dataset_assets_tests.defs.conftest import DEMO

PROJECT = Path(__file__).resolve().parents[2]
COMMAND = "dagster asset materialize "


def readme_ci_commands() -> list[list[str]]:
    """The `dagster asset materialize` lines of the README's "Materialize from CI" code block."""
    section = re.search(r"^## Materialize from CI\n(.*?)^## ", (PROJECT / "README.md").read_text(), re.M | re.S)
    assert section is not None, "README.md has no 'Materialize from CI' section"
    block = re.search(r"```bash\n(.*?)```", section.group(1), re.S)
    assert block is not None, "the 'Materialize from CI' section has no bash block"
    return [shlex.split(line)[1:] for line in block.group(1).splitlines() if line.startswith(COMMAND)]


def materialized_partitions(instance: DagsterInstance, asset: str) -> set[str | None]:
    records = instance.fetch_materializations(AssetKey([DEMO, asset]), limit=100).records
    return {record.partition_key for record in records}


def test_readme_ci_commands_materialize_by_key_by_partition_and_by_partition_range_in_one_run_each(
    tmp_path: Path, demo_server: DemoServer
) -> None:
    commands = readme_ci_commands()
    partition_options = [[arg for arg in command if arg.startswith("--partition")] for command in commands]
    assert partition_options == [[], ["--partition"], ["--partition-range"]]
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), HOME_ENV: str(tmp_path / "home"),
           DEMO_URL_ENV: demo_server.base_url}
    for command in commands:
        done = subprocess.run([sys.executable, "-m", "dagster", *command], env=env, cwd=PROJECT, text=True,
                              capture_output=True, timeout=300)
        assert done.returncode == 0, f"{shlex.join(command)} failed:\n{done.stderr[-3000:]}"

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 3 and all(run.is_success for run in runs)
        range_runs = [run for run in runs if ASSET_PARTITION_RANGE_START_TAG in run.tags]
        assert [(run.tags[ASSET_PARTITION_RANGE_START_TAG], run.tags[ASSET_PARTITION_RANGE_END_TAG])
                for run in range_runs] == [("seq_001", "seq_003")]
        assert materialized_partitions(instance, "url_manifest") == {None}
        assert materialized_partitions(instance, "raw_shards") == {"seq_000", "seq_001", "seq_002", "seq_003"}
        assert materialized_partitions(instance, "shards__cubercnn_small") == {"seq_000"}
    for sequence in ("seq_000", "seq_001", "seq_002", "seq_003"):
        assert len(list((tmp_path / "home" / DEMO / "raw" / "efm" / sequence).glob("*.tar"))) == 2
