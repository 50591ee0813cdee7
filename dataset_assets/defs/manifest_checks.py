"""Asset checks of the download stage: the saved URL manifest and each sequence's raw files.

`<ds>/url_manifest`: `well_formed` (the saved snapshot parses, publishes every raw config the
catalog needs and at least one sequence) and `links_unexpired`. `<ds>/raw_shards`, per sequence:
`files_complete` (every file the manifest lists is in its folder or bucket with the manifest's size)
and `checksums_match` (each file's sha1 equals the manifest's). All are blocking: preprocessing must
not start from a broken manifest or a bad raw file. The `<ds>_verify` job and schedule re-run them.
"""
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSpec,
    AssetKey,
    MetadataValue,
    multi_asset_check,
)

from dataset_assets.core.catalog import DatasetSpec
from dataset_assets.core.errors import DatasetAssetsError
from dataset_assets.core.manifest import UrlManifest
from dataset_assets.core.pipeline import read_snapshot, usable_sequences
from dataset_assets.core.storage import Destination, LocalDestination
from dataset_assets.defs.jobs import manifest_key, raw_key
from dataset_assets.defs.resources import DatasetHome, TransferResource


@dataclass
class RawAudit:
    """What is wrong with the raw files of some sequences, each file named `<config>/<sequence>/<file>`."""

    sequences: int = 0
    expected: int = 0
    verified: int = 0
    missing_or_wrong_size: list[str] = field(default_factory=list)
    wrong_sha1: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, object]:
        return {"sequences_checked": self.sequences, "files_expected": self.expected, "files_verified": self.verified,
                "missing_or_wrong_size": MetadataValue.json(self.missing_or_wrong_size),
                "wrong_sha1": MetadataValue.json(self.wrong_sha1)}


def audit_raw_files(manifest: UrlManifest, destinations: Mapping[str, Path | Destination],
                    sequences: Sequence[str]) -> RawAudit:
    """Compare each config's destination (folder or bucket) with the manifest: presence and size, then sha1.

    A folder's files are hashed again; an S3 object's sha1 is the one stored when it was verified on upload.
    """
    audit = RawAudit(sequences=len(sequences))
    for sequence in sequences:
        for config, target in sorted(destinations.items()):
            destination = LocalDestination(target) if isinstance(target, Path) else target
            for entry in manifest.entries(config, sequence):
                name = f"{config}/{entry.relative_path}"
                audit.expected += 1
                digest = destination.verified(entry.relative_path, entry.size, None)
                if digest is None:
                    audit.missing_or_wrong_size.append(name)
                elif entry.sha1 is not None and digest.sha1 != entry.sha1:
                    audit.wrong_sha1.append(name)
                else:
                    audit.verified += 1
    return audit


def _url_manifest_checks(spec: DatasetSpec) -> AssetChecksDefinition:
    key = manifest_key(spec.name)

    @multi_asset_check(name=f"{spec.name}_url_manifest_checks", specs=[
        AssetCheckSpec("well_formed", asset=key, blocking=True,
                       description="The saved manifest parses and publishes every raw config the catalog needs."),
        AssetCheckSpec("links_unexpired", asset=key, blocking=True,
                       description="No signed link in the saved manifest has expired."),
    ])
    def url_manifest_checks(home: DatasetHome) -> Iterator[AssetCheckResult]:
        path = home.manifest_path(spec.name)
        try:
            manifest = read_snapshot(path)
            sequences = usable_sequences(manifest, spec.raw_configs)
        except (DatasetAssetsError, OSError) as error:
            problem = f"{type(error).__name__}: {error}"
            yield AssetCheckResult(check_name="well_formed", passed=False, description=problem)
            yield AssetCheckResult(check_name="links_unexpired", passed=False, description=f"unreadable: {problem}")
            return
        entries = manifest.all_entries()
        yield AssetCheckResult(
            check_name="well_formed", passed=bool(sequences),
            description=None if sequences else "no sequence is published in every raw config the catalog needs",
            metadata={"sequences": len(sequences), "files": len(entries),
                      "files_without_sha1": sum(1 for entry in entries if entry.sha1 is None),
                      "files_without_size": sum(1 for entry in entries if entry.size is None)})
        yield _links_unexpired(manifest)

    return url_manifest_checks


def _links_unexpired(manifest: UrlManifest) -> AssetCheckResult:
    expiry = manifest.earliest_expiry()
    if expiry is None:
        return AssetCheckResult(check_name="links_unexpired", passed=True, description="links carry no expiry")
    seconds_left = (expiry - datetime.now(timezone.utc)).total_seconds()
    return AssetCheckResult(
        check_name="links_unexpired", passed=seconds_left > 0,
        description=None if seconds_left > 0 else "signed links expired: re-materialize url_manifest",
        metadata={"earliest_link_expiry": expiry.isoformat(), "seconds_left": round(seconds_left)})


def checked_sequences(context: AssetCheckExecutionContext, key: AssetKey) -> list[str]:
    """The run's sequences when it materializes some, else (a verification run) every materialized one."""
    if context.has_partition_key or context.has_partition_key_range:
        return list(context.partition_keys)
    return sorted(context.instance.get_materialized_partitions(key))


def _raw_shards_checks(spec: DatasetSpec) -> AssetChecksDefinition:
    key = raw_key(spec.name)

    @multi_asset_check(name=f"{spec.name}_raw_shards_checks", specs=[
        AssetCheckSpec("files_complete", asset=key, blocking=True,
                       description="Every file the manifest lists for the checked sequences is stored with its size."),
        AssetCheckSpec("checksums_match", asset=key, blocking=True,
                       description="Every stored file's sha1 equals the manifest's."),
    ])
    def raw_shards_checks(context: AssetCheckExecutionContext, home: DatasetHome, transfer: TransferResource
                          ) -> Iterator[AssetCheckResult]:
        manifest = read_snapshot(home.manifest_path(spec.name))
        folders = {config: home.raw_folder(spec.name, config) for config in spec.raw_configs}
        sequences = checked_sequences(context, key)
        audit = audit_raw_files(manifest, transfer.destinations(spec.name, folders), sequences)
        complete = not audit.missing_or_wrong_size
        yield AssetCheckResult(check_name="files_complete", passed=complete, metadata=audit.metadata(),
                               description=None if complete else "files missing or of the wrong size")
        matching = complete and not audit.wrong_sha1
        yield AssetCheckResult(check_name="checksums_match", passed=matching, metadata=audit.metadata(),
                               description=None if matching else "files missing, of the wrong size or sha1")

    return raw_shards_checks


def build_manifest_checks(spec: DatasetSpec) -> list[AssetChecksDefinition]:
    return [_url_manifest_checks(spec), _raw_shards_checks(spec)]
