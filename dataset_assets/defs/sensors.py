"""Sensors that keep a signed-URL dataset current: new sequences in, fresh links before old ones die.

`<ds>_manifest_sensor` fetches the published manifest with core code (never a shard) and compares
a digest per sequence (its files' names, sizes and sha1s, not its links) with the digests in its
cursor. Sequences Dagster does not know yet become dynamic partitions, and each new or changed
sequence gets one `<ds>_sequence` run, unless its newest `raw_shards` materialization already
verified exactly those files and the newest materialization of each `shards__<config>` partition
recorded that download's `files_version` as its source (a download whose preprocessing failed or
never ran is requested again). Those materializations are read in batches (a few instance queries
per asset and tick, not one per sequence), and only for sequences that already are partitions: a
sequence that is not one yet cannot have been materialized. `<ds>_link_refresh_sensor` requests
`<ds>_refresh_links` once the earliest expiry of the saved links (the manifest's, and the streamable split
YAMLs', which keep older ones after `url_manifest` ran alone) is within the margin (and again
while the newest refresh run failed or was canceled, since those links are still the saved ones), and
re-requests every partition whose `raw_shards` step failed on expired links and has not been
materialized since; `<ds>_sequence` fetches fresh links before it downloads.

A cursor either sensor cannot read (set by hand with `dagster sensor cursor --set`, or written by
another version) would otherwise fail every tick: it is ignored with a warning, and the tick runs as
if the sensor had never ticked. Run keys keep that fresh start from launching a run twice.
"""
import json
import os
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)
from dagster._utils.error import SerializableErrorInfo

from dataset_assets.core.catalog import DatasetSpec
from dataset_assets.core.errors import ManifestError
from dataset_assets.core.manifest import ManifestEntry, UrlManifest
from dataset_assets.core.pipeline import content_version, read_snapshot, split_links_expiry, usable_sequences
from dataset_assets.core.transfer import LinkExpired, fetch_manifest, make_client
from dataset_assets.defs.assets.signed_url import FILE_SIZES, metadata_mapping, recorded_files_version
from dataset_assets.defs.jobs import DatasetJobs, raw_key, shards_keys
from dataset_assets.defs.partitions import sequence_partitions
from dataset_assets.defs.resources import DatasetHome, TransferResource

REFRESH_MARGIN_ENV = "DATASET_ASSETS_LINK_REFRESH_MARGIN_SECONDS"
DEFAULT_REFRESH_MARGIN = timedelta(minutes=15)
EXPIRED_LINKS_MESSAGE = "signed links expired"
TRIGGER_TAG = "dataset_assets/trigger"
FAILED_RUNS_PER_TICK = 100
MATERIALIZATIONS_PER_QUERY = 500
Cursor = TypeVar("Cursor")


class UnreadableCursor(ValueError):
    """A sensor cursor of the wrong shape; the message says why without repeating the cursor,
    which may hold anything that was pasted into it."""


