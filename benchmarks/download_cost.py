"""Where the time of a download goes, on the same loopback `sendfile` server as benchmarks/download.py.

One 1 GiB file: the engine as it is, the engine hashing with hashlib instead of its one-pass
digests, the engine with its digests skipped, and curl, interleaved in each round.

64 small files (512 KiB): the engine serial and 8 in flight, serial curl, and a bare client: one
`http.client` keep-alive connection per thread, 4 threads, each file received into one buffer,
hashed (sha1 + sha256, the engine's one-pass digests) and written, with no retries, `.part`,
lock, fsync, rename or report. The bare rows, with and without hashing, show what any Python
client costs per file here, next to what the server and curl cost.

"Digests skipped" is a diagnostic, not a mode of the engine: for that run only, this process
replaces `storage.StreamDigest` with a byte counter and accepts any digest, so what remains is
receiving, writing, `.part` bookkeeping, fsync and rename. Per run: wall seconds, the client's CPU
seconds, the server process's CPU seconds (it reports them itself, at `CPU_PATH`), and the CPU
seconds both cores sat idle. Also printed:
what sha1 + sha256 of 1 GiB cost in memory on this CPU, by hashlib and by the engine's digests.

    .venv/bin/python benchmarks/download_cost.py [--runs 5]
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from download import CPU_PATH, MIB, curl, digests, engine, entries_for, fresh, generate

from dataset_assets.core import storage, transfer
from dataset_assets.core.manifest import ManifestEntry
from dataset_assets.core.storage import FileDigest

TICKS = os.sysconf("SC_CLK_TCK")
BARE_THREADS = 4
Runs = dict[str, Callable[[Path], float]]


class _SizeOnly:
    """Stands in for `storage.StreamDigest`: counts bytes, hashes nothing."""

    def __init__(self) -> None:
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)

    def result(self) -> FileDigest:
        return FileDigest(self.size, "", "")


@contextlib.contextmanager
def replaced(module: object, **attributes: object) -> Iterator[None]:
    """`module`'s `attributes` set for the block (this process only), then put back."""
    saved = {name: getattr(module, name) for name in attributes}
    for name, value in attributes.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def _server_cpu(base_url: str) -> float:
    with urllib.request.urlopen(base_url + CPU_PATH) as response:
        return float(response.read())


def _idle_cpu() -> float:
    return int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[4]) / TICKS


def measured(run: Callable[[Path], float], out: Path, server: str) -> tuple[float, float, float, float]:
    """(wall, client CPU, server CPU, idle CPU) seconds of one run into an emptied `out`."""
    folder = fresh(out)
    server_before, idle_before, started = _server_cpu(server), _idle_cpu(), time.perf_counter()
    client = run(folder)
    return (time.perf_counter() - started, client, _server_cpu(server) - server_before, _idle_cpu() - idle_before)


def engine_without_digests(entries: list[ManifestEntry], folder: Path) -> float:
    with replaced(storage, StreamDigest=_SizeOnly), replaced(transfer, matches=lambda *args: True):
        return engine(entries, folder, 1).cpu


def engine_with_hashlib(entries: list[ManifestEntry], folder: Path) -> float:
    with replaced(storage, _Digests=storage.HashlibDigests):
        return engine(entries, folder, 1).cpu


def bare_client(entries: list[ManifestEntry], folder: Path, hashed: bool) -> float:
    """Fetch `entries` into `folder` with the least a Python client can do (see the module doc);
    returns this process's CPU seconds."""
    local = threading.local()

    def fetch(numbered: tuple[int, ManifestEntry]) -> None:
        index, entry = numbered
        url = urlsplit(entry.url)
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection(url.netloc)
            local.buffer = memoryview(bytearray(MIB))
        local.connection.request("GET", url.path)
        response = local.connection.getresponse()
        digests = storage._Digests()
        with open(folder / f"{index}.tar", "wb", buffering=0) as handle:
            while received := response.readinto(local.buffer):
                if hashed:
                    digests.update(local.buffer[:received])
                handle.write(local.buffer[:received])
        digests.hexdigests()

    before = time.process_time()
    with ThreadPoolExecutor(BARE_THREADS) as pool:
        list(pool.map(fetch, enumerate(entries)))
    return time.process_time() - before


