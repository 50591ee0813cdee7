"""Download throughput of the transfer engine against `curl` on loopback, and peak RSS of a 1 GiB stream to S3.

Scenarios (same files, same static server, same run): 64 small files (512 KiB) serial and
8 in flight, one large file (1 GiB), four large files (256 MiB) 4 in flight, and the 64 small
files again with a 20 ms delay before each response (loopback has no latency to hide otherwise). The server is a
separate process answering with `sendfile`, so neither client competes with it for the GIL.
Files land on tmpfs by default (`--work-dir`), so the network path is measured, not the disk.
Each row is the median of `--runs` rounds into an emptied folder, each round running the engine,
curl and curl + sha1sum once (interleaved, so a change in the machine's load hits them alike): wall
seconds, and CPU seconds of the client (this process for the engine, the child for curl), which a
busy machine skews less.
The engine verifies sha1 + sha256 and fsyncs each file before its atomic rename; curl does
neither, so `curl + sha1sum` shows what verifying costs curl. The S3 line streams the 1 GiB file
into moto's standalone server (another process) from a fresh child process and reports that
process's peak RSS growth (`VmHWM` after the transfer minus `VmRSS` before it).

    .venv/bin/python benchmarks/download.py [--runs 3] [--work-dir /dev/shm/dataset_assets_bench]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from dataset_assets.core.manifest import ManifestEntry
from dataset_assets.core.s3 import MultipartSettings, S3Destination, S3Url, make_s3_client
from dataset_assets.core.storage import LocalDestination
from dataset_assets.core.transfer import TransferSettings, transfer_entries
from dataset_assets.scale.local_services import free_port

MIB = 1 << 20
CONFIG = "bench"
SETS = {"small": (64, MIB // 2), "one_large": (1, 1024 * MIB), "few_large": (4, 256 * MIB)}
SLOW_PREFIX = "/slow"
SLOW_SECONDS = 0.02
CPU_PATH = "/_cpu"


class SendfileHandler(BaseHTTPRequestHandler):
    """GET `/<set>/<sequence>/<file>` from the served folder with zero-copy sendfile (HTTP/1.1 keep-alive).

    Under `/slow/` the same files answer after `SLOW_SECONDS`, like a distant CDN's first byte. `CPU_PATH`
    answers the server process's CPU seconds (all its threads, exited ones included; finer than /proc's ticks).
    """

    protocol_version = "HTTP/1.1"
    root = Path(".")

    def do_GET(self) -> None:
        target = self.path.split("?", 1)[0]
        if target == CPU_PATH:
            self._send_cpu_seconds()
            return
        if target.startswith(SLOW_PREFIX):
            time.sleep(SLOW_SECONDS)
            target = target[len(SLOW_PREFIX):]
        path = (self.root / target.lstrip("/")).resolve()
        if not path.is_file() or not path.is_relative_to(self.root):
            self.send_error(404)
            return
        size = path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.send_header("ETag", f'"{size}-{path.stat().st_mtime_ns}"')
        self.end_headers()
        self.wfile.flush()
        with open(path, "rb") as handle:
            self.connection.sendfile(handle)

    def _send_cpu_seconds(self) -> None:
        body = repr(time.process_time()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class BenchmarkServer(ThreadingHTTPServer):
    # The default listen backlog of 5 drops the SYNs of clients opening 8 connections at once, and
    # each dropped SYN costs that client a 1 s retransmission.
    request_queue_size = 128


def serve(folder: Path, port_file: Path) -> None:
    SendfileHandler.root = folder.resolve()
    server = BenchmarkServer(("127.0.0.1", 0), SendfileHandler)
    server.daemon_threads = True
    port_file.write_text(str(server.server_address[1]))
    server.serve_forever()


def generate(folder: Path) -> dict[str, list[Path]]:
    """The benchmark files `<set>/seq_<i>/shards-0000.tar` (random bytes), created once and reused."""
    files: dict[str, list[Path]] = {}
    for name, (count, size) in SETS.items():
        files[name] = [folder / name / f"seq_{index:03d}" / "shards-0000.tar" for index in range(count)]
        for path in files[name]:
            if not path.exists() or path.stat().st_size != size:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as handle:
                    for _ in range(0, size, MIB):
                        handle.write(os.urandom(min(MIB, size)))
    return files


def digests(folder: Path, files: dict[str, list[Path]]) -> dict[str, tuple[str, int]]:
    """sha1 and size of every file, cached beside them."""
    cache = folder / "digests.json"
    known = json.loads(cache.read_text()) if cache.exists() else {}
    for path in (path for paths in files.values() for path in paths):
        key = str(path.relative_to(folder))
        if key not in known or known[key][1] != path.stat().st_size:
            sha1 = hashlib.sha1()
            with open(path, "rb") as handle:
                while chunk := handle.read(8 * MIB):
                    sha1.update(chunk)
            known[key] = (sha1.hexdigest(), path.stat().st_size)
    cache.write_text(json.dumps(known))
    return {key: (sha1, size) for key, (sha1, size) in known.items()}


def entries_for(base_url: str, folder: Path, paths: list[Path], known: dict[str, tuple[str, int]]
                ) -> list[ManifestEntry]:
    """Entries for `paths` served at `base_url` (append SLOW_PREFIX to it for the slow variant)."""
    result = []
    for path in paths:
        relative = str(path.relative_to(folder))
        sha1, size = known[relative]
        result.append(ManifestEntry(CONFIG, path.parent.name, path.name, f"{base_url}/{relative}", sha1, size))
    return result


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@dataclass(frozen=True)
class Timing:
    """Wall seconds, and CPU seconds of the measured process(es) (less sensitive to a busy machine)."""

    wall: float
    cpu: float


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def curl(entries: list[ManifestEntry], out: Path, parallel: int, verify: bool) -> Timing:
    command = ["curl", "-s", "--fail"] + (["--parallel", "--parallel-max", str(parallel)] if parallel > 1 else [])
    for index, entry in enumerate(entries):
        command += ["-o", str(out / f"{index}.tar"), entry.url]
    cpu, started = _cpu_seconds(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if verify:
        subprocess.run(["sha1sum", *[str(out / f"{index}.tar") for index in range(len(entries))]], check=True,
                       stdout=subprocess.DEVNULL)
    return Timing(time.perf_counter() - started, _cpu_seconds(resource.RUSAGE_CHILDREN) - cpu)


def engine(entries: list[ManifestEntry], out: Path, workers: int) -> Timing:
    cpu, started = _cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
    report = transfer_entries(entries, {CONFIG: LocalDestination(out)}, TransferSettings(workers=workers))
    timing = Timing(time.perf_counter() - started, _cpu_seconds(resource.RUSAGE_SELF) - cpu)
    assert report.ok and report.count("downloaded") == len(entries), report.failures
    return timing


def median_timings(runs: int, out: Path, measures: list[Callable[[Path], Timing]]) -> list[Timing]:
    """Median timing of each measure, run interleaved (one of each per round) so that a change in
    the machine's load during the row hits the engine and curl alike."""
    rounds = [[measure(fresh(out)) for measure in measures] for _ in range(runs)]
    return [Timing(statistics.median(r[i].wall for r in rounds), statistics.median(r[i].cpu for r in rounds))
            for i in range(len(measures))]


