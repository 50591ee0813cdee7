"""`dataset-assets versioned download|prepare|pack|publish`: one version of a `kind: versioned` dataset.

Every action works on the version folder `<path>/<dataset>/<version>/` (default path
`~/.dataset_assets`), laid out as the seed lays it out: `annotations.json.gz`, `assets.tar` +
`assets/`, `features.tar` + `features/`, `holodeck.tar` + `holodeck/`. `download` fetches the
catalog's components of the version (resumable, verified, tarballs extracted safely within the
catalog's `extract` limits, or `--max-extract-bytes`/`--max-extract-members`); `prepare`
merges `assets/<uid>/annotations.json` into `annotations.json.gz`; `pack` writes reproducible
`assets.tar` (and `features.tar` when `features/` exists) without OS junk and per-object metadata;
`publish` uploads the version to the catalog's bucket (or `--destination`) by parallel multipart
upload, verified, skipping objects already there. The catalog is `$DATASET_ASSETS_CATALOG` or the
packaged one.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from dataset_assets.cli.flags import COMMAND_LINE, check_multipart_flags
from dataset_assets.core.catalog import load_catalog
from dataset_assets.core.errors import InvalidInputError
from dataset_assets.core.publish import publish_version, version_destination
from dataset_assets.core.s3 import S3Url
from dataset_assets.core.transfer import TransferSettings, make_client
from dataset_assets.core.versioned import (
    COMPONENT_KINDS,
    DEFAULT_CACHE_ROOT,
    DEFAULT_EXCLUDES,
    DEFAULT_MAX_EXTRACT_BYTES,
    DEFAULT_MAX_EXTRACT_MEMBERS,
    FEATURES_TAR,
    ExtractLimits,
    PublishSpec,
    VersionedSource,
    download_components,
    load_annotations,
    pack_assets,
    prepare_annotations,
    version_folder,
)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="a `kind: versioned` dataset of the catalog")
    parser.add_argument("--version", required=True, help="the date version, e.g. 2023_07_28")
    parser.add_argument("--path", default=DEFAULT_CACHE_ROOT,
                        help=f"cache root: the version folder is <path>/<dataset>/<version> "
                             f"(default {DEFAULT_CACHE_ROOT})")


def add_versioned_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("versioned", help="download, prepare, pack or publish a date-versioned dataset",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True)
    download = actions.add_parser("download", help="download components of one version (verified, extracted)")
    _common(download)
    download.add_argument("--component", action="append", choices=sorted(COMPONENT_KINDS),
                          help="a component to download (repeatable; default: every component of the dataset)")
    download.add_argument("--workers", type=int, default=TransferSettings.workers, help="files in flight")
    download.add_argument("--max-extract-bytes", type=int, default=None,
                          help=f"refuse a tarball whose members add up to more bytes (default: the catalog's "
                               f"extract.max_bytes, else {DEFAULT_MAX_EXTRACT_BYTES})")
    download.add_argument("--max-extract-members", type=int, default=None,
                          help=f"refuse a tarball with more members (default: the catalog's extract.max_members, "
                               f"else {DEFAULT_MAX_EXTRACT_MEMBERS})")
    _common(actions.add_parser("prepare", help="merge assets/<uid>/annotations.json into annotations.json.gz"))
    pack = actions.add_parser("pack", help="pack assets/ (and features/) into reproducible tarballs")
    _common(pack)
    pack.add_argument("--exclude", action="append", default=[],
                      help="another exclude pattern, matching any path component, or with a '/' the path "
                           "below assets/ (repeatable)")
    pack.add_argument("--no-default-excludes", action="store_true",
                      help=f"do not exclude the seed's list ({', '.join(DEFAULT_EXCLUDES)})")
    publish = actions.add_parser("publish", help="upload one version to the bucket (parallel multipart, verified)")
    _common(publish)
    publish.add_argument("--destination", default=None, help="s3://bucket/prefix (default: the catalog's publish)")
    publish.add_argument("--part-size-mib", type=int, default=None, help="multipart part size (MiB, at least 5)")
    publish.add_argument("--concurrency", type=int, default=None, help="parts uploaded at once")
    publish.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint (default: the catalog's)")


def _source(args: argparse.Namespace) -> VersionedSource:
    spec = load_catalog().dataset(args.dataset)
    if spec.versioned is None:
        raise InvalidInputError(COMMAND_LINE, "--dataset", args.dataset, f"is a {spec.kind} dataset, not versioned")
    spec.versioned.require_version(args.version, COMMAND_LINE, "--version")
    return spec.versioned


def _extract_limits(args: argparse.Namespace, limits: ExtractLimits) -> ExtractLimits:
    """The catalog's extract limits with those given on the command line instead."""
    flags = {"max_bytes": ("--max-extract-bytes", args.max_extract_bytes),
             "max_members": ("--max-extract-members", args.max_extract_members)}
    for flag, value in flags.values():
        if value is not None and value < 1:
            raise InvalidInputError(COMMAND_LINE, flag, value, "must be at least 1")
    return dataclasses.replace(limits, **{name: value for name, (_, value) in flags.items() if value is not None})


