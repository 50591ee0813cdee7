"""`dataset-assets download`: the ATEK data store downloader's flags and outputs, on the transfer engine.

Sequences of `--config-name` are sorted, shuffled with `--random-seed`, cut to
`--max-num-sequences` and split by `--train-val-split-ratio` or `--train-val-split-json-path`
(`core.splits`, ATEK's semantics). Without `--download-wds-to-local` the split is published as
`streamable_{train,validation,all}_tars.yaml` listing the signed URLs. With it, every file of the
split is downloaded, resumed and verified into `--output-folder-path` (or streamed to
`--destination s3://bucket/prefix`), and `local_{train,validation,all}_tars.yaml` list the
verified files as `<sequence>/<file>`. A summary says what was downloaded, resumed, skipped and
what failed and why; the exit status is 1 if any file failed (or, with an S3 destination, the YAMLs
could not be put beside the files), 2 on bad input. Ctrl-C stops the files in flight, keeping their
bytes for the next run, prints the summary without writing the YAMLs, and exits with status 130. A
second Ctrl-C quits at once (status 130): for an S3 call (boto3) or a host name lookup that hangs,
which the orderly stop would wait for until their timeouts. What is on disk then is what a killed
run leaves, and the same command resumes from it.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx

from dataset_assets.cli.flags import check_multipart_flags
from dataset_assets.cli.progress import RichTransferProgress
from dataset_assets.core.errors import InvalidInputError
from dataset_assets.core.manifest import ManifestEntry, UrlManifest
from dataset_assets.core.redaction import redact_text
from dataset_assets.core.s3 import MIB, MultipartSettings, S3Destination, S3Url, is_s3_url, make_s3_client
from dataset_assets.core.splits import Split, load_split_json, split_sequences, write_split_yamls
from dataset_assets.core.storage import Destination, LocalDestination, StorageError
from dataset_assets.core.transfer import (
    DownloadReport,
    Refresh,
    TransferSettings,
    fetch_manifest,
    make_client,
    transfer_entries,
)


def add_download_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("download", help="download an ATEK-style URL manifest (resumable, verified)",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-name", required=True, help="config of the manifest to download")
    parser.add_argument("--input-json-path", required=True,
                        help="the URL manifest JSON; an http(s) URL is fetched again for fresh links when they expire")
    parser.add_argument("--output-folder-path", required=True, type=Path, help="folder for the YAMLs and files")
    parser.add_argument("--download-wds-to-local", action="store_true", help="download the files (else: URL YAMLs)")
    parser.add_argument("--max-num-sequences", type=int, default=None, help="keep the first K shuffled sequences")
    parser.add_argument("--train-val-split-ratio", type=float, default=0.9, help="share of sequences for training")
    parser.add_argument("--random-seed", type=int, default=42, help="seed of the sequence shuffle")
    parser.add_argument("--train-val-split-json-path", type=Path, default=None,
                        help='explicit split {"train_sequences": [...], "val_sequences": [...]}')
    parser.add_argument("--destination", default=None, help="s3://bucket/prefix to stream files to instead")
    parser.add_argument("--workers", type=int, default=TransferSettings.workers, help="files in flight")
    parser.add_argument("--part-size-mib", type=int, default=MultipartSettings.part_size // MIB,
                        help="S3 multipart part size (MiB, at least 5)")
    parser.add_argument("--part-concurrency", type=int, default=MultipartSettings.concurrency,
                        help="S3 parts uploaded at once")
    parser.add_argument("--s3-endpoint-url", default=None,
                        help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL or AWS)")


def select_split(sequences: list[str], args: argparse.Namespace) -> Split:
    """ATEK's order: shuffle and cut to K sequences, then split by ratio or by the explicit JSON."""
    if args.train_val_split_json_path is None:
        return split_sequences(sequences, args.train_val_split_ratio, args.random_seed, args.max_num_sequences)
    kept = split_sequences(sequences, 1.0, args.random_seed, args.max_num_sequences).all
    return load_split_json(args.train_val_split_json_path, kept)


def _check_args(args: argparse.Namespace) -> None:
    """Name the flag in every error, rather than the core parameter it feeds."""
    if args.workers < 1:
        raise InvalidInputError("command line", "--workers", args.workers, "must be at least 1")
    if args.train_val_split_json_path is None and not 0 <= args.train_val_split_ratio <= 1:
        raise InvalidInputError("command line", "--train-val-split-ratio", args.train_val_split_ratio,
                                "must be a number between 0 and 1")
    check_multipart_flags(args.part_size_mib, args.part_concurrency, "--part-concurrency")
    if args.destination is not None and not args.download_wds_to_local:
        raise InvalidInputError("command line", "--destination", args.destination,
                                "needs --download-wds-to-local (streamable YAMLs only list URLs)")


