"""Offline conversion of verified artifacts into split WebDataset record shards.

`build_records` re-verifies the artifacts on disk against their pinned sha256 (no network),
plans every example (`Handler.plan`), assigns it to train or validation (the dataset's own split,
else a seeded ratio over the sorted keys with ATEK's semantics, `core.splits.split_sequences`),
cuts each split into batches of `samples_per_shard` and writes one shard per batch in a process
pool. Batches depend only on the input and `pool.map` returns in order, so the same artifacts give
identical shard bytes whatever the number of workers. Everything is built in a staging folder
published with `storage.atomic_folder`: a failure leaves the previous record set (or none).

Layout: `<records>/{train,validation}/shards-NNNN.tar` + `_index.json` per split, then
`features.json` (what an example holds, counts), `_lineage.json` (which artifacts and settings
produced it) and `local_{train,validation,all}_tars.yaml` (`write_record_splits`, which the splits
asset runs again to report the split).
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dataset_assets.core.catalog import HandlerSource, SplitSpec
from dataset_assets.core.errors import DatasetAssetsError
from dataset_assets.core.handlers.base import SPLITS, ArtifactError, Example, Handler, Record
from dataset_assets.core.handlers.fetch import ArtifactReport, verify_artifacts
from dataset_assets.core.index import ShardIndex, ShardInfo, write_index
from dataset_assets.core.shards import ShardWriter
from dataset_assets.core.splits import Split, split_sequences, write_split_yamls
from dataset_assets.core.storage import atomic_folder, write_bytes_atomic

FEATURES_FILE = "features.json"
LINEAGE_FILE = "_lineage.json"


@dataclass(frozen=True)
class ShardTask:
    """One output shard: the records it holds, in order, and where it goes."""

    handler: Handler
    paths: Mapping[str, Path]
    records: tuple[Record, ...]
    folder: Path
    number: int


def write_shard(task: ShardTask) -> ShardIndex:
    """Decode the task's images and write them as shard `number` (runs in a worker process)."""
    images = task.handler.images(task.paths, task.records)
    with ShardWriter(task.folder, max_samples=len(task.records), start=task.number) as writer:
        for record, image in zip(task.records, images, strict=True):
            writer.write(record.key, Example(record, image).sample())
    return writer.index


def assign_splits(records: Sequence[Record], ratio: float, seed: int) -> dict[str, list[Record]]:
    """Records per split, in plan order: their own split, else a seeded ratio over sorted keys."""
    seeded = split_sequences([record.key for record in records if record.split is None], ratio, seed)
    train = set(seeded.train)
    by_split: dict[str, list[Record]] = {split: [] for split in SPLITS}
    for record in records:
        by_split[record.split or ("train" if record.key in train else "validation")].append(record)
    return by_split


def check_unique_keys(records: Sequence[Record]) -> None:
    seen: dict[str, Record] = {}
    for record in records:
        if record.key in seen:
            first = seen[record.key]
            raise DatasetAssetsError(f"example key {record.key!r} comes from both {first.artifact}:{first.member} "
                                     f"and {record.artifact}:{record.member}")
        seen[record.key] = record


def _tasks(handler: Handler, paths: Mapping[str, Path], records: Sequence[Record], folder: Path,
           samples_per_shard: int) -> list[ShardTask]:
    return [ShardTask(handler, paths, tuple(records[start:start + samples_per_shard]), folder, number)
            for number, start in enumerate(range(0, len(records), samples_per_shard))]


def _run(tasks: Sequence[ShardTask], workers: int) -> list[ShardIndex]:
    # A daemonic process (some worker pools run steps in one) may not start children: stay serial there.
    if workers <= 1 or len(tasks) <= 1 or multiprocessing.current_process().daemon:
        return [write_shard(task) for task in tasks]
    # Not fork: a forked child could inherit locks held by the parent's threads (Dagster's, HTTP servers').
    # The forkserver starts once per process with this module imported, then forks cheaply per pool.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context) as pool:
        return list(pool.map(write_shard, tasks))


def _merge(indexes: Sequence[ShardIndex]) -> ShardIndex:
    merged = ShardIndex()
    for index in indexes:
        merged = merged.extend(index)
    return merged


@dataclass(frozen=True)
class RecordSet:
    """A published record set: its folder, shards per split and `features.json` content."""

    folder: Path
    shards: Mapping[str, tuple[ShardInfo, ...]]
    features: Mapping[str, object]

    @property
    def data_version(self) -> str:
        listing = "".join(f"{split}/{shard.name}:{shard.sha256};" for split in SPLITS for shard in self.shards[split])
        return hashlib.sha256(listing.encode()).hexdigest()[:16]

    def metadata(self) -> dict[str, object]:
        counts = {split: sum(shard.samples for shard in self.shards[split]) for split in SPLITS}
        return {
            "folder": str(self.folder),
            "examples": sum(counts.values()),
            **{f"{split}_examples": count for split, count in counts.items()},
            "shards": sum(len(shards) for shards in self.shards.values()),
            "bytes": sum(shard.bytes for shards in self.shards.values() for shard in shards),
            "sha256": {f"{split}/{shard.name}": shard.sha256 for split in SPLITS for shard in self.shards[split]},
            "features": dict(self.features),
        }


