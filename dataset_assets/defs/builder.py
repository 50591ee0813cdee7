"""Build the Dagster `Definitions` for a catalog."""
from __future__ import annotations

from dagster import AssetsDefinition, Definitions

from dataset_assets.core.catalog import Catalog
from dataset_assets.defs.assets.signed_url import build_signed_url_assets
from dataset_assets.defs.resources import DatasetHome, TransferResource

FACTORIES = {"signed_url": build_signed_url_assets}


def build_assets(catalog: Catalog) -> list[AssetsDefinition]:
    return [asset for spec in catalog.datasets.values() for asset in FACTORIES[spec.kind](spec)]


def build_definitions(catalog: Catalog, home: DatasetHome | None = None,
                      transfer: TransferResource | None = None) -> Definitions:
    return Definitions(
        assets=build_assets(catalog),
        resources={"home": home or DatasetHome(), "transfer": transfer or TransferResource()},
    )
