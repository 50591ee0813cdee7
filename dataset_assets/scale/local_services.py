"""Local Postgres, Redis and long-running processes on 127.0.0.1, each stopped through the pid we started.

Every process starts in a session of its own, so stopping it signals exactly its process group: the
pid this module started plus whatever that process forked (Celery's pool, a daemon's code server),
and nothing else on the machine. Postgres refuses to run as root; as root it runs as the
unprivileged `postgres` system user that Debian's `postgresql` package creates, in a temp folder
that user owns. Nothing listens anywhere but 127.0.0.1.
"""
from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dataset_assets.core.errors import DatasetAssetsError

HOST = "127.0.0.1"
POSTGRES_SYSTEM_USER = "postgres"
POSTGRES_ROLE = "dagster"
POSTGRES_DATABASE = "dagster"
POSTGRES_LIB = Path("/usr/lib/postgresql")
LOG_TAIL_CHARS = 3000


class ServiceError(DatasetAssetsError):
    """A local service is missing or did not become ready; the message ends with its log's tail."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the service binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _log_tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except OSError:
        return "(no log)"


@dataclass
class Service:
    """A started process, leader of its own process group, and the file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def terminate(self) -> None:
        """SIGTERM the whole group: the process and everything it forked."""
        self._signal_group(signal.SIGTERM)

    def wait_stopped(self, deadline: float) -> None:
        """Wait until every group member exited; SIGKILL what is left at `deadline` (monotonic)."""
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        self._signal_group(signal.SIGKILL)
        self.process.wait()

    def fail(self, problem: str) -> ServiceError:
        return ServiceError(f"{self.name} (pid {self.pid}) {problem}; {self.log}:\n{_log_tail(self.log)}")

    def _group_alive(self) -> bool:
        self.process.poll()  # reap the leader, so only live members keep the group
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass


def start_service(name: str, command: Sequence[str], log: Path, cwd: Path | None = None,
                  user: str | None = None) -> Service:
    """Start `command` (as `user`, if given) in a new session with this process's environment, output to `log`."""
    with open(log, "ab") as output:
        process = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                   cwd=cwd, user=user, start_new_session=True)
    return Service(name, process, log)


