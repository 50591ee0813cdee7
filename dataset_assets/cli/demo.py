"""`dataset-assets demo run|serve|ui`: the embedded demo source and the whole demo graph.

`run` materializes the whole demo graph into `./.dataset_assets_home`; `ui` serves the demo
source and opens `dagster dev` on it; `serve` only serves the demo source.
"""
from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
from pathlib import Path

from dataset_assets.core.errors import DatasetAssetsError, InvalidInputError
from dataset_assets.core.storage import atomic_file

DEMO_DATASET = "demo_aria"
DEMO_URL_ENV = "DATASET_ASSETS_DEMO_URL"
DEFAULT_DEMO_PORT = 8765


def _demo_secret(home: Path) -> bytes:
    """The demo server's HMAC key, kept under the home folder so links survive a server restart."""
    path = home / "demo_source" / ".secret"
    if not path.exists():
        with atomic_file(path) as part:  # private before the key is in it; never left empty or partial
            os.chmod(part, 0o600)
            part.write_bytes(secrets.token_bytes(32))
    return path.read_bytes()


def _start_demo_server(home: Path, port: int):  # type: ignore[no-untyped-def]
    from dataset_assets.demo.generate import generate_demo_source
    from dataset_assets.demo.server import DemoServer

    source = home / "demo_source"
    generate_demo_source(source)
    server = DemoServer(source, secret=_demo_secret(home), port=port)
    try:
        server.start()
    except OSError as error:
        raise DatasetAssetsError(f"cannot serve the demo source on 127.0.0.1:{port}: {error.strerror} "
                                 "(is a demo server already running? pick another --port)") from error
    os.environ[DEMO_URL_ENV] = server.base_url
    return server


def _demo_environment(home: Path) -> None:
    from dataset_assets.defs.resources import HOME_ENV

    os.environ[HOME_ENV] = str(home)
    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(home / "dagster")
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    dagster_home.mkdir(parents=True, exist_ok=True)
    instance_config = dagster_home / "dagster.yaml"
    if not instance_config.exists():
        instance_config.write_text("telemetry:\n  enabled: false\n")


def demo_run(home: Path, port: int) -> int:
    """Serve the demo source, materialize the whole demo graph, print where the manifests are."""
    from dagster import DagsterInstance

    from dataset_assets.core.catalog import load_catalog
    from dataset_assets.defs.builder import build_definitions
    from dataset_assets.defs.materialize import materialize_dataset
    from dataset_assets.defs.resources import DatasetHome

    _demo_environment(home)
    with _start_demo_server(home, port) as server:
        print(f"demo source served at {server.base_url}")
        catalog = load_catalog()
        defs = build_definitions(catalog, home=DatasetHome(root=str(home)))
        with DagsterInstance.get() as instance:
            summary = materialize_dataset(defs, instance, DEMO_DATASET, on_step=print)
    shard_sets = home / DEMO_DATASET / "shards"
    print("\nSplit manifests:")
    for yaml_path in sorted(shard_sets.glob("*/*_tars.yaml")):
        print(f"  {yaml_path}")
    print(f"\n{len(summary.partitions)} sequences materialized, {len(summary.failed_partitions)} failed"
          + (f": {', '.join(summary.failed_partitions)}" if summary.failed_partitions else ""))
    print("Open the Dagster UI on these runs with:  make ui   (then browse http://127.0.0.1:3000)")
    return 1 if summary.failed_partitions else 0


def demo_serve(home: Path, port: int) -> int:
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with _start_demo_server(home, port) as server:
        print(f"demo source served at {server.base_url} (Ctrl-C to stop)", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    return 0


def demo_ui(home: Path, port: int, ui_port: int) -> int:
    """Serve the demo source and run `dagster dev` on the demo Definitions until interrupted."""
    _demo_environment(home)
    with _start_demo_server(home, port) as server:
        print(f"demo source served at {server.base_url}")
        command = [sys.executable, "-m", "dagster", "dev", "-m", "dataset_assets.definitions",
                   "-h", "127.0.0.1", "-p", str(ui_port)]
        try:
            return subprocess.call(command, env=os.environ.copy())
        except KeyboardInterrupt:
            return 0


def add_demo_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    demo = commands.add_parser("demo", help="the embedded demo dataset")
    demo_commands = demo.add_subparsers(dest="demo_command", required=True)
    for name, help_text in (("run", "materialize the whole demo graph"),
                            ("serve", "serve the demo source on 127.0.0.1"),
                            ("ui", "serve the demo source and start dagster dev")):
        sub = demo_commands.add_parser(name, help=help_text)
        sub.add_argument("--home", type=Path, default=None,
                         help="data folder (default $DATASET_ASSETS_HOME or ./.dataset_assets_home)")
        sub.add_argument("--port", type=int, default=DEFAULT_DEMO_PORT, help="demo source port on 127.0.0.1")
        if name == "ui":
            sub.add_argument("--ui-port", type=int, default=3000, help="dagster webserver port")


def run_demo(args: argparse.Namespace) -> int:
    # Dagster is imported only here, so `dataset-assets download` starts quickly.
    from dataset_assets.defs.resources import default_home

    ports = {"--port": args.port, "--ui-port": getattr(args, "ui_port", 0)}
    for flag, port in ports.items():
        if not 0 <= port <= 65535:
            raise InvalidInputError("command line", flag, port, "must be a port number (0-65535; 0: any free one)")
    home = (args.home or Path(default_home())).resolve()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InvalidInputError("command line", "--home", str(home), f"cannot be created ({error.strerror})") from error
    if args.demo_command == "run":
        return demo_run(home, args.port)
    if args.demo_command == "serve":
        return demo_serve(home, args.port)
    return demo_ui(home, args.port, args.ui_port)
