"""Shard benchmarks, each against its reference measured in the same run (never run in CI).

write:      `ShardWriter` (+ its `_index.json`)        vs `webdataset.ShardWriter`
sequential: `ShardStream.raw_samples` (every member, as bytes and as views) vs `cat`, plain `tarfile`, `webdataset`
random:     `IndexedShardDataset.read(i)` (raw bytes)  vs `wids.ShardListDataset[i]` (no transforms)

Every measurement is repeated, references and ours interleaved (the machine is shared, so load
drifts), and the median is reported. Reads run from a warm page cache. `--results FILE` replaces
the "## Shards" section of FILE with the markdown table printed on stdout.

    .venv/bin/python benchmarks/shards.py --results benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy
import webdataset
from results import replace_section

from dataset_assets.core.index import read_index, write_index
from dataset_assets.core.loading import IndexedShardDataset, ShardStream
from dataset_assets.core.shards import ShardWriter, map_shard

Sample = tuple[str, dict[str, bytes]]
SECTION = "## Shards"
NOTES = """Local shards are read through a read-only memory map (`core.shards.map_shard`), whose pages are
mapped as members touch them, with members handed out either as `bytes` (one copy each into fresh
memory) or, with `ShardStream(views=True)`, as zero-copy `memoryview`s of the map. A view is not
yet a read: its bytes come from the page cache when a decoder touches them, so the views rows
measure how fast samples are delivered, while `cat` and the bytes rows move every byte once. A
views row at 0.8x `cat` or more therefore does not mean that every byte was read that fast; the
bytes row shows that. The "pread per member" row is a bare loop of one `os.pread` per member at
offsets from `_index.json`, nothing else. Random access reads a sample with one `pread` (one per
member past 64 KiB) through the index, where `wids` slices an mmap.

**Huge pages (since 2026-12-07, third session).** On this machine's Linux (6.18, ext4, transparent
huge pages in `madvise` mode) the page cache holds a file in folios of up to 2 MiB, sized by the
write or the readahead that made them, and a read-only map takes a 2 MiB folio with one page-table
entry, where 4 KiB folios cost a page fault per 64 KiB and a TLB entry per 4 KiB. `ShardWriter` now
writes each shard in whole 2 MiB writes at 2 MiB offsets (`core/aligned_writes.py`; it used a 1 MiB
`BufferedWriter`, whose writes fell at any offset), and `map_shard` asks for huge pages
(`MADV_HUGEPAGE`), so a part of a shard read cold is read ahead in 2 MiB folios. The shards this
benchmark writes are therefore mapped nearly whole through 2 MiB pages (the share is printed under
each table; the tail of a shard that is not a whole 2 MiB stays in small pages). A shard first read
into the page cache with `read()` (`cat`, `tarfile`, webdataset) is held in small folios, and our map
then takes it page by page: the bytes row is then about 0.58x `cat` (below). `cat` is faster on
large folios too, by about a fifth in one measurement (22.2 against 17.8 ms for the 8 small-sample
shards, 9 runs each).

Reading the 8 small-sample shards evicted from the page cache before each read (7 interleaved
rounds, medians): `iter_tar_samples` 82.9 ms without the huge-page request, 47.4 ms with it; `cat`
47.4 ms.

