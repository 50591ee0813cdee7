"""Helpers for crash and concurrency tests: Dagster run processes, kills, and a polling reader.

`RunProcess` runs `dagster asset materialize` (in-process executor, so the run is that one
process) in a new process group that `kill` ends with SIGKILL. `OutputReader` is the
outside observer the crash guarantees are about: a thread that, while runs write, keeps reading
every file at a final path (tars through `tarfile` and `webdataset`, `_index.json`, YAMLs) and
records each version it saw, so a test can prove no half-written file was ever visible.

Run as a module, this file is the run process: it runs the dagster CLI in-process after "go" on
stdin, optionally slowing one stage down (`python -m dataset_assets_tests.reliability.crash_helpers
<stage|none> <seconds> <dagster args>`): fault injection that makes the stage take long enough for
a kill to land inside it. The real function still runs; only a delay is added (see `slow_stage`).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import yaml
from webdataset import tariterators

from dataset_assets.cli import DEMO_URL_ENV
from dataset_assets.core.index import INDEX_FILE, parse_index
from dataset_assets.core.preprocess import PreprocessConfig
from dataset_assets.defs.resources import HOME_ENV
from dataset_assets.demo.server import DemoServer

PROJECT = Path(__file__).resolve().parents[2]
IN_PROCESS = json.dumps({"execution": {"config": {"in_process": {}}}})
TAR_END = bytes(1024)
STAGES = ("preprocess", "split-write")


def dagster_env(dagster_home: Path, home: Path, server: DemoServer) -> dict[str, str]:
    """The environment of a run process: the test's instance, dataset home and demo server."""
    return {**os.environ, "DAGSTER_HOME": str(dagster_home), HOME_ENV: str(home), DEMO_URL_ENV: server.base_url}


class RunProcess:
    """A `dagster asset materialize` process, leader of its own process group, gated by `go`.

    The process imports the code location at once, then waits for `go` before it starts the run,
    so a test can arrange its instance meanwhile and two processes can start their runs together
    (one never told to go exits when its stdin closes). Leaving the `with` block kills the group
    if the run is still going, so no run outlives a test.
    """

    def __init__(self, select: str, env: dict[str, str], log: Path, partition: str | None = None,
                 slow: tuple[str, float] | None = None) -> None:
        args = ["asset", "materialize", "-m", "dataset_assets.definitions", "--select", select,
                "--config-json", IN_PROCESS, *(["--partition", partition] if partition else [])]
        stage = [slow[0], str(slow[1])] if slow else ["none", "0"]
        self.log = log
        with open(log, "wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dataset_assets_tests.reliability.crash_helpers", *stage, *args],
                env=env, cwd=PROJECT, stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True)

    def __enter__(self) -> RunProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.kill()

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        self.process.stdin.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
        """Poll `condition` until true; fail naming `what` if the run ends first or time runs out."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"run ended (exit {self.process.returncode}) before {what}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} after {timeout:.0f} s:\n{self.output()}")
            time.sleep(0.01)

    def kill(self) -> int:
        """SIGKILL the run's process group (led by the pid this test started); return the exit code."""
        os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait(timeout=30)

    def finish(self, timeout: float = 180.0) -> None:
        """Wait for the run and fail with its output unless it succeeded."""
        code = self.process.wait(timeout=timeout)
        assert code == 0, f"run exited {code}:\n{self.output()}"


def is_final_path(path: Path, root: Path) -> bool:
    """A path readers may open: no hidden component (staging, locks) and not a download's `.part`."""
    parts = path.relative_to(root).parts
    return not any(part.startswith(".") for part in parts) and not path.name.endswith((".part", ".part.json"))


def check_tar(data: bytes, where: str) -> int:
    """Read every member with tarfile and with webdataset; return the member count."""
    if len(data) % 512 or not data.endswith(TAR_END):
        raise ValueError(f"{where}: {len(data)} bytes without the tar end-of-archive blocks")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        members = archive.getmembers()
        for member in members:
            extracted = archive.extractfile(member)
            if extracted is None or len(extracted.read()) != member.size:
                raise ValueError(f"{where}: member {member.name} is short")
    read = list(tariterators.tar_file_iterator(io.BytesIO(data)))
    if len(read) != len(members):
        raise ValueError(f"{where}: webdataset read {len(read)} members, tarfile {len(members)}")
    return len(members)


def check_yaml(data: bytes, where: str) -> None:
    """A split manifest: `{"tars": {sequence: [path or URL, ...]}}`."""
    document = yaml.safe_load(data)
    tars = document.get("tars") if isinstance(document, dict) else None
    if not isinstance(tars, dict) or not all(isinstance(v, list) and all(isinstance(t, str) for t in v)
                                             for v in tars.values()):
        raise ValueError(f"{where}: not a complete split manifest: {data[:200]!r}")


