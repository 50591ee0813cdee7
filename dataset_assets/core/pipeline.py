"""The steps of a signed-URL dataset, as plain functions the Dagster assets (and the CLI) call.

snapshot_manifest -> download_sequence (per sequence) -> preprocess_sequence (per sequence and
config) -> write_splits (per config). Each takes plain arguments and returns a frozen result
whose `metadata()` is what the asset reports.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from dataset_assets.core.catalog import DatasetSpec, SplitSpec
from dataset_assets.core.errors import DatasetAssetsError, ManifestError
from dataset_assets.core.manifest import ROOT_KEY, UrlManifest, expiry_from_url, load_manifest_file
from dataset_assets.core.preprocess import PreprocessConfig, PreprocessResult, preprocess_shards
from dataset_assets.core.shards import count_samples
from dataset_assets.core.splits import Split, load_split_json, split_sequences, write_split_yamls
from dataset_assets.core.storage import Destination, FileDigest, atomic_file
from dataset_assets.core.tar_lists import load_tars_by_sequence
from dataset_assets.core.transfer import (
    DownloadReport,
    ProgressCallback,
    TransferSettings,
    download_entries,
    fetch_manifest,
    make_client,
)


@dataclass(frozen=True)
class ManifestSnapshot:
    """A fetched, validated manifest saved at `path` (it holds live signed URLs: mode 0600);
    `content_version` covers only the raw configs the dataset reads."""

    path: Path
    manifest: UrlManifest
    content_version: str
    sequences: tuple[str, ...]

    def metadata(self) -> dict[str, object]:
        expiry = self.manifest.earliest_expiry()
        return {
            "source": self.manifest.source,
            "configs": sorted(self.manifest.configs),
            "sequences": len(self.sequences),
            "files": len(self.manifest.all_entries()),
            "bytes": sum(entry.size or 0 for entry in self.manifest.all_entries()),
            "earliest_link_expiry": expiry.isoformat() if expiry else "none",
            "content_version": self.content_version,
        }


def content_version(manifest: UrlManifest, configs: Sequence[str]) -> str:
    """A hash of what the manifest publishes in `configs` (names, sizes, sha1s), ignoring the links.

    Refreshing links, or a change to a config the dataset does not read, therefore leaves the data
    version unchanged and downstream assets fresh.
    """
    listing = [(e.config, e.sequence, e.filename, e.sha1, e.size)
               for config in sorted(configs) for sequence in sorted(manifest.configs.get(config, {}))
               for e in manifest.entries(config, sequence)]
    return hashlib.sha256(json.dumps(listing, separators=(",", ":")).encode()).hexdigest()[:16]


def usable_sequences(manifest: UrlManifest, raw_configs: Sequence[str]) -> tuple[str, ...]:
    """Sequences published in every raw config the dataset needs."""
    manifest.require_configs(list(raw_configs))
    sets = [set(manifest.sequences(config)) for config in raw_configs]
    return tuple(sorted(set.intersection(*sets))) if sets else ()


def snapshot_manifest(spec: DatasetSpec, dest: Path, settings: TransferSettings) -> ManifestSnapshot:
    """Fetch the dataset's manifest, check it publishes every needed config, save it atomically."""
    client = make_client(settings)
    try:
        manifest, raw = fetch_manifest(spec.manifest.location, client)
    finally:
        client.close()
    sequences = usable_sequences(manifest, spec.raw_configs)
    with atomic_file(dest) as part:
        os.chmod(part, 0o600)  # before the signed URLs are in it, not after
        part.write_bytes(raw)
    return ManifestSnapshot(dest, manifest, content_version(manifest, spec.raw_configs), sequences)


def read_snapshot(path: Path) -> UrlManifest:
    """The manifest `snapshot_manifest` saved at `path`."""
    if not path.is_file():
        raise DatasetAssetsError(f"{path} does not exist: materialize the dataset's url_manifest first")
    return load_manifest_file(path)


def download_sequence(manifest: UrlManifest, raw_folders: Mapping[str, Path | Destination], sequence: str,
                      settings: TransferSettings, progress: ProgressCallback | None = None) -> DownloadReport:
    """Download one sequence's files of every raw config into `raw_folders[config]/<sequence>/` (a folder or S3).

    A sequence the manifest does not publish in some config fails instead of "downloading" no files.
    """
    for config in sorted(raw_folders):
        if sequence not in manifest.configs.get(config, {}):
            raise ManifestError(manifest.source, f"{ROOT_KEY}.{config}.wds_file_urls.{sequence}", sequence,
                                "is not published: re-materialize url_manifest, or delete the partition if the "
                                "sequence was withdrawn")
    entries = [entry for config in sorted(raw_folders) for entry in manifest.entries(config, sequence)]
    return download_entries(entries, raw_folders, settings, progress)