def _json_object(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise UnreadableCursor("it is not JSON") from None
    if not isinstance(value, dict):
        raise UnreadableCursor("it is JSON but not an object")
    return value


def parse_digests(text: str | None) -> dict[str, str]:
    """The manifest sensor's cursor, `{"<sequence>": "<digest>"}`: the digests it saw last tick."""
    if not text:
        return {}
    value = _json_object(text)
    digests = {sequence: digest for sequence, digest in value.items() if isinstance(digest, str)}
    if len(digests) != len(value):
        raise UnreadableCursor("a sequence's digest is not a string")
    return digests


def read_cursor(context: SensorEvaluationContext, sensor_name: str, parse: Callable[[str | None], Cursor]) -> Cursor:
    """`parse(context.cursor)`, or the fresh start `parse(None)` with a warning when it cannot be read."""
    try:
        return parse(context.cursor)
    except UnreadableCursor as error:
        context.log.warning(f"{sensor_name}: cursor ignored ({error}); this tick starts as if the sensor "
                            "had never ticked")
        return parse(None)


def refresh_margin() -> timedelta:
    """How long before the earliest link expiry links are refreshed (`$DATASET_ASSETS_LINK_REFRESH_MARGIN_SECONDS`)."""
    value = os.environ.get(REFRESH_MARGIN_ENV)
    if value is None:
        return DEFAULT_REFRESH_MARGIN
    if not value.isdigit():
        raise ValueError(f"${REFRESH_MARGIN_ENV} must be a whole number of seconds (got {value!r})")
    return timedelta(seconds=int(value))


def sequence_digests(manifest: UrlManifest, raw_configs: list[str]) -> dict[str, str]:
    """`content_version` of each usable sequence's files: it changes when the files change, not the links."""
    return {
        sequence: content_version(UrlManifest(manifest.source, {
            config: {sequence: manifest.entries(config, sequence)} for config in raw_configs}), raw_configs)
        for sequence in usable_sequences(manifest, raw_configs)
    }


def _as_listed(entry: ManifestEntry, sha1: object, size: object) -> bool:
    """The manifest's sha1 identifies a file; where it gives none, its size does, as in the download."""
    if entry.sha1 is not None:
        return sha1 == entry.sha1
    return entry.size is None or size == entry.size


def verified_manifest_files(materialization: AssetMaterialization | None, manifest: UrlManifest,
                            raw_configs: list[str], sequence: str) -> bool:
    """Whether a `raw_shards` materialization verified exactly the files the manifest lists for `sequence`,
    by its `sha1` and `sizes` metadata (`{"<config>/<path>": value}` of the files it verified)."""
    sha1s, sizes = metadata_mapping(materialization, "sha1"), metadata_mapping(materialization, FILE_SIZES)
    entries = {f"{entry.config}/{entry.relative_path}": entry
               for config in raw_configs for entry in manifest.entries(config, sequence)}
    return sha1s.keys() == entries.keys() and all(
        _as_listed(entry, sha1s[name], sizes.get(name)) for name, entry in entries.items())


def latest_materializations(instance: DagsterInstance, key: AssetKey,
                            sequences: Collection[str]) -> dict[str, AssetMaterialization]:
    """The newest materialization of each of `sequences` that has one: one query finds the newest of every
    partition, then they are read `MATERIALIZATIONS_PER_QUERY` at a time."""
    latest = instance.get_latest_storage_id_by_partition(key, DagsterEventType.ASSET_MATERIALIZATION)
    storage_ids = [latest[sequence] for sequence in sequences if sequence in latest]
    found = {}
    for start in range(0, len(storage_ids), MATERIALIZATIONS_PER_QUERY):
        batch = storage_ids[start:start + MATERIALIZATIONS_PER_QUERY]
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=key, storage_ids=batch), limit=len(batch)).records
        found.update((record.partition_key, record.asset_materialization) for record in records
                     if record.partition_key is not None and record.asset_materialization is not None)
    return found


def made_from(shards: AssetMaterialization | None, version: str) -> bool:
    """Whether a `shards__<config>` materialization recorded `version` as its source's version."""
    source = metadata_mapping(shards, "source")
    return source.get("raw_data_version") == version


def current_sequences(instance: DagsterInstance, dataset: str, shard_keys: list[AssetKey], manifest: UrlManifest,
                      raw_configs: list[str], sequences: Collection[str]) -> set[str]:
    """Those of `sequences` whose newest `raw_shards` materialization verified exactly the files the manifest
    lists and whose newest materialization of every shard set was made from that download (its
    `files_version`). A download without a `files_version` cannot be matched, so it is not current."""
    if not sequences:
        return set()
    raw = latest_materializations(instance, raw_key(dataset), sequences)
    versions = {sequence: recorded_files_version(materialization) for sequence, materialization in raw.items()
                if verified_manifest_files(materialization, manifest, raw_configs, sequence)}
    verified = [sequence for sequence, version in versions.items() if version is not None]
    shard_sets = [latest_materializations(instance, key, verified) for key in shard_keys]
    return {sequence for sequence in verified
            if all(made_from(made.get(sequence), versions[sequence]) for made in shard_sets)}


def links_expiring(expiry: datetime, within: timedelta) -> bool:
    return expiry - datetime.now(timezone.utc) <= within


def saved_expiry(path: Path) -> datetime | None:
    """The earliest link expiry of the saved manifest; None if there is none yet, links never expire, or it
    does not parse (a refresh rewrites it; the failed downloads to re-request do not depend on it)."""
    try:
        return read_snapshot(path).earliest_expiry() if path.exists() else None
    except ManifestError:
        return None


def links_expiry(home: DatasetHome, spec: DatasetSpec) -> datetime | None:
    """The earliest expiry of the links saved in the manifest and in the streamable split YAMLs, which keep
    older links when `url_manifest` was materialized without the splits; None if neither has one."""
    folders = [home.shard_set_folder(spec.name, config) for config in sorted(spec.preprocess)]
    expiries = [saved_expiry(home.manifest_path(spec.name)), split_links_expiry(folders)]
    return min((expiry for expiry in expiries if expiry is not None), default=None)


