"""`make scale-demo`: the demo dataset materialized by one backfill spread over Celery workers.

Starts the demo source, then Postgres, Redis, the Celery workers, dagster-daemon and
dagster-webserver (see `stack.py`), materializes `demo_aria/url_manifest`, backfills every
sequence partition of the whole graph (split manifests included), prints which worker ran how
many steps, and stops every process it started, by pid, however it ends (Ctrl-C and SIGTERM too).
The workers share the data folder `--home` through the file system.
"""
from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from dagster import DagsterInstance

from dataset_assets.cli.demo import DEMO_DATASET, DEMO_URL_ENV
from dataset_assets.core.catalog import load_catalog
from dataset_assets.core.errors import DatasetAssetsError
from dataset_assets.defs.builder import build_definitions
from dataset_assets.demo.generate import generate_demo_source
from dataset_assets.demo.server import DemoServer
from dataset_assets.scale.backfill import BackfillReport, below_manifest, materialize_dataset_by_backfill
from dataset_assets.scale.stack import running_stack

DEFAULT_HOME = Path(".dataset_assets_home") / "scale_demo"


def _print_report(report: BackfillReport, home: Path) -> None:
    print(f"backfill {report.backfill_id}: {report.status.value} in {report.seconds:.0f} s, "
          f"{len(report.runs)} runs, {len(report.steps)} steps")
    for worker, steps in sorted(report.steps_per_worker().items()):
        print(f"  {worker}: {steps} steps")
    for failure in report.failures:
        print(f"  failed: {failure}")
    print("split manifests:")
    for path in sorted((home / DEMO_DATASET / "shards").glob("*/*_tars.yaml")):
        print(f"  {path}")


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds every `with`, which stops every process by pid


def run(home: Path, sequences: int, workers: int) -> BackfillReport:
    assets = below_manifest(build_definitions(load_catalog()), DEMO_DATASET)
    source = home / "demo_source"
    generate_demo_source(source, sequences=sequences)
    with DemoServer(source) as server, running_stack(home, workers, {DEMO_URL_ENV: server.base_url}) as stack:
        print(f"stack up: UI at {stack.ui_url}, workers {', '.join(stack.workers)} (Ctrl-C stops everything)",
              flush=True)
        with DagsterInstance.get() as instance:
            return materialize_dataset_by_backfill(stack.graphql, instance, DEMO_DATASET, assets)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dataset_assets.scale.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help=f"shared data folder (default {DEFAULT_HOME})")
    parser.add_argument("--sequences", type=int, default=24, help="demo sequences, one partition each")
    parser.add_argument("--workers", type=int, default=2, help="Celery workers")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    home = args.home.resolve()
    try:
        report = run(home, args.sequences, args.workers)
    except (DatasetAssetsError, KeyboardInterrupt) as error:
        print(f"scale demo stopped: {error or 'interrupted'}", file=sys.stderr)
        return 1
    _print_report(report, home)
    return 0 if report.status.value == "COMPLETED_SUCCESS" else 1


if __name__ == "__main__":
    sys.exit(main())
