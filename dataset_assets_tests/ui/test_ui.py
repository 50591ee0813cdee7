"""The Dagster UI driven in headless chromium against a real `dagster-webserver` and a temp instance.

The demo asset graph is listed, and one `raw_shards` partition launched from the asset's
Materialize dialog runs to success. Skips only when chromium cannot start on this machine.
"""
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRun, RunsFilter
from playwright.sync_api import Browser
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect, sync_playwright

from dataset_assets.cli import DEMO_URL_ENV
from dataset_assets.core.catalog import Catalog
from dataset_assets.defs.resources import HOME_ENV
from dataset_assets.demo.server import DemoServer
from dataset_assets.scale.local_services import free_port
from dataset_assets_tests.defs.conftest import DEMO, demo_catalog, make_defs  # noqa: F401

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Runs launched from the UI go through the run launcher without a daemon, so queueing must be off;
# `nux` off: no first-visit newsletter dialog over the page.
INSTANCE_YAML = """\
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
telemetry:
  enabled: false
nux:
  enabled: false
"""
# Typed into the dialog's config editor: the run's steps share one process instead of one each.
IN_PROCESS = "execution: {config: {in_process: {}}}"
DEMO_ASSETS = ("url_manifest", "raw_shards", "shards__cubercnn_small", "shards__efm_png",
               "splits__cubercnn_small", "splits__efm_png")
STARTUP_SECONDS = 180
RUN_SECONDS = 300
UI_TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class Webserver:
    url: str
    dagster_home: Path
    home: Path


def wait_until_serving(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dagster-webserver exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/server_info", timeout=2).close()
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    pytest.fail(f"dagster-webserver did not answer within {STARTUP_SECONDS} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the webserver's process group (it and the code server it spawned); SIGKILL if it lingers."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture
def webserver(tmp_path: Path, demo_server: DemoServer) -> Iterator[Webserver]:
    dagster_home, home, log = tmp_path / "dagster_home", tmp_path / "home", tmp_path / "webserver.log"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(INSTANCE_YAML)
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), HOME_ENV: str(home), DEMO_URL_ENV: demo_server.base_url}
    url = f"http://127.0.0.1:{free_port()}"
    command = [str(Path(sys.executable).parent / "dagster-webserver"), "-m", "dataset_assets.definitions",
               "-h", "127.0.0.1", "-p", url.rsplit(":", 1)[1]]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, env=env, cwd=Path(__file__).resolve().parents[2], stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_serving(url, process, log)
        yield Webserver(url, dagster_home, home)
    finally:
        stop(process)


@pytest.fixture
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        except PlaywrightError as error:
            pytest.skip(f"chromium cannot run here ({executable}; install it with `apt-get install -y chromium`): "
                        f"{error.message.splitlines()[0]}")
        yield launched
        launched.close()


def open_page(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(url, wait_until="networkidle")
    return page


def launch_partition_from_ui(page: Page, partition: str) -> None:
    """Materialize… on the asset page, pick one partition and the run config in the dialog, launch one run."""
    page.get_by_role("button", name="Materialize…").click()
    page.get_by_text("Select a partition or create one").click()
    page.locator("span", has_text=partition).first.click()
    page.get_by_text("Launch runs to materialize").click()  # closes the partition list
    page.get_by_text("Config", exact=True).click()
    page.get_by_role("button", name="Add config").click()
    page.locator(".CodeMirror").click()
    page.keyboard.type(IN_PROCESS)
    expect(page.get_by_text("No errors")).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.get_by_role("button", name="Save config").click()
    page.get_by_role("button", name="Launch 1 run").click()


def wait_for_run(dagster_home: Path, partition: str) -> DagsterRun:
    deadline = time.monotonic() + RUN_SECONDS
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        while time.monotonic() < deadline:
            runs = instance.get_runs(RunsFilter(tags={"dagster/partition": partition}), limit=1)
            if runs and runs[0].is_finished:
                return runs[0]
            time.sleep(1)
    pytest.fail(f"no finished run for partition {partition} within {RUN_SECONDS} s")


def test_asset_graph_lists_demo_assets_and_one_partition_materializes_from_the_ui(
    webserver: Webserver, browser: Browser, demo_catalog: Catalog, tmp_path: Path  # noqa: F811
) -> None:
    page = open_page(browser, f"{webserver.url}/asset-groups/{DEMO}")
    for name in DEMO_ASSETS:
        expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.screenshot(path=str(tmp_path / "asset_graph.png"))  # screenshots stay in the test's tmp folder

    with DagsterInstance.from_config(str(webserver.dagster_home)) as instance:
        manifest = make_defs(demo_catalog, webserver.home).resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=[AssetKey([DEMO, "url_manifest"])])
        assert manifest.success

    page.goto(f"{webserver.url}/assets/{DEMO}/raw_shards", wait_until="networkidle")
    launch_partition_from_ui(page, "seq_001")
    run = wait_for_run(webserver.dagster_home, "seq_001")
    assert run.is_success, f"run {run.run_id} ended {run.status}"
    assert run.tags.get("dagster/from_ui") == "true"
    assert run.run_config == {"execution": {"config": {"in_process": {}}}}

    page.goto(f"{webserver.url}/runs/{run.run_id}", wait_until="networkidle")
    expect(page.get_by_text("Success").first).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.screenshot(path=str(tmp_path / "run.png"))
    with DagsterInstance.from_config(str(webserver.dagster_home)) as instance:
        records = instance.fetch_materializations(AssetKey([DEMO, "raw_shards"]), limit=10).records
    assert [record.partition_key for record in records] == ["seq_001"]
    assert sorted(path.name for path in (webserver.home / DEMO / "raw" / "cubercnn" / "seq_001").iterdir()) == [
        "shards-0000.tar", "shards-0001.tar"]