def hashing_seconds(make: Callable[[], Any]) -> float:
    """CPU seconds of sha1 + sha256 over 1 GiB held in memory (1 MiB updates), median of 3."""
    data = os.urandom(MIB)
    times = []
    for _ in range(3):
        digests, before = make(), time.process_time()
        for _ in range(1024):
            digests.update(data)
        digests.hexdigests()
        times.append(time.process_time() - before)
    return statistics.median(times)


def large_runs(entries: list[ManifestEntry]) -> Runs:
    return {
        "engine": lambda folder: engine(entries, folder, 1).cpu,
        "engine, hashlib digests": lambda folder: engine_with_hashlib(entries, folder),
        "engine, digests skipped": lambda folder: engine_without_digests(entries, folder),
        "curl": lambda folder: curl(entries, folder, 1, verify=False).cpu,
    }


def small_runs(entries: list[ManifestEntry]) -> Runs:
    return {
        "engine, serial": lambda folder: engine(entries, folder, 1).cpu,
        "engine, 8 in flight": lambda folder: engine(entries, folder, 8).cpu,
        f"bare client, {BARE_THREADS} threads, hashed": lambda folder: bare_client(entries, folder, hashed=True),
        f"bare client, {BARE_THREADS} threads, not hashed": lambda folder: bare_client(entries, folder, hashed=False),
        "curl, serial": lambda folder: curl(entries, folder, 1, verify=False).cpu,
    }


def table(title: str, runs: Runs, rounds: list[dict[str, tuple[float, float, float, float]]], files: int) -> None:
    """Medians per run; for many files also per file, in milliseconds."""
    reference = statistics.median(row[list(runs)[-1]][0] for row in rounds)
    per_file = " | ms per file: wall / client CPU / server CPU" if files > 1 else ""
    print(f"| {title} | wall s | vs curl | client CPU s | server CPU s | idle CPU s (2 cores){per_file} |")
    print("|---|---|---|---|---|---|" + ("---|" if files > 1 else ""))
    for name in runs:
        wall, client, served, idle = (statistics.median(row[name][i] for row in rounds) for i in range(4))
        line = f"| {name} | {wall:.3f} | {reference / wall:.2f}x | {client:.3f} | {served:.3f} | {idle:.3f} |"
        if files > 1:
            line += f" {wall / files * 1e3:.2f} / {client / files * 1e3:.2f} / {served / files * 1e3:.2f} |"
        print(line)
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work-dir", type=Path, default=Path("/dev/shm/dataset_assets_bench"))
    args = parser.parse_args()
    source, out, port_file = args.work_dir / "source", args.work_dir / "out", args.work_dir / "port"
    files = generate(source)
    known = digests(source, files)
    port_file.unlink(missing_ok=True)
    download = Path(__file__).with_name("download.py")
    server = subprocess.Popen([sys.executable, str(download), "--serve", str(source), str(port_file)])
    try:
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        base_url = f"http://127.0.0.1:{port_file.read_text()}"
        scenarios = [("1 GiB", large_runs(entries_for(base_url, source, files["one_large"], known)), 1),
                     ("64 x 512 KiB", small_runs(entries_for(base_url, source, files["small"], known)), 64)]
        measurements = [(title, runs, count, [{name: measured(run, out, base_url) for name, run in runs.items()}
                                              for _ in range(args.runs)])
                        for title, runs, count in scenarios]
    finally:
        server.terminate()
        server.wait()
    load = " / ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"Command: .venv/bin/python benchmarks/download_cost.py --runs {args.runs} "
          f"(medians of {args.runs} interleaved rounds; load average {load} at the end)\n")
    for title, runs, count, rounds in measurements:
        table(title, runs, rounds, count)
    print(f"sha1 + sha256 of 1 GiB in memory: hashlib {hashing_seconds(storage.HashlibDigests):.2f} CPU s, "
          f"the engine's digests ({storage._Digests.__name__}) {hashing_seconds(storage._Digests):.2f} CPU s")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
