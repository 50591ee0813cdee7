"""Publish benchmark: one large tarball to moto's standalone S3 server on 127.0.0.1 (never run in CI).

ours:      `core.publish.publish_file` — sha1/sha256 of the file, then `core.s3`'s multipart sink
           (`--part-size-mib` parts, `--concurrency` in flight), then a verifying HEAD
reference: boto3 `upload_fileobj` on one file object with its default `TransferConfig` (which is
           itself multipart above 8 MiB: 8 MiB parts, 10 threads; no checksum metadata)
re-publish: `publish_file` again on the same object (hash + HEAD, nothing uploaded)

Both go through a client from `core.s3.make_s3_client` to the same `moto_server` process (its
own process, so it does not share the benchmark's GIL), interleaved (the machine is shared, so
load drifts); each object is deleted after it is timed. Medians are reported. `--results FILE`
replaces the "## Publish" section of FILE with the markdown printed.

    .venv/bin/python benchmarks/publish.py --results benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import httpx
from results import replace_section

from dataset_assets.core.publish import publish_file, version_destination
from dataset_assets.core.s3 import MIB, make_s3_client
from dataset_assets.core.versioned import PublishSpec
from dataset_assets.scale.local_services import free_port

SECTION = "## Publish"
BUCKET = "publish-bench"
NOTE = ("boto3's default `upload_fileobj` is itself a parallel multipart upload (8 MiB parts, 10 threads), "
        "so this compares two parallel uploads. Ours also reads the file once more before uploading (sha1 + "
        "sha256: the sha1 is the object's metadata, fixed when the multipart upload is created), hashes the "
        "stream again while uploading (the sink verifies what it sent), lists stale multipart uploads and HEADs "
        "the object before and after. moto is CPU-bound in Python, so on a loaded 2-core machine every extra "
        "CPU-second of the client shows in the wall time (sha1 and sha256 each run at about 700 MiB/s here: "
        "about 3 CPU-seconds per GiB for the two passes). Not measured against a network-bound endpoint.")
DUMMY_AWS_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def moto_server() -> Iterator[str]:
    """`moto_server` on a free loopback port, in its own process; yields its endpoint URL."""
    port = free_port()
    process = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=1.0)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=30)


def write_tarball(path: Path, size_mib: int) -> None:
    """Incompressible bytes, so nothing on the way can shrink them."""
    with open(path, "wb") as handle:
        for _ in range(size_mib):
            handle.write(os.urandom(MIB))


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run(path: Path, endpoint: str, spec: PublishSpec, repeats: int) -> dict[str, list[float]]:
    ours_client = make_s3_client(endpoint, max_pool_connections=spec.concurrency + 4)
    reference_client = make_s3_client(endpoint)
    destination = version_destination(spec, "bench", "2024_01_01", ours_client)
    times: dict[str, list[float]] = {"ours": [], "reference": [], "re-publish": []}

    def ours(index: int) -> None:
        name = f"ours-{index}.tar"
        times["ours"].append(timed(lambda: publish_file(path, destination, name)))
        times["re-publish"].append(timed(lambda: publish_file(path, destination, name)))
        destination.call("delete_object", name)

    def reference(index: int) -> None:
        key = f"reference/{index}.tar"
        with open(path, "rb") as handle:
            times["reference"].append(timed(lambda: reference_client.upload_fileobj(handle, BUCKET, key)))
        reference_client.delete_object(Bucket=BUCKET, Key=key)

    for index in range(repeats):
        for step in ((ours, reference) if index % 2 == 0 else (reference, ours)):
            step(index)
            print(f"  repetition {index + 1}: {step.__name__} done", file=sys.stderr)
    return times


def table(times: dict[str, list[float]], size_mib: int, spec: PublishSpec) -> str:
    ours, reference = statistics.median(times["ours"]), statistics.median(times["reference"])
    republish = statistics.median(times["re-publish"])
    rows = [
        f"| ours: parallel multipart ({spec.part_size_mib} MiB parts, {spec.concurrency} in flight), hashed + "
        f"HEAD-verified | {ours:.1f} s | {size_mib / ours:.0f} MiB/s | {reference / ours:.2f}x |",
        f"| reference: boto3 `upload_fileobj`, default `TransferConfig` | {reference:.1f} s | "
        f"{size_mib / reference:.0f} MiB/s | 1.00x |",
        f"| ours: re-publish of the same object (hash + HEAD, nothing uploaded) | {republish:.1f} s | — | "
        f"{reference / republish:.2f}x |",
    ]
    header = "| publish of one incompressible tarball | median time | throughput | speed vs reference |"
    return "\n".join([header, "|---|---|---|---|", *rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="tarball size (default 1 GiB)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--part-size-mib", type=int, default=PublishSpec.part_size_mib)
    parser.add_argument("--concurrency", type=int, default=PublishSpec.concurrency)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp folder)")
    parser.add_argument("--results", type=Path, default=None, help="markdown file whose '## Publish' to replace")
    args = parser.parse_args(argv)
    os.environ.update(DUMMY_AWS_ENV)
    work = Path(tempfile.mkdtemp(prefix="publish-bench-", dir=args.work))
    try:
        write_tarball(work / "assets.tar", args.size_mib)
        with moto_server() as endpoint:
            make_s3_client(endpoint).create_bucket(Bucket=BUCKET)
            spec = PublishSpec(BUCKET, "bench", args.part_size_mib, args.concurrency, endpoint)
            times = run(work / "assets.tar", endpoint, spec, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = " ".join(shlex.quote(part) for part in [".venv/bin/python", "benchmarks/publish.py", *sys.argv[1:]])
    body = "\n\n".join([
        SECTION,
        f"Command: `{command}` — medians of {args.repeats} interleaved repetitions, {args.size_mib} MiB to "
        f"`moto_server` {package_version('moto')} (its own process) on 127.0.0.1. "
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, load average at "
        f"the end {', '.join(f'{load:.1f}' for load in os.getloadavg())}.",
        table(times, args.size_mib, spec),
        NOTE,
        "Raw seconds: " + "; ".join(f"{name} {', '.join(f'{value:.1f}' for value in values)}"
                                    for name, values in times.items()) + ".",
    ])
    print(body)
    if args.results is not None:
        replace_section(args.results, SECTION, body)


if __name__ == "__main__":
    main()