def build_manifest_sensor(spec: DatasetSpec, jobs: DatasetJobs) -> SensorDefinition:
    dataset, sequences = spec.name, sequence_partitions(spec.name)
    name = f"{dataset}_manifest_sensor"

    @sensor(name=name, job=jobs.sequence, minimum_interval_seconds=300,
            description=f"Adds new {dataset} sequences as partitions and runs `{jobs.sequence.name}` "
                        "for each new or changed sequence of the published manifest.")
    def manifest_sensor(context: SensorEvaluationContext, transfer: TransferResource) -> SensorResult:
        with make_client(transfer.settings()) as client:
            manifest, _ = fetch_manifest(spec.manifest.location, client)
        digests = sequence_digests(manifest, spec.raw_configs)
        seen = read_cursor(context, name, parse_digests)
        known = set(context.instance.get_dynamic_partitions(sequences.name))
        new = [sequence for sequence in digests if sequence not in known]
        different = [sequence for sequence, digest in digests.items() if seen.get(sequence) != digest]
        current = current_sequences(context.instance, dataset, shards_keys(spec), manifest, spec.raw_configs,
                                    [sequence for sequence in different if sequence in known])
        changed = [sequence for sequence in different if sequence not in current]
        cursor = json.dumps(digests, sort_keys=True)
        if not changed and not new:
            return SensorResult(skip_reason=f"{len(digests)} sequences published, none new or changed", cursor=cursor)
        return SensorResult(
            run_requests=[RunRequest(job_name=jobs.sequence.name, run_key=f"{sequence}:{digests[sequence]}",
                                     partition_key=sequence, tags={TRIGGER_TAG: "new_or_changed_sequence"})
                          for sequence in changed],
            dynamic_partitions_requests=[sequences.build_add_request(new)] if new else [],
            cursor=cursor,
        )

    return manifest_sensor


def _mentions_expired_links(error: SerializableErrorInfo | None) -> bool:
    while error is not None:
        if error.cls_name == LinkExpired.__name__ or EXPIRED_LINKS_MESSAGE in error.message:
            return True
        error = error.cause
    return False


def failed_on_expired_links(instance: DagsterInstance, run_id: str, key: AssetKey) -> bool:
    """Whether the step of asset `key` failed in run `run_id` because signed links expired."""
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
        event = entry.dagster_event
        if event is not None and event.step_key == key.to_python_identifier():
            if _mentions_expired_links(event.step_failure_data.error):
                return True
    return False


def run_partitions(run: DagsterRun, keys: list[str]) -> list[str]:
    """The partition a run targeted, or every partition of its range, among the registered `keys`.

    A partition deleted since cannot be requested: Dagster would refuse the whole tick, every tick.
    """
    if PARTITION_NAME_TAG in run.tags:
        return [run.tags[PARTITION_NAME_TAG]] if run.tags[PARTITION_NAME_TAG] in keys else []
    if ASSET_PARTITION_RANGE_START_TAG not in run.tags:
        return []
    first, last = run.tags[ASSET_PARTITION_RANGE_START_TAG], run.tags[ASSET_PARTITION_RANGE_END_TAG]
    return keys[keys.index(first):keys.index(last) + 1] if first in keys and last in keys else []


def materialized_since(instance: DagsterInstance, key: AssetKey, partition: str, since: datetime) -> bool:
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[partition], after_timestamp=since.timestamp()),
        limit=1).records
    return bool(records)


@dataclass(frozen=True)
class RefreshCursor:
    """Failed runs are read after `failures_until`; `refreshed_expiry` is the expiry already refreshed for."""

    failures_until: str = datetime.fromtimestamp(0, timezone.utc).isoformat()
    refreshed_expiry: str = ""

    @classmethod
    def parse(cls, text: str | None) -> "RefreshCursor":
        """Empty: a fresh start. Else both fields as strings, `failures_until` an ISO 8601 time with offset."""
        if not text:
            return cls()
        strings = {key: item for key, item in _json_object(text).items() if isinstance(item, str)}
        names = {field.name for field in fields(cls)}
        if strings.keys() != names:
            raise UnreadableCursor(f"it must hold exactly the string fields {', '.join(sorted(names))}")
        cursor = cls(**strings)
        cursor.failures_after()
        return cursor

    def failures_after(self) -> datetime:
        try:
            after = datetime.fromisoformat(self.failures_until)
        except ValueError:
            raise UnreadableCursor("failures_until is not an ISO 8601 time") from None
        if after.tzinfo is None:
            raise UnreadableCursor("failures_until has no UTC offset")
        return after

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class FailureScan:
    """Partitions to retry, `(run_id, partition)` naming each one's newest failed run, and the update time
    of the newest failed run read."""

    retries: list[tuple[str, str]]
    until: datetime | None