def check_file(path: Path, data: bytes) -> None:
    """Raise if `data`, read at the final path `path`, is not a complete file of its kind."""
    if path.suffix == ".tar":
        check_tar(data, str(path))
    elif path.name == INDEX_FILE:
        parse_index(json.loads(data), str(path))
    elif path.suffix == ".json":
        json.loads(data)
    elif path.suffix == ".yaml":
        check_yaml(data, str(path))


class OutputReader:
    """A thread that keeps reading every file at a final path under `roots` while runs write.

    Each new version of a file (new inode, size or mtime) is read completely and checked by
    `check_file`; `seen` maps each path to the sha256 of every version read, `problems` lists what
    failed a check, `checked` counts the versions read. Files may vanish between listing and
    reading (a folder swap); that is not a problem, a partial one is.
    """

    def __init__(self, roots: Iterable[Path]) -> None:
        self.roots = list(roots)
        self.seen: dict[Path, set[str]] = {}
        self.problems: list[str] = []
        self.checked = 0
        self.scans = 0
        self._versions: set[tuple[Path, int, int, int]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="output-reader", daemon=True)

    def __enter__(self) -> OutputReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.scan()

    def paths(self) -> set[Path]:
        """The paths read so far (safe to call while the reader runs)."""
        with self._lock:
            return set(self.seen)

    def summary(self) -> str:
        """The counts `make reliability` shows (pytest -rA prints what a passing test printed)."""
        return (f"{self.checked} file versions read whole at final paths in {self.scans} scans, "
                f"{len(self.problems)} partial")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.scan()
            self._stop.wait(0.01)

    def scan(self) -> None:
        self.scans += 1
        for root in self.roots:
            try:
                paths = [path for path in root.rglob("*") if is_final_path(path, root)]
            except FileNotFoundError:
                continue
            for path in paths:
                self._read(path)

    def _read(self, path: Path) -> None:
        try:
            with open(path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                version = (path, stat.st_ino, stat.st_size, stat.st_mtime_ns)
                if version in self._versions:
                    return
                data = handle.read()
        except (FileNotFoundError, IsADirectoryError):
            return
        problem: str | None = None
        try:
            check_file(path, data)
        except Exception as error:  # noqa: BLE001 - every failure to read is a finding, whatever its type
            problem = f"{path}: {type(error).__name__}: {error}"
        with self._lock:
            self._versions.add(version)
            self.checked += 1
            self.seen.setdefault(path, set()).add(hashlib.sha256(data).hexdigest())
            if problem is not None:
                self.problems.append(problem)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def size_or_zero(path: Path) -> int:
    """The size of a file that its writer may remove at any moment (0 once gone)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def slow_stage(stage: str, seconds: float) -> None:
    """Add `seconds` of delay inside one stage of this process, keeping the real code path.

    preprocess: before each sample's transform, while the shard being written is open in the
    staging folder. split-write: between the two halves of each split YAML written to its `.part`
    (the real `atomic_file` publishes it), so a kill lands on a half-written part.
    """
    from dataset_assets.core import preprocess, storage

    if stage == "preprocess":
        transform = preprocess.transform_sample

        def slow_transform(key: str, sample: Mapping[str, bytes], config: PreprocessConfig) -> dict[str, bytes]:
            time.sleep(seconds)
            return transform(key, sample, config)

        preprocess.transform_sample = slow_transform
    elif stage == "split-write":
        def slow_write(final: Path, data: bytes, private: bool = False) -> None:
            with storage.atomic_file(final) as part, open(part, "wb") as handle:
                if private:
                    os.chmod(part, 0o600)
                handle.write(data[: len(data) // 2])
                handle.flush()
                time.sleep(seconds)
                handle.write(data[len(data) // 2:])

        storage.write_bytes_atomic = slow_write
    elif stage != "none":
        raise SystemExit(f"stage must be one of {STAGES} or none, got {stage!r}")


def main(argv: list[str]) -> None:
    """`<stage> <seconds> <dagster CLI args...>`: import, slow the stage, wait for "go", run the CLI here."""
    from dagster._cli import main as dagster_main

    import dataset_assets.definitions  # noqa: F401 - the slow import happens before "go"

    stage, seconds, *dagster_args = argv
    slow_stage(stage, float(seconds))
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("stdin closed before go")
    sys.argv = ["dagster", *dagster_args]
    dagster_main()


if __name__ == "__main__":
    main(sys.argv[1:])
