"""Build the Dagster `Definitions` for a catalog."""
from __future__ import annotations

import os

from dagster import AssetsDefinition, Definitions, ExecutorDefinition

from dataset_assets.core.catalog import Catalog
from dataset_assets.defs.assets.handlers import build_handler_assets
from dataset_assets.defs.assets.signed_url import build_signed_url_assets
from dataset_assets.defs.assets.versioned import build_versioned_assets, build_versions_sensor
from dataset_assets.defs.checks import build_handler_checks, build_shard_checks, build_versioned_checks
from dataset_assets.defs.jobs import build_dataset_jobs
from dataset_assets.defs.manifest_checks import build_manifest_checks
from dataset_assets.defs.resources import DatasetHome, TransferResource
from dataset_assets.defs.schedules import build_schedules
from dataset_assets.defs.sensors import build_sensors

FACTORIES = {"signed_url": build_signed_url_assets, "handler": build_handler_assets,
             "versioned": build_versioned_assets}
CELERY_CONFIG_ENV = "DATASET_ASSETS_CELERY_CONFIG"


def build_assets(catalog: Catalog) -> list[AssetsDefinition]:
    return [asset for spec in catalog.datasets.values() for asset in FACTORIES[spec.kind](spec)]


def executor_from_env() -> ExecutorDefinition | None:
    """dagster-celery's executor configured by the YAML `$DATASET_ASSETS_CELERY_CONFIG` names, if set.

    The file is the `execution: config:` block Celery workers read too (deploy/celery.yaml), so runs
    launched from anywhere (UI, backfills, sensors, CLI) queue their steps where the workers listen.
    Unset keeps Dagster's default executor.
    """
    path = os.environ.get(CELERY_CONFIG_ENV)
    if not path:
        return None
    from dagster_celery import celery_executor  # the optional `scale` extra
    from dagster_celery.cli import get_config_value_from_yaml

    return celery_executor.configured(dict(get_config_value_from_yaml(path)), name="celery")


def build_definitions(catalog: Catalog, home: DatasetHome | None = None,
                      transfer: TransferResource | None = None) -> Definitions:
    signed_url = [spec for spec in catalog.datasets.values() if spec.kind == "signed_url"]
    jobs = {spec.name: build_dataset_jobs(spec) for spec in signed_url}
    return Definitions(
        assets=build_assets(catalog),
        asset_checks=[check for spec in signed_url
                      for check in (*build_manifest_checks(spec), *build_shard_checks(spec))]
        + [check for spec in catalog.datasets.values() if spec.kind == "handler"
           for check in build_handler_checks(spec)]
        + [check for spec in catalog.datasets.values() for check in build_versioned_checks(spec)],
        jobs=[job for dataset_jobs in jobs.values() for job in dataset_jobs.all()],
        sensors=[sensor for spec in signed_url for sensor in build_sensors(spec, jobs[spec.name])]
        + [build_versions_sensor(spec) for spec in catalog.datasets.values()
           if spec.versioned is not None and spec.versioned.dynamic],
        schedules=[schedule for spec in signed_url for schedule in build_schedules(spec, jobs[spec.name])],
        resources={"home": home or DatasetHome(), "transfer": transfer or TransferResource()},
        executor=executor_from_env(),
    )
