"""Asset jobs the sensors and schedules launch, three per dataset.

`<ds>_sequence` refreshes the links, downloads and preprocesses one sequence and rewrites the split
manifests, so a run launched for a new or failed sequence never starts from stale links and
leaves the splits covering it. `<ds>_refresh_links` re-fetches the manifest and rewrites the
splits (their streamable URLs die with the old links). `<ds>_verify` runs only the asset checks of
`url_manifest` and `raw_shards`, over every downloaded sequence. The steps of the two download jobs
run unattended, so they carry `TRANSIENT_RETRY`; an expired link still fails at once (see
`raw_shards`), because a retry with the same links cannot succeed.
"""
from dataclasses import dataclass

from dagster import AssetKey, AssetSelection, Backoff, Jitter, RetryPolicy, define_asset_job
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from dataset_assets.core.catalog import DatasetSpec

TRANSIENT_RETRY = RetryPolicy(max_retries=3, delay=10, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)


def manifest_key(dataset: str) -> AssetKey:
    return AssetKey([dataset, "url_manifest"])


def raw_key(dataset: str) -> AssetKey:
    return AssetKey([dataset, "raw_shards"])


def shards_keys(spec: DatasetSpec) -> list[AssetKey]:
    return [AssetKey([spec.name, f"shards__{config}"]) for config in sorted(spec.preprocess)]


def split_keys(spec: DatasetSpec) -> list[AssetKey]:
    return [AssetKey([spec.name, f"splits__{config}"]) for config in sorted(spec.preprocess)]


@dataclass(frozen=True)
class DatasetJobs:
    sequence: UnresolvedAssetJobDefinition
    refresh_links: UnresolvedAssetJobDefinition
    verify: UnresolvedAssetJobDefinition

    def all(self) -> list[UnresolvedAssetJobDefinition]:
        return [self.sequence, self.refresh_links, self.verify]


def build_dataset_jobs(spec: DatasetSpec) -> DatasetJobs:
    dataset = spec.name
    manifest = AssetSelection.assets(manifest_key(dataset))
    sequence = define_asset_job(
        f"{dataset}_sequence", selection=manifest.downstream(), op_retry_policy=TRANSIENT_RETRY,
        description=f"Fresh links, then one {dataset} sequence downloaded and preprocessed, then the splits.")
    refresh_links = define_asset_job(
        f"{dataset}_refresh_links", selection=manifest | AssetSelection.assets(*split_keys(spec)),
        op_retry_policy=TRANSIENT_RETRY,
        description=f"Re-fetch the {dataset} URL manifest (fresh signed links) and rewrite the split manifests.")
    verify = define_asset_job(
        f"{dataset}_verify", selection=AssetSelection.checks_for_assets(manifest_key(dataset), raw_key(dataset)),
        description=f"Re-check the {dataset} manifest and every downloaded sequence's raw files (count, sizes, sha1).")
    return DatasetJobs(sequence, refresh_links, verify)