Local shards are walked in C (`core/_tarwalk.c`, since 2026-12-06): header parse and checksum,
name checks, key split and grouping into samples, with the next header prefetched, zstd blocks
expanded through a callback, and (since 2026-12-07, third session) each sample tagged with its
shard, so that no Python frame runs per sample of a local shard. On 2026-12-07 the name is scanned
16 bytes at a time with SSE2, the octal size and checksum fields are read 8 digits at a time, a
sample's key is copied rather than decoded, and a member joins its sample in one dict lookup.
Instructions to walk one 1000-sample small-sample shard in bytes mode (callgrind, 5 walks less 1,
divided by 4): 7.60 M at `a0fbea4` (the second session's end), 6.09 M after (-20%).

Before and after this session, measured with a one-off script: 6 processes of each build
alternating, each building its own 8 small-sample shards with its own writer and reading them in
11 rounds interleaved with `cat` of the same shards, medians of the process medians:

| build | bytes | views | `cat` | bytes / `cat` | views / `cat` |
|---|---|---|---|---|---|
| `a0fbea4` | 14.3 ms | 9.6 ms | 9.3 ms | 0.64x | 0.95x |
| this session | 11.5 ms | 7.1 ms | 8.6 ms | 0.74x | 1.17x |

Both builds reading the same shards held in small folios (the old writer's), 4 processes each,
11 rounds: bytes 0.53x `cat` at `a0fbea4` against 0.58x now, views 0.73x against 0.78x. Between
minutes this machine's speed moves by 2x (`cat` of the same shards took 8.6 ms in one run and
20.7 ms in another a quarter of an hour later), so only ratios within one run compare.

Tried and not kept: prefetching the shard 16 or 64 KiB ahead of the walk (a software prefetch of
every cache line; 0.41x-0.44x `cat` against 0.53x without, 2026-12-06); populating the map up front
(`MAP_POPULATE`, until 2026-11-23: for a 38 MB camera shard, populating and tearing down the map cost
about what `cat` spends reading it, and nothing was gained when every byte is read); glibc's
`rep movsb` threshold raised so that member copies use vector loops (`GLIBC_TUNABLES`, 3 processes
each: 11.9 against 11.8 ms). After this session's changes, `perf` of a loop of bytes-mode reads puts
43% of the time in copying members (`memmove`), 15% in the walk (`walker_next`, mostly waiting for
each header's cache line) and about 12% in `malloc`/`free`; page faults are gone from the profile.

**Prefetching the next member (since 2026-12-07, fifth session).** With the shards mapped through
2 MiB pages, a 4 KiB member's copy waited on memory: `perf` of a loop of bytes-mode reads put 37% of
the time in `memmove` (nearly all of it in its `rep movsb`), 15% in the walk and 11% in
`malloc`/`free`. In bytes mode the walk now prefetches every cache line up to 8 KiB past the next
header, each line once (`_tarwalk.c`, `prefetch_ahead`), so the next member comes from memory while
Python builds the current sample. Old and new walk built side by side and alternated in one process
with `cat` (15 rounds, 3 processes): 4 KiB members 4-11% faster, camera frames unchanged within
noise (-8% to +2%). Windows of 6-12 KiB gained alike and 24 KiB less; prefetching every other line,
or one line in four, was slower than none (13.5-14.1 against 12.1-12.4 ms). Views still prefetch only
the header: prefetching data they do not read slowed them by a tenth. The 2026-12-06 attempt above,
which lost, read shards held in 4 KiB folios. After the change `perf` puts 25% in `memmove`, 22% in
the walk (a third of that in the prefetch loop) and 12% in `malloc`/`free`. glibc 2.36, as here,
ignores a `glibc.malloc.tcache_max` above 1032 bytes (its per-thread cache's largest chunk), so no
tunable takes a 4 KiB member's `malloc`/`free` off the slow path: the fourth session's tcache
experiment could not have changed anything. `map_shard` also opens a shard with `os.open` instead of a Python file
object: 35-41 against 55-61 µs per shard mapped.

Slow spells: in about a third of the processes started for these measurements (2026-12-07, fifth
session), reading the 8 small-sample shards took 6-8 ms longer in both modes (bytes 17-20 against
12-13 ms, views 13-16 against 8 ms), for seconds at a time or for the whole process, while `cat` in
the same rounds did not slow. The maps were 2 MiB aligned and 95% mapped through 2 MiB pages in slow
and fast processes alike; this VM has no performance counters, and the cause was not found. The bytes
row was 0.55x-0.74x `cat` in those processes: a benchmark run in such a spell would miss it.

Before and after the C walk: `iter_tar_samples` with the Python walk of commit `b2ebf39` and with
the C walk, interleaved in one process with `cat` (a one-off script, 7 repetitions, medians; three
runs, 2026-12-06), in µs per member:

| | Python walk | C walk | `cat` |
|---|---|---|---|
| camera frames, bytes | 11.5–12.1 | 6.9–7.3 | 7.6–9.7 |
| camera frames, views | 6.3–6.9 | 2.0–2.1 | |
| 4 KiB members, bytes | 5.6–5.7 | 1.07–1.11 | 0.60–0.76 |
| 4 KiB members, views | 5.0–5.1 | 0.68–0.71 | |"""


@dataclass(frozen=True)
class Profile:
    """A synthetic dataset: `samples` samples of an incompressible image-like member, JSON and a tensor."""

    name: str
    samples: int
    image_bytes: int
    per_shard: int


@dataclass(frozen=True)
class Row:
    stage: str
    ours: str
    reference: str
    unit: str
    ours_value: float
    reference_value: float
    target: float

    @property
    def ratio(self) -> float:
        return self.ours_value / self.reference_value


def make_samples(profile: Profile, seed: int = 0) -> list[Sample]:
    rng = numpy.random.default_rng(seed)
    samples = []
    for index in range(profile.samples):
        image = rng.bytes(int(profile.image_bytes * rng.uniform(0.7, 1.3)))
        tensor = rng.standard_normal((32, 64)).astype(numpy.float16).tobytes()
        truth = b'{"frame": %d, "boxes": [[1.5, 2.0, 30.0, 40.0]], "category": "chair"}' % index
        samples.append((f"seq_{index // 500:03d}_f{index:06d}", {"jpg": image, "json": truth, "npy": tensor}))
    return samples


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int,
                reset: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median seconds of each candidate, run round-robin `repeats` times (`reset` between runs, untimed)."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            reset()
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def write_ours(samples: list[Sample], folder: Path, per_shard: int) -> None:
    with ShardWriter(folder, max_samples=per_shard) as writer:
        for key, members in samples:
            writer.write(key, members)
    write_index(folder, writer.index)


def write_webdataset(samples: list[Sample], folder: Path, per_shard: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with webdataset.ShardWriter(str(folder / "shards-%04d.tar"), maxcount=per_shard, verbose=0) as writer:
        for key, members in samples:
            writer.write({"__key__": key, **members})


def bench_write(samples: list[Sample], work: Path, profile: Profile, repeats: int) -> Row:
    ours, theirs = work / "write-ours", work / "write-wds"
    payload = sum(len(data) for _, members in samples for data in members.values())

    def reset() -> None:
        """Each write starts with no dirty pages of earlier ones: writeback of a previous write (or of a
        previous run) landing in one candidate's time swung this row from 0.7x to 1.5x across runs."""
        shutil.rmtree(ours, ignore_errors=True)
        shutil.rmtree(theirs, ignore_errors=True)
        os.sync()

    medians = interleaved({
        "ours": lambda: write_ours(samples, ours, profile.per_shard),
        "webdataset": lambda: write_webdataset(samples, theirs, profile.per_shard),
    }, repeats, reset)
    reset()
    return Row("write", "ShardWriter + index", "webdataset.ShardWriter", "MB/s of payload",
               payload / medians["ours"] / 1e6, payload / medians["webdataset"] / 1e6, 1.0)


def read_tarfile(paths: list[str]) -> None:
    for path in paths:
        with tarfile.open(path) as tar:
            for member in tar:
                extracted = tar.extractfile(member)
                assert extracted is not None
                extracted.read()


def read_ours(paths: list[str], views: bool = False) -> int:
    return sum(1 for _ in ShardStream(paths, views=views).raw_samples())


def read_webdataset(paths: list[str]) -> int:
    return sum(1 for _ in webdataset.WebDataset(paths, shardshuffle=False, empty_check=False))


def read_floor(folder: Path) -> None:
    """One `os.pread` per member at offsets from the index, nothing else: a pure-Python reader's ceiling."""
    index = read_index(folder)
    descriptors = [os.open(folder / shard.name, os.O_RDONLY) for shard in index.shards]
    try:
        for entry in index.entries:
            for _, offset, size in entry.members:
                os.pread(descriptors[entry.shard], size, offset)
    finally:
        for descriptor in descriptors:
            os.close(descriptor)


def huge_page_share(paths: list[str]) -> float:
    """The share of the shards' bytes their read-only maps take through 2 MiB pages (FilePmdMapped in
    /proc/self/smaps): the page cache holds them in 2 MiB folios, as ShardWriter's writes or a cold read
    through the map leave them, or in smaller ones, as a first read with `read()` does."""
    huge = 0
    for path in paths:
        mapping = map_shard(Path(path))
        assert mapping is not None
        with mapping, memoryview(mapping) as view:
            sum(view[::4096])
            for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", Path("/proc/self/smaps").read_text()):
                found = re.search(r"FilePmdMapped:\s+(\d+) kB", block)
                if block.split("\n", 1)[0].endswith(path) and found is not None:
                    huge += int(found.group(1)) * 1024
    return huge / sum(os.path.getsize(path) for path in paths)


def bench_sequential(folder: Path, paths: list[str], repeats: int) -> tuple[list[Row], str]:
    """Rows against each reference, and the time each reader spends per member."""
    size = sum(os.path.getsize(path) for path in paths)
    read_ours(paths)  # warm the page cache
    huge = huge_page_share(paths)
    medians = interleaved({
        "cat": lambda: subprocess.run(["cat", *paths], stdout=subprocess.DEVNULL, check=True),
        "floor": lambda: read_floor(folder),
        "tarfile": lambda: read_tarfile(paths),
        "webdataset": lambda: read_webdataset(paths),
        "bytes": lambda: read_ours(paths),
        "views": lambda: read_ours(paths, views=True),
    }, repeats)
    ours = [("bytes", "ShardStream (bytes)"), ("views", "ShardStream (views)")]
    references = [("cat", "cat > /dev/null", 0.8), ("floor", "pread per member, no parsing", 0.0),
                  ("tarfile", "tarfile (plain)", 0.0), ("webdataset", "webdataset.WebDataset", 0.0)]
    rows = [Row("sequential read", label, reference, "MB/s of shard",
                size / medians[mode] / 1e6, size / medians[name] / 1e6, target)
            for mode, label in ours for name, reference, target in references
            if mode == "bytes" or name == "cat"]
    members = sum(len(entry.members) for entry in read_index(folder).entries)
    per_member = ", ".join(f"{name} {medians[name] / members * 1e6:.1f} µs" for name in ("bytes", "views", "cat"))
    return rows, (f"Sequential read, time per member ({members:,} members): {per_member}. Mapped through "
                  f"2 MiB pages: {huge:.0%} of the shards' bytes.")


def bench_random(paths: list[str], reads: int, repeats: int) -> Row:
    import wids  # benchmark-only dependency: pip install wids==0.1.11

    ours = IndexedShardDataset(paths)
    lengths = [sum(1 for _ in ShardStream([path]).raw_samples()) for path in paths]
    theirs = wids.ShardListDataset([{"url": path, "nsamples": n} for path, n in zip(paths, lengths)],
                                   localname=lambda url: url, transformations=[], lru_size=len(paths) + 1)
    order = random.Random(0).choices(range(len(ours)), k=reads)
    for index in range(0, len(ours), max(1, len(ours) // len(paths))):  # open (and let wids index) every shard
        ours.read(index)
        theirs[index]
    medians = interleaved({
        "ours": lambda: [ours.read(index) for index in order],
        "wids": lambda: [theirs[index] for index in order],
    }, repeats)
    return Row("random access", "IndexedShardDataset.read", "wids.ShardListDataset", "samples/s",
               reads / medians["ours"], reads / medians["wids"], 1.0)


def run_profile(profile: Profile, work: Path, repeats: int, reads: int) -> tuple[list[Row], str]:
    samples = make_samples(profile)
    rows = [bench_write(samples, work, profile, repeats)]
    folder = work / f"set-{profile.name}"
    write_ours(samples, folder, profile.per_shard)
    paths = sorted(str(path) for path in folder.glob("*.tar"))
    sequential, per_member = bench_sequential(folder, paths, repeats)
    rows += sequential
    rows.append(bench_random(paths, reads, repeats))
    shutil.rmtree(folder)
    return rows, per_member


def table(profile: Profile, rows: list[Row], per_member: str) -> str:
    lines = [f"**{profile.name}**: {profile.samples} samples of ~{profile.image_bytes // 1024} KiB image + "
             f"JSON + 4 KiB tensor, {profile.per_shard} samples/shard", "",
             "| stage | ours | reference | ours | reference | ratio | target |",
             "|---|---|---|---:|---:|---:|---|"]
    for row in rows:
        target = f"≥ {row.target:.1f}× {'met' if row.ratio >= row.target else '**missed**'}" if row.target else "—"
        lines.append(f"| {row.stage} | {row.ours} | {row.reference} | {row.ours_value:,.0f} {row.unit} | "
                     f"{row.reference_value:,.0f} {row.unit} | {row.ratio:.2f}× | {target} |")
    return "\n".join([*lines, "", per_member])


def machine() -> str:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average at the end {load}, "
            f"webdataset {webdataset.__version__}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reads", type=int, default=4000, help="random reads per repetition")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp folder)")
    parser.add_argument("--results", type=Path, default=None, help="markdown file whose '## Shards' to replace")
    args = parser.parse_args(argv)
    profiles = [Profile("camera frames", 2500, 150 * 1024, 250), Profile("small samples", 8000, 4 * 1024, 1000)]
    work = Path(tempfile.mkdtemp(prefix="shards-bench-", dir=args.work))
    try:
        tables = [table(profile, *run_profile(profile, work, args.repeats, args.reads)) for profile in profiles]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = " ".join(shlex.quote(part) for part in [".venv/bin/python", "benchmarks/shards.py", *sys.argv[1:]])
    body = "\n\n".join([SECTION, f"Command: `{command}` — medians of {args.repeats} interleaved repetitions. "
                        f"{machine()}.", *tables, NOTES])
    print(body)
    if args.results is not None:
        replace_section(args.results, SECTION, body)


if __name__ == "__main__":
    main()