def scan_failures(instance: DagsterInstance, dataset: str, after: datetime) -> FailureScan:
    """Failed runs updated after `after`: partitions whose download failed on expired links and are
    still unmaterialized."""
    key, keys = raw_key(dataset), instance.get_dynamic_partitions(sequence_partitions(dataset).name)
    records = instance.get_run_records(
        RunsFilter(statuses=[DagsterRunStatus.FAILURE], updated_after=after),
        limit=FAILED_RUNS_PER_TICK, order_by="update_timestamp", ascending=True)
    newest_failure = {
        partition: record.dagster_run.run_id
        for record in records if failed_on_expired_links(instance, record.dagster_run.run_id, key)
        for partition in run_partitions(record.dagster_run, keys)
        if not materialized_since(instance, key, partition, record.update_timestamp)
    }
    retries = [(run_id, partition) for partition, run_id in newest_failure.items()]
    return FailureScan(retries, records[-1].update_timestamp if records else None)


def failed_refresh(instance: DagsterInstance, job_name: str) -> str | None:
    """The id of the newest run of `job_name` if it failed or was canceled: the links it was to refresh are not."""
    records = instance.get_run_records(RunsFilter(job_name=job_name), limit=1)
    ended = (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
    return records[0].dagster_run.run_id if records and records[0].dagster_run.status in ended else None


def refresh_run_key(expiry: datetime, refreshed_expiry: str, failed_run_id: str | None) -> str | None:
    """The run key of a refresh of links expiring at `expiry`: the first request for that expiry, or another
    once the newest refresh run failed (the saved links still expire then); None while neither applies."""
    if expiry.isoformat() != refreshed_expiry:
        return f"refresh:{expiry.isoformat()}"
    return f"refresh:{expiry.isoformat()}:after:{failed_run_id}" if failed_run_id else None


def build_link_refresh_sensor(spec: DatasetSpec, jobs: DatasetJobs, margin: timedelta) -> SensorDefinition:
    dataset = spec.name
    name = f"{dataset}_link_refresh_sensor"

    @sensor(name=name, jobs=[jobs.sequence, jobs.refresh_links],
            minimum_interval_seconds=60,
            description=f"Refreshes {dataset}'s signed links {margin} before they expire and re-requests "
                        "the partitions whose download failed on expired links.")
    def link_refresh_sensor(context: SensorEvaluationContext, home: DatasetHome) -> SensorResult:
        cursor = read_cursor(context, name, RefreshCursor.parse)
        scan = scan_failures(context.instance, dataset, cursor.failures_after())
        requests = [RunRequest(job_name=jobs.sequence.name, partition_key=partition,
                               run_key=f"retry:{run_id}:{partition}", tags={TRIGGER_TAG: "expired_links"})
                    for run_id, partition in scan.retries]
        failures_until = scan.until.isoformat() if scan.until else cursor.failures_until
        expiry = links_expiry(home, spec)
        refreshed_expiry = cursor.refreshed_expiry
        if expiry is not None and links_expiring(expiry, margin):
            run_key = refresh_run_key(expiry, refreshed_expiry,
                                      failed_refresh(context.instance, jobs.refresh_links.name))
            if run_key is not None:
                refreshed_expiry = expiry.isoformat()
                requests.append(RunRequest(job_name=jobs.refresh_links.name, run_key=run_key,
                                           tags={TRIGGER_TAG: "links_expiring"}))
        next_cursor = RefreshCursor(failures_until, refreshed_expiry).dumps()
        if not requests:
            until = expiry.isoformat() if expiry else "no expiry recorded"
            return SensorResult(skip_reason=f"links valid ({until}); no expired-link failures", cursor=next_cursor)
        return SensorResult(run_requests=requests, cursor=next_cursor)

    return link_refresh_sensor


def build_sensors(spec: DatasetSpec, jobs: DatasetJobs, margin: timedelta | None = None) -> list[SensorDefinition]:
    return [build_manifest_sensor(spec, jobs), build_link_refresh_sensor(spec, jobs, margin or refresh_margin())]