def _json(value: object) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def records_code_version(handler: Handler, source: HandlerSource, split: SplitSpec) -> str:
    """Changes when the handler's conversion or the record settings change (not the artifacts)."""
    settings = {"samples_per_shard": source.samples_per_shard, "ratio": split.ratio, "seed": split.seed}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return f"{handler.name}-v{handler.version}-{digest}"


def _write_splits(handler: Handler, paths: Mapping[str, Path], by_split: Mapping[str, Sequence[Record]],
                  staging: Path, samples_per_shard: int, workers: int) -> dict[str, tuple[ShardInfo, ...]]:
    """Write every split's shards (all splits' batches share one pool) and each split's `_index.json`."""
    tasks = [task for name in SPLITS
             for task in _tasks(handler, paths, by_split[name], staging / name, samples_per_shard)]
    written = list(zip(tasks, _run(tasks, workers)))
    shards: dict[str, tuple[ShardInfo, ...]] = {}
    for name in SPLITS:
        index = _merge([index for task, index in written if task.folder.name == name])
        write_index(staging / name, index)
        shards[name] = index.shards
    return shards


def _features(dataset: str, handler: Handler, by_split: Mapping[str, Sequence[Record]],
              shards: Mapping[str, tuple[ShardInfo, ...]]) -> dict[str, object]:
    splits = {name: {"examples": len(by_split[name]), "shards": [shard.name for shard in shards[name]]}
              for name in SPLITS}
    return {"dataset": dataset, "handler": handler.name, "handler_version": handler.version,
            **handler.features.to_dict(), "splits": splits}


def _lineage(handler: Handler, artifacts: ArtifactReport, source: HandlerSource, split: SplitSpec,
             records: Sequence[Record]) -> dict[str, object]:
    rule = "dataset" if all(record.split for record in records) else "seeded ratio"
    return {"handler": handler.name, "handler_version": handler.version,
            "artifacts": {file.name: file.sha256 for file in artifacts.files},
            "samples_per_shard": source.samples_per_shard,
            "split": {"rule": rule, "ratio": split.ratio, "seed": split.seed}}


def default_workers() -> int:
    """The CPU cores this process may run on (not the machine's, which a container may not grant);
    the machine's where the OS cannot tell (macOS has no `sched_getaffinity`)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def build_records(dataset: str, handler: Handler, source: HandlerSource, split: SplitSpec,
                  artifacts_folder: Path, records_folder: Path, workers: int | None = None) -> RecordSet:
    """Convert the verified artifacts in `artifacts_folder` into the record set at `records_folder`."""
    artifacts = verify_artifacts(dataset, handler, source, artifacts_folder)
    records = handler.plan(artifacts.paths())
    if not records:  # a header-only CSV, an empty image list: not a dataset, whatever the checks would say
        raise ArtifactError(", ".join(sorted(artifacts.paths())), None, "hold no examples: nothing to convert")
    check_unique_keys(records)
    by_split = assign_splits(records, split.ratio, split.seed)
    with atomic_folder(records_folder) as staging:
        shards = _write_splits(handler, artifacts.paths(), by_split, staging, source.samples_per_shard,
                               workers or default_workers())
        features = _features(dataset, handler, by_split, shards)
        write_bytes_atomic(staging / FEATURES_FILE, _json(features))
        write_bytes_atomic(staging / LINEAGE_FILE, _json(_lineage(handler, artifacts, source, split, records)))
        # The swap replaces the whole folder: publish the split lists with the shards they list, never without.
        write_record_splits(staging)
    return RecordSet(records_folder, shards, features)


@dataclass(frozen=True)
class RecordSplits:
    split: Split
    yamls: Mapping[str, Path]
    examples: Mapping[str, int]

    def metadata(self) -> dict[str, object]:
        return {**{f"{name}_examples": count for name, count in self.examples.items()},
                **{f"local_{name}_yaml": str(path) for name, path in sorted(self.yamls.items())}}


def write_record_splits(records_folder: Path) -> RecordSplits:
    """Write `local_{train,validation,all}_tars.yaml` beside a record set (relative shard paths)."""
    features_path = records_folder / FEATURES_FILE
    if not features_path.exists():
        raise DatasetAssetsError(f"{features_path} does not exist: materialize the records first")
    splits = json.loads(features_path.read_text(encoding="utf-8"))["splits"]
    tars = {name: [f"{name}/{shard}" for shard in splits[name]["shards"]] for name in SPLITS}
    split = Split(train=("train",) if tars["train"] else (), validation=("validation",) if tars["validation"] else ())
    yamls = write_split_yamls(records_folder, split, tars, "local")
    return RecordSplits(split, yamls, {name: splits[name]["examples"] for name in SPLITS})
