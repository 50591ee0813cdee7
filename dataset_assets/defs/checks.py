"""Asset checks of shard and split assets: indexes agree with their shards, splits are clean.

Per `<ds>/shards__<config>` (partitioned like the asset) and per handler dataset's `<ds>/records`:
`sample_count_matches_index` and `index_entries_resolve`. Per `<ds>/splits__<config>` and handler
`<ds>/splits`: `train_validation_disjoint` and `yaml_paths_exist`. Per version of a versioned
dataset's `<ds>/published`: `objects_match_local`. All are blocking: in a run that
also materializes something downstream, a failed check stops it, so a corrupt shard set or a
leaking split never reaches the next step.
Each check body calls one core function and reports what it found.
"""
from collections.abc import Callable, Iterator
from pathlib import Path

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSpec,
    AssetKey,
    MetadataValue,
    PartitionsDefinition,
    multi_asset_check,
)

from dataset_assets.core.catalog import DatasetSpec
from dataset_assets.core.errors import DatasetAssetsError
from dataset_assets.core.handlers.base import SPLITS
from dataset_assets.core.index import INDEX_FILE
from dataset_assets.core.preprocess import PreprocessConfig
from dataset_assets.core.publish import publish_mismatches, version_destination
from dataset_assets.core.redaction import redact_text
from dataset_assets.core.shards import ShardSetCheck, verify_shard_set
from dataset_assets.core.tar_lists import missing_tars, split_overlap
from dataset_assets.defs.assets.handlers import records_folder
from dataset_assets.defs.assets.versioned import version_partitions
from dataset_assets.defs.partitions import sequence_partitions
from dataset_assets.defs.resources import DatasetHome

SHOWN_PROBLEMS = 10
SPLIT_PARTS = ("all", "train", "validation")


def _shard_set_folders(context: AssetCheckExecutionContext, root: Path) -> list[Path]:
    """The run's partitions' shard sets, or every published one when the run is unpartitioned."""
    if context.has_partition_key or context.has_partition_key_range:
        return [root / sequence for sequence in context.partition_keys]
    return sorted(path.parent for path in root.glob(f"*/{INDEX_FILE}"))


def _verify(folder: Path) -> ShardSetCheck:
    try:
        return verify_shard_set(folder)
    except DatasetAssetsError as error:
        return ShardSetCheck(index_rows=0, samples=0, problems=(str(error),))


def _counts_agree(report: ShardSetCheck) -> bool:
    """Index rows equal samples; an empty set agrees, one `_verify` could not read (no rows, a problem) does not."""
    return report.index_rows == report.samples and (report.index_rows > 0 or not report.problems)


def _shard_set_checks(key: AssetKey, root: Callable[[DatasetHome], Path], partitions: PartitionsDefinition | None,
                      required: tuple[str, ...] = ()) -> AssetChecksDefinition:
    """`sample_count_matches_index` and `index_entries_resolve` of the shard sets below `root(home)`.

    `required` names shard sets that must be there (a record set's splits): one that is gone fails both checks.
    """
    specs = [
        AssetCheckSpec("sample_count_matches_index", asset=key, blocking=True, partitions_def=partitions,
                       description="Samples found in the shard files equal the rows of the set's _index.json."),
        AssetCheckSpec("index_entries_resolve", asset=key, blocking=True, partitions_def=partitions,
                       description="Every shard matches its indexed size and sha256, and every index entry "
                                   "reads back exactly the bytes a sequential tar read yields."),
    ]

    @multi_asset_check(specs=specs, name=f"{'_'.join(key.path)}_checks")
    def shard_checks(context: AssetCheckExecutionContext, home: DatasetHome) -> Iterator[AssetCheckResult]:
        folders = set(_shard_set_folders(context, root(home))) | {root(home) / name for name in required}
        reports = {folder.name: _verify(folder) for folder in sorted(folders)}
        counts = {name: {"index_rows": r.index_rows, "samples": r.samples} for name, r in reports.items()}
        mismatched = sorted(name for name, report in reports.items() if not _counts_agree(report))
        yield AssetCheckResult(
            check_name="sample_count_matches_index", asset_key=key, passed=bool(reports) and not mismatched,
            description=f"index rows differ from samples in: {', '.join(mismatched)}" if mismatched else None,
            metadata={"counts": MetadataValue.json(counts)},
        )
        problems = [problem for report in reports.values() for problem in report.problems]
        yield AssetCheckResult(
            check_name="index_entries_resolve", asset_key=key, passed=bool(reports) and not problems,
            description=problems[0] if problems else None,
            metadata={"problem_count": len(problems), "problems": MetadataValue.json(problems[:SHOWN_PROBLEMS])},
        )

    return shard_checks