def _destination(args: argparse.Namespace) -> Destination:
    if args.destination is None:
        return LocalDestination(args.output_folder_path)
    if not is_s3_url(args.destination):
        raise InvalidInputError("command line", "--destination", args.destination, "must look like s3://bucket/prefix")
    settings = MultipartSettings(args.part_size_mib * MIB, args.part_concurrency)
    client = make_s3_client(args.s3_endpoint_url, max_pool_connections=args.workers + args.part_concurrency + 4)
    return S3Destination(client, S3Url.parse(args.destination, "command line", "--destination"), settings)


def _make_output_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InvalidInputError("command line", "--output-folder-path", str(out),
                                f"cannot be created ({error.strerror})") from error


def _refresh(location: str, client: httpx.Client) -> Refresh | None:
    if not location.startswith(("http://", "https://")):
        return None
    return lambda stop: fetch_manifest(location, client, stop=stop)[0]


def _write_streamable(manifest: UrlManifest, config: str, split: Split, out: Path) -> dict[str, Path]:
    urls = {sequence: [entry.url for entry in manifest.entries(config, sequence)] for sequence in split.all}
    return write_split_yamls(out, split, urls, "streamable")


def _write_local(entries: list[ManifestEntry], report: DownloadReport, split: Split, out: Path) -> dict[str, Path]:
    """`local_*` YAMLs listing verified files only."""
    verified = {result.key for result in report.results}
    tars: dict[str, list[str]] = {sequence: [] for sequence in split.all}
    for entry in entries:
        if f"{entry.config}/{entry.relative_path}" in verified:
            tars[entry.sequence].append(entry.relative_path)
    return write_split_yamls(out, split, tars, "local")


def _put_beside_files(written: dict[str, Path], destination: Destination) -> bool:
    """With an S3 destination, put the YAMLs beside the files; False (the error printed) if the bucket refuses."""
    if not isinstance(destination, S3Destination):
        return True
    for path in written.values():
        try:
            destination.put_bytes(path.name, path.read_bytes())
        except StorageError as error:
            print(f"error: {redact_text(str(error))} (the YAMLs are in {path.parent}; the same command puts them "
                  "again without fetching verified files)", file=sys.stderr)
            return False
    return True


@contextlib.contextmanager
def _stop_on_ctrl_c() -> Iterator[threading.Event]:
    """Within the block, SIGINT sets the yielded event instead of raising KeyboardInterrupt wherever the main
    thread happens to be, so the transfer stops in order and still reports what it did. A second SIGINT
    ends the process at once: an S3 call (boto3) or a host name lookup that hangs cannot be ended from
    Python, and would hold the orderly stop until its timeouts."""
    stop = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        if stop.is_set():
            print("interrupted again: quitting now; run the same command again to resume", file=sys.stderr,
                  flush=True)
            os._exit(130)
        stop.set()
        print("stopping the files in flight (Ctrl-C again quits at once)", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _print_summary(report: DownloadReport, destination: Destination) -> None:
    print(f"{report.summary()} -> {destination.describe()}")
    for key, why in report.failures.items():
        print(f"  failed {key}: {why}")


def _print_interrupted(destination: Destination) -> None:
    kept = ("bytes held in .part files are kept, " if isinstance(destination, LocalDestination)
            else "uploaded parts are kept and continued, ")
    print(f"interrupted: run the same command again to resume ({kept}verified files are not fetched again); "
          "the split YAMLs were not written")


def run_download(args: argparse.Namespace) -> int:
    _check_args(args)
    try:
        return _download(args)
    except KeyboardInterrupt:  # before the transfer or while the YAMLs are written (each is written atomically)
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


def _download(args: argparse.Namespace) -> int:
    settings = TransferSettings(workers=args.workers)
    with make_client(settings) as client:
        manifest, _ = fetch_manifest(args.input_json_path, client)
        manifest.require_configs([args.config_name])
        split = select_split(manifest.sequences(args.config_name), args)
        out: Path = args.output_folder_path
        _make_output_folder(out)
        if not args.download_wds_to_local:
            written = _write_streamable(manifest, args.config_name, split, out)
            print(f"{len(split.all)} sequences ({len(split.train)} train, {len(split.validation)} validation): "
                  + ", ".join(str(path) for path in written.values()))
            return 0
        destination = _destination(args)
        entries = [entry for sequence in split.all for entry in manifest.entries(args.config_name, sequence)]
        sizes = {f"{entry.config}/{entry.relative_path}": entry.size for entry in entries}
        with RichTransferProgress(sizes) as progress, _stop_on_ctrl_c() as stop:
            report = transfer_entries(entries, {args.config_name: destination}, settings, progress, client,
                                      _refresh(args.input_json_path, client), stop)
    if report.interrupted:
        _print_summary(report, destination)
        _print_interrupted(destination)
        return 130
    written = _write_local(entries, report, split, out)
    _print_summary(report, destination)
    # Flushed so that the summary comes before any error about the YAMLs, also where both streams go to one file.
    print("wrote " + ", ".join(str(path) for path in written.values()), flush=True)
    put = _put_beside_files(written, destination)
    return 0 if report.ok and put else 1