@dataclass(frozen=True)
class Row:
    label: str
    size: int
    engine: Timing
    curl: Timing
    curl_sha1sum: Timing


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def s3_child(endpoint: str, entry_json: str) -> None:
    """In a fresh process: stream one entry into moto, print RSS before, peak RSS growth and seconds."""
    entry = ManifestEntry(**json.loads(entry_json))
    client = make_s3_client(endpoint, "us-east-1")
    client.create_bucket(Bucket="bench")
    destination = S3Destination(client, S3Url("bench", "raw"), MultipartSettings())
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM so the peak below is the transfer's own
    before = _status_kib("VmRSS")
    started = time.perf_counter()
    report = transfer_entries([entry], {CONFIG: destination}, TransferSettings(workers=1))
    elapsed = time.perf_counter() - started
    assert report.ok, report.failures
    print(json.dumps({"rss_before_mib": before / 1024, "peak_growth_mib": (_status_kib("VmHWM") - before) / 1024,
                      "seconds": elapsed}))


def s3_peak_rss(entry: ManifestEntry) -> dict[str, float]:
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1"}
    moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        fields = {"config": entry.config, "sequence": entry.sequence, "filename": entry.filename, "url": entry.url,
                  "sha1": entry.sha1, "size": entry.size}
        child = subprocess.run([sys.executable, __file__, "--s3-child", f"http://127.0.0.1:{port}", json.dumps(fields)],
                               check=True, capture_output=True, text=True, env=env)
        return json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        moto.terminate()
        moto.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=Path("/dev/shm/dataset_assets_bench"),
                        help="source and output files (default tmpfs, so the disk is not what is measured)")
    parser.add_argument("--serve", nargs=2, metavar=("FOLDER", "PORT_FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--s3-child", nargs=2, metavar=("ENDPOINT", "ENTRY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), Path(args.serve[1]))
        return
    if args.s3_child:
        s3_child(*args.s3_child)
        return
    if shutil.which("curl") is None:
        sys.exit("curl is needed on PATH for the comparison")
    source, out = args.work_dir / "source", args.work_dir / "out"
    files = generate(source)
    known = digests(source, files)
    port_file = args.work_dir / "port"
    port_file.unlink(missing_ok=True)
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(source), str(port_file)])
    try:
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        base_url = f"http://127.0.0.1:{port_file.read_text()}"
        sets = {name: entries_for(base_url, source, paths, known) for name, paths in files.items()}
        sets["small_slow"] = entries_for(base_url + SLOW_PREFIX, source, files["small"], known)
        rows = measure(args.runs, out, sets)
        s3 = s3_peak_rss(entries_for(base_url, source, files["one_large"], known)[0])
    finally:
        server.terminate()
        server.wait()
    report(args, rows, s3)
    shutil.rmtree(out, ignore_errors=True)


def measure(runs: int, out: Path, sets: dict[str, list[ManifestEntry]]) -> list[Row]:
    plan = [("64 small files (512 KiB), serial", "small", 1), ("64 small files (512 KiB), 8 in flight", "small", 8),
            ("1 large file (1 GiB)", "one_large", 1), ("4 large files (256 MiB), 4 in flight", "few_large", 4),
            ("64 small files, 20 ms first byte, serial", "small_slow", 1),
            ("64 small files, 20 ms first byte, 8 in flight", "small_slow", 8)]
    rows = []
    for label, name, workers in plan:
        entries = sets[name]
        row = Row(label, sum(entry.size or 0 for entry in entries), *median_timings(runs, out, [
            lambda folder: engine(entries, folder, workers),
            lambda folder: curl(entries, folder, workers, verify=False),
            lambda folder: curl(entries, folder, workers, verify=True)]))
        rows.append(row)
        print(f"{label}: {row}", flush=True)
    return rows


def report(args: argparse.Namespace, rows: list[Row], s3: dict[str, float]) -> None:
    load = " / ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"\nCommand: .venv/bin/python benchmarks/download.py --runs {args.runs} (medians of {args.runs} runs; "
          f"{os.cpu_count()} CPUs, load average {load} at the end)\n")
    print("| scenario | engine MiB/s | curl MiB/s | engine / curl | curl + sha1sum MiB/s "
          "| CPU s: engine / curl / curl + sha1sum |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row.label} | {row.size / MIB / row.engine.wall:.0f} | {row.size / MIB / row.curl.wall:.0f} "
              f"| {row.curl.wall / row.engine.wall:.2f}x | {row.size / MIB / row.curl_sha1sum.wall:.0f} "
              f"| {row.engine.cpu:.2f} / {row.curl.cpu:.2f} / {row.curl_sha1sum.cpu:.2f} |")
    print()
    for serial, concurrent in ((rows[0], rows[1]), (rows[4], rows[5])):
        print(f"{concurrent.label}: engine vs serial curl {serial.curl.wall / concurrent.engine.wall:.2f}x, "
              f"curl in flight vs serial curl {serial.curl.wall / concurrent.curl.wall:.2f}x")
    print(f"1 GiB stream to S3 (moto in another process, 8 MiB parts, 4 in flight): {1024 / s3['seconds']:.0f} MiB/s, "
          f"peak RSS growth {s3['peak_growth_mib']:.1f} MiB (RSS before {s3['rss_before_mib']:.0f} MiB)")


if __name__ == "__main__":
    main()