def _download(args: argparse.Namespace, source: VersionedSource) -> int:
    if args.workers < 1:
        raise InvalidInputError(COMMAND_LINE, "--workers", args.workers, "must be at least 1")
    source = dataclasses.replace(source, extract=_extract_limits(args, source.extract))
    names = [source.component(name, COMMAND_LINE, "--component").kind.name
             for name in args.component or source.components]
    settings = TransferSettings(workers=args.workers)
    with make_client(settings) as client:
        results = download_components(args.dataset, source, args.version, args.path, names, settings, client)
    for result in results:
        extra = f" -> {result.folder}/ ({result.members} files)" if result.folder else ""
        objects = f" ({result.objects} objects)" if result.objects is not None else ""
        print(f"{result.name}: {result.status} {result.path}{objects}{extra}")
    return 0


def _prepare(folder: Path) -> int:
    path = prepare_annotations(folder)
    print(f"wrote {path} ({len(load_annotations(path))} objects)")
    return 0


def _pack(args: argparse.Namespace, folder: Path) -> int:
    excludes = [*([] if args.no_default_excludes else DEFAULT_EXCLUDES), *args.exclude]
    trees = [("assets", folder / "assets.tar")]
    if (folder / "features").is_dir():
        trees.append(("features", folder / FEATURES_TAR))
    for root, tar in trees:
        packed = pack_assets(folder / root, tar, excludes, root=root)
        print(f"wrote {tar}: {len(packed.members)} files, {packed.size} bytes, sha256 {packed.sha256}")
    return 0


def _publish_spec(args: argparse.Namespace, source: VersionedSource) -> PublishSpec:
    spec = source.publish
    if args.destination is not None:
        url = S3Url.parse(args.destination, COMMAND_LINE, "--destination")
        spec = dataclasses.replace(spec or PublishSpec(url.bucket), bucket=url.bucket, prefix=url.prefix)
    if spec is None:
        raise InvalidInputError(COMMAND_LINE, "--destination", None,
                                f"is required: dataset {args.dataset} has no 'publish' section in the catalog")
    check_multipart_flags(args.part_size_mib, args.concurrency, "--concurrency")
    overrides = {"part_size_mib": args.part_size_mib, "concurrency": args.concurrency,
                 "endpoint_url": args.s3_endpoint_url}
    return dataclasses.replace(spec, **{key: value for key, value in overrides.items() if value is not None})


def _publish(args: argparse.Namespace, source: VersionedSource, folder: Path) -> int:
    spec = _publish_spec(args, source)
    report = publish_version(folder, source.published_files(), version_destination(spec, args.dataset, args.version),
                             source.published_pins(args.version))
    for file in report.files:
        print(f"{file.status} {file.uri} ({file.size} bytes, sha256 {file.sha256})")
    print(report.summary())
    return 0


def run_versioned(args: argparse.Namespace) -> int:
    source = _source(args)
    folder = version_folder(args.path, args.dataset, args.version)
    try:
        return _run(args, source, folder)
    except KeyboardInterrupt:  # files are written atomically, an upload is kept with its record: none is half-done
        print("interrupted: run the same command again to resume (bytes held in .part files and uploaded parts "
              "are kept, verified files and published objects are not transferred again)", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, source: VersionedSource, folder: Path) -> int:
    if args.action == "download":
        return _download(args, source)
    if args.action == "prepare":
        return _prepare(folder)
    if args.action == "pack":
        return _pack(args, folder)
    return _publish(args, source, folder)
