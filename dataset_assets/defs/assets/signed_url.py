"""Asset factory for datasets published as signed, expiring links (the ATEK data store shape).

`<ds>/url_manifest` -> `<ds>/raw_shards` (per sequence) -> `<ds>/shards__<config>` (per sequence)
-> `<ds>/splits__<config>`. Every asset body resolves resources, calls one core function from
`core.pipeline` and reports its metadata.
"""

from dataclasses import dataclass
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetRecordsFilter,
    AssetsDefinition,
    BackfillPolicy,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from dataset_assets.core.catalog import DatasetSpec
from dataset_assets.core.errors import InputChangedError, ManifestError
from dataset_assets.core.manifest import UrlManifest
from dataset_assets.core.pipeline import (
    download_sequence,
    preprocess_sequence,
    read_snapshot,
    snapshot_manifest,
    write_splits,
)
from dataset_assets.core.preprocess import PreprocessConfig
from dataset_assets.core.storage import Destination, FileDigest
from dataset_assets.core.transfer import DownloadReport, LinkExpired, PermanentTransferError
from dataset_assets.defs.partitions import sequence_partitions
from dataset_assets.defs.progress import LoggedProgress
from dataset_assets.defs.resources import DatasetHome, TransferResource


def _metadata(values: dict[str, object]) -> dict[str, object]:
    """Dagster metadata: nested values as JSON, paths as paths, the rest as they are."""
    converted: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, (dict, list)):
            converted[key] = MetadataValue.json(value)
        elif key.endswith("yaml") or key in ("path", "folder", "index_path"):
            converted[key] = MetadataValue.path(str(value))
        elif key == "preview":
            converted[key] = MetadataValue.md(str(value))
        else:
            converted[key] = value
    return converted


FILES_VERSION = "files_version"
FILE_SIZES = "sizes"


def metadata_mapping(materialization: AssetMaterialization | None, name: str) -> dict:
    value = materialization.metadata.get(name) if materialization is not None else None
    return value.value if value is not None and isinstance(value.value, dict) else {}


def recorded_files_version(download: AssetMaterialization) -> str | None:
    """The `files_version` a `raw_shards` materialization recorded, if it did."""
    value = download.metadata.get(FILES_VERSION)
    return None if value is None else str(value.value)


@dataclass(frozen=True)
class VerifiedDownload:
    """What one sequence's newest `raw_shards` materialization verified: the version of its files, and
    each file's digest keyed `<config>/<sequence>/<file>`.

    `files_version`, not Dagster's data version tag: a run over a range of partitions stamps one data
    version, that of the whole range, on every partition it materializes (dagster-io/dagster#18649),
    while a shard set's lineage must name the files of its own sequence.
    """

    files_version: str | None
    files: dict[str, FileDigest]

    def of_config(self, config: str) -> dict[str, FileDigest]:
        """The digests of raw config `config`'s files, keyed `<sequence>/<file>`."""
        prefix = f"{config}/"
        return {key[len(prefix):]: digest for key, digest in self.files.items() if key.startswith(prefix)}


def _recorded_digests(materialization: AssetMaterialization) -> dict[str, FileDigest] | None:
    """Every file's size, sha1 and sha256 as `download_partition` recorded them; None if any is missing
    (a materialization of an older version, which recorded no sizes)."""
    sha1s, sha256s, sizes = (metadata_mapping(materialization, name) for name in ("sha1", "sha256", FILE_SIZES))
    if not sha1s.keys() == sha256s.keys() == sizes.keys():
        return None
    return {key: FileDigest(sizes[key], sha1s[key], sha256s[key]) for key in sha1s}


