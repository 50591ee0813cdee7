"""The `dataset-assets` console script.

`dataset-assets download ...` downloads an ATEK-style URL manifest with the ATEK downloader's
flags and outputs (see `cli.download`); `dataset-assets demo run|serve|ui` runs the embedded demo;
`dataset-assets versioned download|prepare|pack|publish` handles date-versioned datasets (see `cli.versioned`).
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from dataset_assets.cli.demo import DEMO_URL_ENV, add_demo_commands, run_demo
from dataset_assets.cli.download import add_download_command, run_download
from dataset_assets.cli.versioned import add_versioned_commands, run_versioned
from dataset_assets.core.errors import DatasetAssetsError
from dataset_assets.core.redaction import redact_text

__all__ = ["DEMO_URL_ENV", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dataset-assets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add_download_command(commands)
    add_demo_commands(commands)
    add_versioned_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        runners = {"download": run_download, "versioned": run_versioned}
        return runners.get(args.command, run_demo)(args)
    except DatasetAssetsError as error:
        print(f"error: {redact_text(str(error))}", file=sys.stderr)
        return 2