def wait_until(services: Sequence[Service], ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `ready` until it holds; fail early, with its log, if one of `services` exits first."""
    deadline = time.monotonic() + timeout
    while not ready():
        for service in services:
            if service.process.poll() is not None:
                raise service.fail(f"exited with status {service.process.returncode} before {what}")
        if time.monotonic() > deadline:
            raise services[0].fail(f"not {what} after {timeout:.0f} s")
        time.sleep(0.2)


def stop_all(services: Sequence[Service], timeout: float = 30.0) -> None:
    """Terminate every service at once, then give them `timeout` seconds in all to exit."""
    for service in services:
        service.terminate()
    deadline = time.monotonic() + timeout
    for service in services:
        service.wait_stopped(deadline)


@contextmanager
def running(*services: Service, timeout: float = 30.0) -> Iterator[None]:
    """Stop `services` on leaving the block, whatever happens inside it."""
    try:
        yield
    finally:
        stop_all(services, timeout)


def _version_key(folder: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", folder.name))


def postgres_bin() -> Path | None:
    """The newest `/usr/lib/postgresql/<version>/bin` (Debian), else the folder of `initdb` on PATH."""
    versions = sorted((path.parent for path in POSTGRES_LIB.glob("*/bin/initdb")),
                      key=lambda folder: _version_key(folder.parent))
    if versions:
        return versions[-1]
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def missing_binaries() -> list[str]:
    """What `running_postgres` / `running_redis` need and this machine lacks, as install hints."""
    missing = []
    if postgres_bin() is None:
        missing.append("postgres (initdb/postgres binaries; Debian: apt-get install postgresql)")
    if shutil.which("redis-server") is None:
        missing.append("redis-server (Debian: apt-get install redis-server)")
    if os.geteuid() == 0 and not _system_user_exists(POSTGRES_SYSTEM_USER):
        missing.append(f"the '{POSTGRES_SYSTEM_USER}' system user postgres runs as when we are root")
    return missing


def _system_user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@dataclass(frozen=True)
class Postgres:
    """Connection settings of a running local Postgres database."""

    host: str
    port: int
    username: str
    password: str
    database: str

    def connect_kwargs(self, database: str | None = None) -> dict[str, object]:
        return {"host": self.host, "port": self.port, "user": self.username, "password": self.password,
                "dbname": database or self.database, "connect_timeout": 3}


def _accepts_connections(postgres: Postgres) -> bool:
    import psycopg2

    try:
        psycopg2.connect(**postgres.connect_kwargs("postgres")).close()
    except psycopg2.OperationalError:
        return False
    return True


def _create_database(postgres: Postgres) -> None:
    import psycopg2

    connection = psycopg2.connect(**postgres.connect_kwargs("postgres"))
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{postgres.database}"')
    finally:
        connection.close()


def _owned_temp_folder(prefix: str, user: str | None) -> Path:
    """A fresh folder under the system temp dir, owned by `user` (None: by us)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if user is not None:
        shutil.chown(folder, user, _user_group(user))
    return folder


def _user_group(user: str) -> int:
    return pwd.getpwnam(user).pw_gid


def _init_cluster(bindir: Path, data: Path, password: str, user: str | None) -> None:
    """`initdb` with password (scram) auth for role `dagster`; it runs as `user` when we are root."""
    pwfile = data.parent / "pwfile"
    pwfile.write_text(password + "\n")
    os.chmod(pwfile, 0o600)
    if user is not None:
        shutil.chown(pwfile, user, _user_group(user))
    command = [str(bindir / "initdb"), "-D", str(data), "-U", POSTGRES_ROLE, f"--pwfile={pwfile}",
               "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-sync"]
    result = subprocess.run(command, cwd=data.parent, user=user, capture_output=True, text=True)
    pwfile.unlink()
    if result.returncode != 0:
        raise ServiceError(f"initdb failed ({result.returncode}): {result.stderr[-LOG_TAIL_CHARS:]}")


@contextmanager
def running_postgres(bindir: Path, timeout: float = 60.0) -> Iterator[Postgres]:
    """A throwaway Postgres cluster on 127.0.0.1 with an empty database `dagster`; removed afterwards.

    Durability is off (`fsync=off`): the cluster lives as long as the block.
    """
    user = POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None
    folder = _owned_temp_folder("dataset-assets-postgres-", user)
    try:
        postgres = Postgres(HOST, free_port(), POSTGRES_ROLE, secrets.token_hex(16), POSTGRES_DATABASE)
        _init_cluster(bindir, folder / "data", postgres.password, user)
        command = [str(bindir / "postgres"), "-D", str(folder / "data"), "-h", HOST, "-p", str(postgres.port),
                   "-k", str(folder), "-c", "fsync=off", "-c", "synchronous_commit=off",
                   "-c", "full_page_writes=off", "-c", "max_connections=300"]
        service = start_service("postgres", command, folder / "postgres.log", cwd=folder, user=user)
        with running(service):
            wait_until([service], lambda: _accepts_connections(postgres), timeout, "accepting connections")
            _create_database(postgres)
            yield postgres
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _redis_answers(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(host=HOST, port=port, socket_timeout=1).ping())
    except redis.ConnectionError:
        return False


@contextmanager
def running_redis(folder: Path, timeout: float = 30.0) -> Iterator[str]:
    """A non-persistent Redis on 127.0.0.1; yields its `redis://127.0.0.1:<port>` base URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceError("redis-server not found (Debian: apt-get install redis-server)")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [binary, "--bind", HOST, "--port", str(port), "--daemonize", "no", "--save", "",
               "--appendonly", "no", "--dir", str(folder)]
    service = start_service("redis", command, folder / "redis.log")
    with running(service):
        wait_until([service], lambda: _redis_answers(port), timeout, "answering PING")
        yield f"redis://{HOST}:{port}"
