"""Asset factory for date-versioned datasets (catalog kind `versioned`), partitioned by version.

`<ds>/annotations`, `<ds>/assets`, `<ds>/features` and `<ds>/base_data` (those the catalog
declares) download one version into `<versioned_root>/<ds>/<version>/` and extract tarballs
safely, within the catalog's `extract` limits; `<ds>/published` uploads that version to the
catalog's bucket. Versions are static partitions from the catalog, or dynamic ones
(`<ds>_versions`) that `<ds>_versions_sensor` adds for each version it finds published in the
bucket, requesting its download.
"""
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    DataVersion,
    DynamicPartitionsDefinition,
    Failure,
    MaterializeResult,
    PartitionsDefinition,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    StaticPartitionsDefinition,
    asset,
    sensor,
)

from dataset_assets.core.catalog import DatasetSpec
from dataset_assets.core.publish import list_published_versions, publish_version, version_destination
from dataset_assets.core.redaction import redact_url
from dataset_assets.core.s3 import S3Url
from dataset_assets.core.versioned import (
    AssetsMismatchError,
    Component,
    PublishSpec,
    VersionedSource,
    download_components,
)
from dataset_assets.defs.assets.signed_url import _metadata
from dataset_assets.defs.resources import DatasetHome, TransferResource


def _source(spec: DatasetSpec) -> VersionedSource:
    assert spec.versioned is not None, f"dataset {spec.name} of kind {spec.kind} has no versioned source"
    return spec.versioned


def version_partitions(spec: DatasetSpec) -> PartitionsDefinition:
    """The catalog's versions, or the dynamic partitions `<ds>_versions` filled by the versions sensor."""
    source = _source(spec)
    if source.dynamic:
        return DynamicPartitionsDefinition(name=f"{spec.name}_versions")
    return StaticPartitionsDefinition(list(source.versions))


def _component_asset(spec: DatasetSpec, component: Component, partitions: PartitionsDefinition) -> AssetsDefinition:
    dataset, source, kind = spec.name, _source(spec), component.kind
    limits = source.extract
    extracted = (f" and extracted safely into {kind.folder}/ (at most {limits.max_bytes} bytes and "
                 f"{limits.max_members} members: the catalog's extract limits)") if kind.folder else ""

    @asset(key=AssetKey([dataset, kind.name]), partitions_def=partitions, group_name=dataset,
           owners=list(spec.owners) or None, kinds={"tar" if kind.folder else "json"},
           description=f"{kind.filename} of one {dataset} version from "
                       f"{redact_url(component.url(source.base_url, '{version}'))}, "
                       f"verified{extracted}; each version in its own folder.")
    def fetched(context: AssetExecutionContext, home: DatasetHome, transfer: TransferResource) -> MaterializeResult:
        version = context.partition_key
        [result] = download_components(dataset, source, version, home.versioned_root, [kind.name],
                                       transfer.settings())
        return MaterializeResult(metadata=_metadata(result.metadata()), data_version=DataVersion(result.sha256))

    return fetched


def _published_root(publish: PublishSpec, dataset: str) -> str:
    """`s3://<bucket>/<prefix>/<dataset>`, without an empty segment when the catalog gives no prefix."""
    return f"s3://{publish.bucket}/{S3Url(publish.bucket, publish.prefix).key(dataset)}"


def _published_asset(spec: DatasetSpec, partitions: PartitionsDefinition) -> AssetsDefinition:
    dataset, source = spec.name, _source(spec)
    publish = source.publish
    assert publish is not None
    files = source.published_files()
    deps = [AssetKey([dataset, component.kind.name]) for component in source.components.values()
            if component.kind.published]

    @asset(key=AssetKey([dataset, "published"]), deps=deps, partitions_def=partitions, group_name=dataset,
           owners=list(spec.owners) or None, kinds={"s3"},
           description=f"One {dataset} version ({', '.join(files)}) published to "
                       f"{_published_root(publish, dataset)}/<version>/ by parallel multipart upload "
                       f"({publish.part_size_mib} MiB parts, {publish.concurrency} at once), verified by HEAD; "
                       "objects already there and identical are skipped.")
    def published(context: AssetExecutionContext, home: DatasetHome) -> MaterializeResult:
        version = context.partition_key
        try:
            report = publish_version(home.version_folder(dataset, version), files,
                                     version_destination(publish, dataset, version), source.published_pins(version))
        except AssetsMismatchError as error:  # a retry would publish the same folder
            raise Failure(str(error), allow_retries=False) from error
        context.log.info(report.summary())
        return MaterializeResult(metadata=_metadata(report.metadata()))

    return published


def build_versioned_assets(spec: DatasetSpec) -> list[AssetsDefinition]:
    source, partitions = _source(spec), version_partitions(spec)
    assets = [_component_asset(spec, component, partitions) for component in source.components.values()]
    if source.publish is not None:
        assets.append(_published_asset(spec, partitions))
    return assets


def build_versions_sensor(spec: DatasetSpec) -> SensorDefinition:
    """For a dynamic dataset: add each newly published version as a partition and request its download."""
    dataset, source = spec.name, _source(spec)
    publish, partitions = source.publish, version_partitions(spec)
    assert isinstance(partitions, DynamicPartitionsDefinition) and publish is not None and partitions.name
    downloads = [AssetKey([dataset, name]) for name in source.components]

    @sensor(name=f"{dataset}_versions_sensor", asset_selection=downloads, minimum_interval_seconds=300,
            description=f"Lists the {dataset} versions published in {_published_root(publish, dataset)}/, "
                        f"adds new ones to partitions {partitions.name} and requests their download.")
    def versions_sensor(context: SensorEvaluationContext) -> SensorResult:
        published = list_published_versions(publish, dataset)
        known = set(context.instance.get_dynamic_partitions(partitions.name))
        new = [version for version in published if version not in known]
        if not new:
            return SensorResult(skip_reason=f"{len(published)} versions published, none new")
        return SensorResult(run_requests=[RunRequest(run_key=version, partition_key=version) for version in new],
                            dynamic_partitions_requests=[partitions.build_add_request(new)])

    return versions_sensor
