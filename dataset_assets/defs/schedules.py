"""Schedules of a signed-URL dataset: a link-refresh backstop and a periodic verification.

`<ds>_link_refresh_schedule` runs `<ds>_refresh_links` whenever the saved links (the manifest's and the
streamable split YAMLs') expire before the next tick plus the margin, or carry no expiry this code can
read (then links are simply rotated every tick); it works even while the sensors are off. `<ds>_verify_schedule` runs
`<ds>_verify` daily: one run of the checks of `url_manifest` and `raw_shards` (file count, sizes
and sha1 of every downloaded sequence against the saved manifest); failures show on the asset.
"""
from datetime import timedelta

from dagster import RunRequest, ScheduleDefinition, ScheduleEvaluationContext, SkipReason, schedule

from dataset_assets.core.catalog import DatasetSpec
from dataset_assets.defs.jobs import DatasetJobs, raw_key
from dataset_assets.defs.resources import DatasetHome
from dataset_assets.defs.sensors import TRIGGER_TAG, links_expiring, links_expiry, refresh_margin

REFRESH_CRON = "*/30 * * * *"
REFRESH_INTERVAL = timedelta(minutes=30)
VERIFY_CRON = "0 4 * * *"


def build_link_refresh_schedule(spec: DatasetSpec, jobs: DatasetJobs, margin: timedelta) -> ScheduleDefinition:
    dataset = spec.name

    @schedule(name=f"{dataset}_link_refresh_schedule", cron_schedule=REFRESH_CRON, job=jobs.refresh_links,
              description=f"Every 30 minutes: refresh {dataset}'s links if they expire within {margin} "
                          "after the next tick (or carry no readable expiry).")
    def link_refresh_schedule(home: DatasetHome) -> RunRequest | SkipReason:
        path = home.manifest_path(dataset)
        if not path.exists():
            return SkipReason(f"{dataset}: no manifest saved yet; materialize url_manifest first")
        expiry = links_expiry(home, spec)
        if expiry is not None and not links_expiring(expiry, margin + REFRESH_INTERVAL):
            return SkipReason(f"{dataset}: links valid until {expiry.isoformat()}")
        return RunRequest(tags={TRIGGER_TAG: "scheduled_link_refresh"})

    return link_refresh_schedule


def build_verify_schedule(spec: DatasetSpec, jobs: DatasetJobs) -> ScheduleDefinition:
    dataset = spec.name

    @schedule(name=f"{dataset}_verify_schedule", cron_schedule=VERIFY_CRON, job=jobs.verify,
              description=f"Daily: re-check {dataset}'s manifest and every downloaded sequence's raw files.")
    def verify_schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        downloaded = context.instance.get_materialized_partitions(raw_key(dataset))
        if not downloaded:
            return SkipReason(f"{dataset}: no sequence downloaded yet")
        return RunRequest(tags={TRIGGER_TAG: "scheduled_verification"})

    return verify_schedule


def build_schedules(spec: DatasetSpec, jobs: DatasetJobs, margin: timedelta | None = None
                    ) -> list[ScheduleDefinition]:
    return [build_link_refresh_schedule(spec, jobs, margin or refresh_margin()), build_verify_schedule(spec, jobs)]
