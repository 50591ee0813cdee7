"""Asset factory for raw-artifact datasets (catalog kind `handler`).

`<ds>/artifacts` (fetched once, sha256 verified, kept under the home folder) -> `<ds>/records`
(offline conversion into WebDataset shards and `features.json`; never touches the network) ->
`<ds>/splits` (local_{train,validation,all}_tars.yaml). Each asset body resolves resources,
calls one core function from `core.handlers` and reports its metadata.
"""
from pathlib import Path

from dagster import AssetExecutionContext, AssetKey, AssetsDefinition, DataVersion, MaterializeResult, asset

from dataset_assets.core.catalog import DatasetSpec
from dataset_assets.core.handlers.fetch import fetch_artifacts
from dataset_assets.core.handlers.records import build_records, records_code_version, write_record_splits
from dataset_assets.core.handlers.registry import get_handler
from dataset_assets.defs.assets.signed_url import _metadata
from dataset_assets.defs.resources import DatasetHome, TransferResource


def artifacts_folder(home: DatasetHome, dataset: str) -> Path:
    return home.dataset_folder(dataset) / "artifacts"


def records_folder(home: DatasetHome, dataset: str) -> Path:
    return home.dataset_folder(dataset) / "records"


def build_handler_assets(spec: DatasetSpec) -> list[AssetsDefinition]:
    dataset = spec.name
    source = spec.handler
    assert source is not None, f"dataset {dataset} of kind {spec.kind} has no handler source"
    handler = get_handler(source.name)
    artifacts_key, records_key = AssetKey([dataset, "artifacts"]), AssetKey([dataset, "records"])
    common = {"group_name": dataset, "owners": list(spec.owners) or None}

    @asset(key=artifacts_key, kinds={"file"}, **common,
           description=f"The raw artifacts of {dataset} (handler {handler.name}: {handler.description} "
                       f"{handler.homepage}), fetched once and verified by sha256; manual artifacts are placed "
                       "by hand.")
    def artifacts(context: AssetExecutionContext, home: DatasetHome, transfer: TransferResource
                  ) -> MaterializeResult:
        report = fetch_artifacts(dataset, handler, source, artifacts_folder(home, dataset), transfer.settings())
        context.log.info(f"{len(report.files)} artifacts verified in {artifacts_folder(home, dataset)}")
        return MaterializeResult(metadata=_metadata(report.metadata()), data_version=DataVersion(report.data_version))

    @asset(key=records_key, deps=[artifacts_key], code_version=records_code_version(handler, source, spec.split),
           kinds={"webdataset", "pytorch"}, **common,
           description=f"{dataset} examples as WebDataset shards per split (image.png, label(s), metadata.json) "
                       "with features.json; converted offline from the verified artifacts on all CPU cores.")
    def records(context: AssetExecutionContext, home: DatasetHome) -> MaterializeResult:
        result = build_records(dataset, handler, source, spec.split, artifacts_folder(home, dataset),
                               records_folder(home, dataset))
        return MaterializeResult(metadata=_metadata(result.metadata()), data_version=DataVersion(result.data_version))

    @asset(key=AssetKey([dataset, "splits"]), deps=[records_key], kinds={"yaml"}, **common,
           description=f"Train/validation/all tar lists of the {dataset} records (local_*_tars.yaml).")
    def splits(context: AssetExecutionContext, home: DatasetHome) -> MaterializeResult:
        return MaterializeResult(metadata=_metadata(write_record_splits(records_folder(home, dataset)).metadata()))

    return [artifacts, records, splits]
