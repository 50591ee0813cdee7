"""A whole scale-out on one machine, from the deploy/ files as they are.

Postgres (the instance: deploy/dagster.yaml), Redis (the Celery broker and result backend:
deploy/celery.yaml), N Celery workers (`dagster-celery worker start`), `dagster-daemon run` (drains
the run queue, drives backfills) and `dagster-webserver` (the UI and its GraphQL API), all on
127.0.0.1 in a temp folder, every one stopped through its pid when the block ends. Only the data
folder (DATASET_ASSETS_HOME) is shared between processes through the file system.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import celery
import httpx
from dagster import DagsterInstance

from dataset_assets.defs.builder import CELERY_CONFIG_ENV
from dataset_assets.defs.resources import HOME_ENV
from dataset_assets.scale.graphql import DagsterGraphQL
from dataset_assets.scale.local_services import (
    HOST,
    Postgres,
    Service,
    ServiceError,
    free_port,
    missing_binaries,
    postgres_bin,
    running_postgres,
    running_redis,
    start_service,
    stop_all,
    wait_until,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CODE_LOCATION = "dataset_assets.definitions"
BROKER_ENV = "DAGSTER_CELERY_BROKER_URL"
BACKEND_ENV = "DAGSTER_CELERY_BACKEND_URL"
# Workers, daemon and webserver import the code location at once: on 2 busy cores that can take minutes.
STARTUP_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class ScaleStack:
    """What a running stack offers: its UI (and GraphQL API) and the names of its Celery workers."""

    ui_url: str
    workers: tuple[str, ...]

    @property
    def graphql(self) -> DagsterGraphQL:
        return DagsterGraphQL(f"{self.ui_url}/graphql")


def postgres_env(postgres: Postgres) -> dict[str, str]:
    """The DAGSTER_PG_* variables deploy/dagster.yaml reads."""
    return {"DAGSTER_PG_HOST": postgres.host, "DAGSTER_PG_PORT": str(postgres.port),
            "DAGSTER_PG_DB": postgres.database, "DAGSTER_PG_USERNAME": postgres.username,
            "DAGSTER_PG_PASSWORD": postgres.password}


@contextmanager
def patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    """`os.environ` updated with `values` inside the block: Dagster resolves `env:` settings from it."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _venv_bin(name: str) -> str:
    """A console script installed beside this interpreter (the venv need not be on PATH)."""
    return str(Path(sys.executable).parent / name)


def _create_instance_tables(dagster_home: Path) -> None:
    """Create the schema once, before several processes would race to create it."""
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.get_runs_count()
        instance.get_dynamic_partitions("_")
        instance.all_instigator_state()


def _workers_answering(broker_url: str, names: Sequence[str]) -> bool:
    app = celery.Celery(broker=broker_url)
    try:
        replies = app.control.ping(timeout=1.0)
    finally:
        app.close()
    answered = {name.split("@")[0] for reply in replies for name in reply}
    return set(names) <= answered


def _webserver_answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/server_info", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _start_worker(name: str, logs: Path) -> Service:
    command = [_venv_bin("dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
               "-y", str(DEPLOY / "celery.yaml"), "-n", name, "--loglevel", "WARNING", "--", "--concurrency=1"]
    return start_service(name, command, logs / f"{name}.log")


def _start_daemon(logs: Path) -> Service:
    command = [_venv_bin("dagster-daemon"), "run", "-m", CODE_LOCATION, "--log-level", "warning"]
    return start_service("dagster-daemon", command, logs / "dagster-daemon.log")


def start_webserver(port: int, logs: Path) -> Service:
    """dagster-webserver on 127.0.0.1:`port` for the code location, on this environment's instance."""
    command = [_venv_bin("dagster-webserver"), "-m", CODE_LOCATION, "-h", HOST, "-p", str(port),
               "--log-level", "warning"]
    return start_service("dagster-webserver", command, logs / "dagster-webserver.log")


def wait_for_webserver(webserver: Service, port: int) -> None:
    wait_until([webserver], lambda: _webserver_answers(local_url(port)), STARTUP_TIMEOUT_SECONDS,
               "serving /server_info")


def _stack_env(folder: Path, postgres: Postgres, redis_url: str, home: Path) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return {
        **postgres_env(postgres),
        "DAGSTER_HOME": str(folder / "dagster_home"),
        BROKER_ENV: f"{redis_url}/0",
        BACKEND_ENV: f"{redis_url}/1",
        CELERY_CONFIG_ENV: str(DEPLOY / "celery.yaml"),
        HOME_ENV: str(home),
        # dagster-celery starts `celery` from PATH.
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
    }


def local_url(port: int) -> str:
    return f"http://{HOST}:{port}"


def _start_processes(stack: ExitStack, logs: Path, workers: Sequence[str], ui_port: int, broker_url: str) -> None:
    """Start workers, daemon and webserver together (their imports overlap), then wait for them."""
    services: list[Service] = []
    stack.callback(stop_all, services)  # registered first: whatever has started by then is stopped
    services += [_start_worker(name, logs) for name in workers]
    services += [_start_daemon(logs), start_webserver(ui_port, logs)]
    wait_until(services[:len(workers)], lambda: _workers_answering(broker_url, workers), STARTUP_TIMEOUT_SECONDS,
               "answering Celery pings")
    wait_for_webserver(services[-1], ui_port)


@contextmanager
def running_stack(home: Path, workers: int = 2, env: Mapping[str, str] | None = None) -> Iterator[ScaleStack]:
    """Start the stack with `workers` Celery workers; `home` is the data folder every process shares.

    `env` adds variables for every process (e.g. the demo source's URL). Inside the block this
    process's environment is the stack's too, so `DagsterInstance.get()` opens the Postgres instance.
    The logs of workers, daemon and webserver stay in `home/scale_logs`.
    """
    missing = missing_binaries()
    bindir = postgres_bin()
    if missing or bindir is None:
        raise ServiceError(f"cannot start the local stack, missing: {'; '.join(missing)}")
    names = tuple(f"worker-{index}" for index in range(1, workers + 1))
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dataset-assets-scale-")))
        postgres = stack.enter_context(running_postgres(bindir))
        redis_url = stack.enter_context(running_redis(folder / "redis"))
        stack_env = {**_stack_env(folder, postgres, redis_url, home), **(env or {})}
        stack.enter_context(patched_environ(stack_env))
        dagster_home = Path(stack_env["DAGSTER_HOME"])
        dagster_home.mkdir()
        shutil.copy(DEPLOY / "dagster.yaml", dagster_home / "dagster.yaml")
        _create_instance_tables(dagster_home)
        ui_port = free_port()
        logs = home / "scale_logs"  # kept after the stack stops, beside the data
        logs.mkdir(parents=True, exist_ok=True)
        _start_processes(stack, logs, names, ui_port, stack_env[BROKER_ENV])
        yield ScaleStack(local_url(ui_port), names)