def _split_checks(key: AssetKey, folder_of: Callable[[DatasetHome], Path], prefixes: tuple[str, ...]
                  ) -> AssetChecksDefinition:
    """`train_validation_disjoint` and `yaml_paths_exist` of the `<prefix>_*_tars.yaml` in `folder_of(home)`."""
    specs = [
        AssetCheckSpec("train_validation_disjoint", asset=key, blocking=True,
                       description="No sequence or tar is in both the train and the validation split."),
        AssetCheckSpec("yaml_paths_exist", asset=key, blocking=True,
                       description="Every path in local_{all,train,validation}_tars.yaml is an existing file."),
    ]

    @multi_asset_check(specs=specs, name=f"{'_'.join(key.path)}_checks")
    def split_checks(home: DatasetHome) -> Iterator[AssetCheckResult]:
        folder = folder_of(home)
        try:  # streamable YAMLs list signed URLs: report them without their query
            overlap = [redact_text(item) for prefix in prefixes for item in split_overlap(
                folder / f"{prefix}_train_tars.yaml", folder / f"{prefix}_validation_tars.yaml")]
            missing = {part: missing_tars(folder / f"local_{part}_tars.yaml") for part in SPLIT_PARTS}
        except DatasetAssetsError as error:
            overlap, missing = [str(error)], {"error": [str(error)]}
        yield AssetCheckResult(
            check_name="train_validation_disjoint", asset_key=key, passed=not overlap,
            description=f"in both train and validation: {', '.join(overlap[:SHOWN_PROBLEMS])}" if overlap else None,
            metadata={"in_both": MetadataValue.json(overlap[:SHOWN_PROBLEMS])},
        )
        absent = [path for paths in missing.values() for path in paths]
        yield AssetCheckResult(
            check_name="yaml_paths_exist", asset_key=key, passed=not absent,
            description=f"{len(absent)} listed files missing, e.g. {absent[0]}" if absent else None,
            metadata={"missing": MetadataValue.json({part: paths[:SHOWN_PROBLEMS] for part, paths in missing.items()})},
        )

    return split_checks


def build_shard_checks(spec: DatasetSpec) -> list[AssetChecksDefinition]:
    """The shard-set and split checks of every preprocessing config of a signed-URL dataset."""
    checks = []
    for config in spec.preprocess.values():
        def shard_sets(home: DatasetHome, config: PreprocessConfig = config) -> Path:
            return home.shard_set_folder(spec.name, config.name)

        checks += [
            _shard_set_checks(AssetKey([spec.name, f"shards__{config.name}"]), shard_sets,
                              sequence_partitions(spec.name)),
            _split_checks(AssetKey([spec.name, f"splits__{config.name}"]), shard_sets, ("local", "streamable")),
        ]
    return checks


def build_handler_checks(spec: DatasetSpec) -> list[AssetChecksDefinition]:
    """The checks of a handler dataset's record shard sets (one per split) and of its split YAMLs."""
    def records(home: DatasetHome) -> Path:
        return records_folder(home, spec.name)

    return [_shard_set_checks(AssetKey([spec.name, "records"]), records, None, required=SPLITS),
            _split_checks(AssetKey([spec.name, "splits"]), records, ("local",))]


def build_versioned_checks(spec: DatasetSpec) -> list[AssetChecksDefinition]:
    """`objects_match_local` of a versioned dataset's `<ds>/published`, per version (none without publish)."""
    source = spec.versioned
    if source is None or source.publish is None:
        return []
    publish, files, key = source.publish, source.published_files(), AssetKey([spec.name, "published"])
    check_spec = AssetCheckSpec(
        "objects_match_local", asset=key, blocking=True, partitions_def=version_partitions(spec),
        description="Every published object of the version exists with the size and stored sha1 of its local file.")

    @multi_asset_check(specs=[check_spec], name=f"{spec.name}_published_checks")
    def published_checks(context: AssetCheckExecutionContext, home: DatasetHome) -> Iterator[AssetCheckResult]:
        version = context.partition_key
        problems = publish_mismatches(home.version_folder(spec.name, version), files,
                                      version_destination(publish, spec.name, version))
        yield AssetCheckResult(check_name="objects_match_local", asset_key=key, passed=not problems,
                               description=problems[0] if problems else None,
                               metadata={"version": version, "files": len(files),
                                         "problems": MetadataValue.json(problems[:SHOWN_PROBLEMS])})

    return [published_checks]