def preprocess_sequence(downloaded: Mapping[str, FileDigest], config: PreprocessConfig, sequence: str,
                        raw_folder: Path, out_folder: Path, source_version: str | None = None) -> PreprocessResult:
    """Preprocess one sequence's raw shards into `out_folder` with lineage.

    `downloaded` maps each `<sequence>/<file>` of `raw_folder` to the digest its download verified:
    those files, and no others, are read (in name order) and must still have those digests. Not
    the manifest's: it may list other files or bytes by now, which were never downloaded.
    """
    names = sorted(downloaded)
    source = {
        "sequence": sequence,
        "raw_config": config.source_config,
        "raw_data_version": source_version,
        "raw_files": {name: downloaded[name].sha1 for name in names},
    }
    expected = {raw_folder / name: downloaded[name] for name in names}
    return preprocess_shards(list(expected), config, out_folder, source, expected)


@dataclass(frozen=True)
class SplitResult:
    split: Split
    yamls: Mapping[str, Path]
    samples: Mapping[str, int]
    missing: tuple[str, ...]

    def metadata(self) -> dict[str, object]:
        return {
            "train_sequences": len(self.split.train),
            "validation_sequences": len(self.split.validation),
            "all_sequences": len(self.split.all),
            "train_samples": self.samples["train"],
            "validation_samples": self.samples["validation"],
            "all_samples": self.samples["train"] + self.samples["validation"],
            "sequences_without_shards": list(self.missing),
            "ignored_split_names": list(self.split.ignored),
            **{name: str(path) for name, path in sorted(self.yamls.items())},
        }


def _split_for(sequences: Sequence[str], spec: SplitSpec) -> Split:
    if spec.json_path is not None:
        return load_split_json(spec.json_path, sequences)
    return split_sequences(sequences, spec.ratio, spec.seed, spec.max_sequences)


def write_splits(manifest: UrlManifest, spec: DatasetSpec, config: PreprocessConfig,
                 shard_set_folder: Path) -> SplitResult:
    """Split the sequences that have published shards; write local and streamable YAMLs.

    `local_*` list this config's preprocessed shards relative to the YAML (ATEK layout);
    `streamable_*` list the signed URLs of the source raw config for the same split.
    """
    candidates = usable_sequences(manifest, [config.source_config])
    with_shards = [seq for seq in candidates if (shard_set_folder / seq / "_lineage.json").exists()]
    missing = tuple(seq for seq in candidates if seq not in with_shards)
    split = _split_for(with_shards, spec.split)
    local = {seq: [f"{seq}/{path.name}" for path in sorted((shard_set_folder / seq).glob("*.tar"))]
             for seq in split.all}
    streamable = {seq: [entry.url for entry in manifest.entries(config.source_config, seq)] for seq in split.all}
    yamls = {f"local_{name}": path for name, path in
             write_split_yamls(shard_set_folder, split, local, "local").items()}
    yamls |= {f"streamable_{name}": path for name, path in
              write_split_yamls(shard_set_folder, split, streamable, "streamable").items()}
    samples = {
        name: sum(count_samples(shard_set_folder / rel) for seq in seqs for rel in local[seq])
        for name, seqs in (("train", split.train), ("validation", split.validation))
    }
    return SplitResult(split, yamls, samples, missing)


def split_links_expiry(shard_set_folders: Iterable[Path]) -> datetime | None:
    """The earliest expiry of the links in the `streamable_all_tars.yaml` of `shard_set_folders`, or None.

    They are the links of the manifest saved when the splits were last written, which may expire
    before those saved since (url_manifest materialized alone). A missing or unreadable YAML is skipped.
    """
    expiries = []
    for folder in shard_set_folders:
        path = folder / "streamable_all_tars.yaml"
        try:
            tars = load_tars_by_sequence(path) if path.is_file() else {}
        except DatasetAssetsError:
            continue
        expiries += [expiry for urls in tars.values() for expiry in map(expiry_from_url, urls) if expiry is not None]
    return min(expiries, default=None)
