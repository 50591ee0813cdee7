"""Materialize a whole signed-URL dataset graph in-process: what `dataset-assets demo` runs.

The runs land in the given `DagsterInstance`, so the UI shows them afterwards exactly as if they
had been launched there.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dagster import AssetKey, DagsterInstance, Definitions

from dataset_assets.defs.partitions import sequence_partitions

QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass(frozen=True)
class DatasetRunSummary:
    dataset: str
    partitions: tuple[str, ...]
    failed_partitions: tuple[str, ...]
    run_ids: tuple[str, ...]


def materialize_dataset(defs: Definitions, instance: DagsterInstance, dataset: str,
                        partitions: Sequence[str] | None = None,
                        on_step: Callable[[str], None] = lambda message: None) -> DatasetRunSummary:
    """url_manifest, then raw + preprocessed shards per sequence, then the split manifests.

    A failing sequence does not stop the others; the splits then cover the sequences that have
    shards, and the summary names the ones that failed. The console shows warnings and errors only;
    every event still lands in the instance's event log.
    """
    job = defs.resolve_implicit_global_asset_job_def()
    keys = [key for key in defs.resolve_all_asset_keys() if key.path[0] == dataset]
    per_sequence = [key for key in keys if key.path[-1] == "raw_shards" or key.path[-1].startswith("shards__")]
    splits = [key for key in keys if key.path[-1].startswith("splits__")]
    run_ids: list[str] = []

    on_step(f"{dataset}: fetching the URL manifest")
    result = job.execute_in_process(instance=instance, asset_selection=[AssetKey([dataset, "url_manifest"])],
                                    run_config=QUIET_RUN_CONFIG)
    run_ids.append(result.run_id)
    selected = list(partitions or instance.get_dynamic_partitions(sequence_partitions(dataset).name))
    failed: list[str] = []
    for index, sequence in enumerate(selected, start=1):
        on_step(f"{dataset}: sequence {sequence} ({index}/{len(selected)})")
        result = job.execute_in_process(instance=instance, asset_selection=per_sequence, partition_key=sequence,
                                        raise_on_error=False, run_config=QUIET_RUN_CONFIG)
        run_ids.append(result.run_id)
        if not result.success:
            failed.append(sequence)
    on_step(f"{dataset}: writing split manifests")
    result = job.execute_in_process(instance=instance, asset_selection=splits, run_config=QUIET_RUN_CONFIG)
    run_ids.append(result.run_id)
    return DatasetRunSummary(dataset, tuple(selected), tuple(failed), tuple(run_ids))