def verified_download(context: AssetExecutionContext, key: AssetKey, partition: str) -> VerifiedDownload:
    """The newest materialization of `key`'s `partition`; `Failure` when there is none that says which
    bytes it verified, since no other record of them can be trusted to match the files on disk."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1).records
    materialization = records[0].asset_materialization if records else None
    files = _recorded_digests(materialization) if materialization is not None else None
    if materialization is None or files is None:
        raise Failure(f"{key.to_user_string()} partition {partition} has no materialization recording the "
                      "digests of its files: materialize it (verified files are not downloaded again)",
                      allow_retries=False)
    return VerifiedDownload(recorded_files_version(materialization), files)


def download_partition(context: AssetExecutionContext, manifest: UrlManifest, folders: dict[str, Path | Destination],
                       sequence: str, transfer: TransferResource) -> DownloadReport:
    """Download one sequence of the run and attach its metadata to that partition's materialization.

    An expired link becomes `Failure(allow_retries=False)`: retrying the same links cannot succeed,
    so the run fails at once and the link-refresh sensor re-requests it with fresh links. So do
    failures no later try can cure (`PermanentTransferError`, a sequence the manifest lacks).
    """
    total = sum(entry.size or 0 for config in folders for entry in manifest.entries(config, sequence))
    progress = LoggedProgress(context.log, sequence, total)
    try:
        report = download_sequence(manifest, folders, sequence, transfer.settings(), progress)
    except LinkExpired as error:
        raise Failure(str(error), metadata={"expired_files": list(error.files)}, allow_retries=False) from error
    except (PermanentTransferError, ManifestError) as error:  # a step retry would fail the same way
        raise Failure(str(error), allow_retries=False) from error
    sizes = {result.key: result.size for result in report.results}
    context.add_asset_metadata(_metadata({**report.metadata(), FILE_SIZES: sizes, FILES_VERSION: report.data_version}),
                               partition_key=sequence)
    return report


DOWNLOAD_POOL = "downloads"


def build_signed_url_assets(spec: DatasetSpec) -> list[AssetsDefinition]:
    dataset = spec.name
    sequences = sequence_partitions(dataset)
    manifest_key = AssetKey([dataset, "url_manifest"])
    raw_key = AssetKey([dataset, "raw_shards"])
    common = {"group_name": dataset, "owners": list(spec.owners) or None}

    @asset(key=manifest_key, kinds={"json"}, **common,
           description=f"The published URL manifest of {dataset} ({spec.manifest.describe()}); "
                       "registers one partition per sequence and records when links expire.")
    def url_manifest(context: AssetExecutionContext, home: DatasetHome, transfer: TransferResource
                     ) -> MaterializeResult:
        snapshot = snapshot_manifest(spec, home.manifest_path(dataset), transfer.settings())
        known = set(context.instance.get_dynamic_partitions(sequences.name))
        new = [sequence for sequence in snapshot.sequences if sequence not in known]
        if new:
            context.instance.add_dynamic_partitions(sequences.name, new)
        context.log.info(f"{len(snapshot.sequences)} sequences published, {len(new)} new")
        return MaterializeResult(metadata=_metadata({**snapshot.metadata(), "new_sequences": new}),
                                 data_version=DataVersion(snapshot.content_version))

    @asset(key=raw_key, deps=[manifest_key], partitions_def=sequences, kinds={"webdataset"}, **common,
           pool=DOWNLOAD_POOL, backfill_policy=BackfillPolicy.single_run(),
           description=f"Raw WebDataset shards of one {dataset} sequence for configs "
                       f"{', '.join(spec.raw_configs)}: resumable download, size and sha1 verified. "
                       f"Steps share pool '{DOWNLOAD_POOL}'; a partition range downloads in one run; "
                       "expired links fail the run at once (no step retry) for the link-refresh sensor.")
    def raw_shards(context: AssetExecutionContext, home: DatasetHome, transfer: TransferResource
                   ) -> MaterializeResult:
        manifest = read_snapshot(home.manifest_path(dataset))
        local = {config: home.raw_folder(dataset, config) for config in spec.raw_configs}
        folders = transfer.destinations(dataset, local)
        reports = [download_partition(context, manifest, folders, sequence, transfer)
                   for sequence in context.partition_keys]
        combined = DownloadReport(tuple(sorted((r for report in reports for r in report.results), key=lambda r: r.key)))
        return MaterializeResult(data_version=DataVersion(combined.data_version))

    def build_shards(config: PreprocessConfig) -> AssetsDefinition:
        @asset(key=AssetKey([dataset, f"shards__{config.name}"]), deps=[raw_key], partitions_def=sequences,
               code_version=config.hash, kinds={"webdataset", "pytorch"}, **common,
               description=f"{dataset} shards of one sequence preprocessed with config '{config.name}' "
                           f"(source config {config.source_config}); code version = config hash.")
        def shards(context: AssetExecutionContext, home: DatasetHome) -> MaterializeResult:
            sequence = context.partition_key
            download = verified_download(context, raw_key, sequence)
            try:
                result = preprocess_sequence(
                    download.of_config(config.source_config), config, sequence,
                    home.raw_folder(dataset, config.source_config),
                    home.shard_set_folder(dataset, config.name) / sequence, download.files_version,
                )
            except InputChangedError as error:  # a step retry would read the same bytes
                raise Failure(f"{error}: re-materialize {raw_key.to_user_string()} partition {sequence}",
                              allow_retries=False) from error
            metadata = {**result.metadata(), "config": config.to_dict(), "folder": result.folder}
            return MaterializeResult(metadata=_metadata(metadata), data_version=DataVersion(result.data_version))

        return shards

    def build_splits(config: PreprocessConfig, shards_key: AssetKey) -> AssetsDefinition:
        # url_manifest is a dep because the splits read the saved manifest: it orders the steps of a run
        # that selects both but not the shards (`<ds>_refresh_links`), so the splits see the fresh links.
        @asset(key=AssetKey([dataset, f"splits__{config.name}"]), deps=[shards_key, manifest_key],
               code_version=spec.split.hash,
               kinds={"yaml"}, **common,
               description=f"Train/validation/all split manifests of {dataset} config '{config.name}': "
                           "local_*_tars.yaml (preprocessed shards) and streamable_*_tars.yaml (signed URLs); "
                           "code version = split settings hash.")
        def splits(context: AssetExecutionContext, home: DatasetHome) -> MaterializeResult:
            manifest = read_snapshot(home.manifest_path(dataset))
            result = write_splits(manifest, spec, config, home.shard_set_folder(dataset, config.name))
            if result.missing:
                context.log.warning(f"sequences without shards (not in the split): {', '.join(result.missing)}")
            return MaterializeResult(metadata=_metadata(result.metadata()))

        return splits

    assets: list[AssetsDefinition] = [url_manifest, raw_shards]
    for config in spec.preprocess.values():
        shards_asset = build_shards(config)
        assets += [shards_asset, build_splits(config, shards_asset.key)]
    return assets
