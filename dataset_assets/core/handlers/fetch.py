"""Fetch a handler dataset's artifacts once into its artifacts folder, verified by sha256.

Downloads go through `core.transfer` (its one HTTP client, retry policy, resumable `.part` files
and atomic rename). This module adds what artifacts need on top: the catalog's URL and sha256
overrides (a mirror, a pin where the provider publishes no checksum), artifacts a person must
place by hand, and sha256 verification. A file on disk whose sha256 matches is never fetched
again, and `verify_artifacts` checks the files without any network, so conversion runs offline.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dataset_assets.core.catalog import HandlerSource
from dataset_assets.core.errors import DatasetAssetsError
from dataset_assets.core.handlers.base import MANUAL, Artifact, ArtifactError, Handler
from dataset_assets.core.manifest import ManifestEntry
from dataset_assets.core.redaction import get_logger, redact_url
from dataset_assets.core.storage import digest_file
from dataset_assets.core.transfer import TransferSettings, transfer_entries
from dataset_assets.core.urls import url_below

logger = get_logger(__name__)


class ArtifactFetchError(DatasetAssetsError):
    """One or more artifacts could not be fetched or verified; the message lists every one."""

    def __init__(self, dataset: str, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(f"{dataset}: {len(self.problems)} artifact problem(s): " + "; ".join(self.problems))


@dataclass(frozen=True)
class ResolvedArtifact:
    """An artifact with the catalog's overrides applied and its place on disk."""

    artifact: Artifact
    url: str
    sha256: str | None
    path: Path

    @property
    def manual(self) -> bool:
        return self.url == MANUAL


@dataclass(frozen=True)
class ArtifactFile:
    """A verified artifact file; `status` is kept, downloaded, resumed or verified."""

    name: str
    path: Path
    sha256: str
    size: int
    status: str


@dataclass(frozen=True)
class ArtifactReport:
    files: tuple[ArtifactFile, ...]

    def paths(self) -> dict[str, Path]:
        return {file.name: file.path for file in self.files}

    @property
    def data_version(self) -> str:
        """Equal artifact contents give equal versions, wherever they were fetched from."""
        listing = "".join(f"{file.name}:{file.sha256};" for file in self.files)
        return hashlib.sha256(listing.encode()).hexdigest()[:16]

    def metadata(self) -> dict[str, object]:
        return {
            "artifacts": len(self.files),
            "bytes": sum(file.size for file in self.files),
            "status": {file.name: file.status for file in self.files},
            "sha256": {file.name: file.sha256 for file in self.files},
            "folder": str(self.files[0].path.parent) if self.files else "",
        }


def resolve_artifacts(handler: Handler, source: HandlerSource, folder: Path) -> tuple[ResolvedArtifact, ...]:
    """Apply the catalog: a per-artifact URL beats `base_url/<filename>`, which beats the handler's URL."""
    resolved = []
    for artifact in handler.artifacts:
        pin = source.artifacts.get(artifact.name)
        url = artifact.url
        if source.base_url is not None:
            url = url_below(source.base_url, artifact.filename)
        if pin is not None and pin.url is not None:
            url = pin.url
        sha256 = pin.sha256 if pin is not None and pin.sha256 is not None else artifact.sha256
        resolved.append(ResolvedArtifact(artifact, url, sha256, folder / artifact.filename))
    return tuple(resolved)


def _unpinned(dataset: str, item: ResolvedArtifact) -> ArtifactError:
    observed = f"; the file now at {item.path} has sha256 {digest_file(item.path).sha256}" if item.path.exists() else ""
    return ArtifactError(item.artifact.name, None, "has no known sha256 (the provider publishes none): pin it in the "
                                                   f"catalog as 'datasets.{dataset}.artifacts.{item.artifact.name}"
                                                   f".sha256'{observed}")


def _missing_manual(item: ResolvedArtifact) -> ArtifactError:
    # An artifact the catalog (not the handler) made manual has no instructions, but the handler's URL says where.
    how = item.artifact.instructions or f"download {item.artifact.url}"
    return ArtifactError(item.artifact.name, None, f"must be placed by hand: {how}; then put the file at "
                                                   f"{item.path} (sha256 {item.sha256})")


def _existing(dataset: str, item: ResolvedArtifact) -> ArtifactFile | None:
    """The verified file already on disk, None if it must be downloaded; raises if it cannot be."""
    if item.sha256 is None:
        raise _unpinned(dataset, item)
    if not item.path.exists():
        if item.manual:
            raise _missing_manual(item)
        return None
    digest = digest_file(item.path)
    if digest.sha256 == item.sha256:
        return ArtifactFile(item.artifact.name, item.path, digest.sha256, digest.size, "kept")
    if item.manual:
        raise ArtifactError(item.artifact.name, None, f"the file at {item.path} has sha256 {digest.sha256}, "
                                                      f"expected {item.sha256}: replace it with the right file")
    logger.warning("%s: sha256 %s does not match %s; fetching it again", item.path, digest.sha256, item.sha256)
    item.path.unlink()
    return None


def _mismatch(item: ResolvedArtifact, sha256: str) -> str:
    return str(ArtifactError(item.artifact.name, None, f"downloaded from {redact_url(item.url)} has sha256 {sha256}, "
                                                       f"expected {item.sha256}; the file was deleted"))


def _transfer_and_check(dataset: str, items: list[ResolvedArtifact], folder: Path, settings: TransferSettings
                        ) -> tuple[list[ArtifactFile], list[str], list[tuple[ResolvedArtifact, str]]]:
    """Transfer `items` concurrently through core.transfer, then check the sha256 of each file that arrived.

    Returns the verified files, the problems (failed downloads; fresh downloads with the wrong sha256,
    deleted) and the resumed items with the sha256 they had instead (deleted too: their held bytes were bad).
    """
    entries = [ManifestEntry(dataset, folder.name, item.artifact.filename, item.url) for item in items]
    report = transfer_entries(entries, {dataset: folder.parent}, settings)
    problems = [f"download failed: {path}: {why}" for path, why in report.failures.items()]
    problems += [f"download interrupted: {path} (held bytes are kept for the next run)" for path in report.interrupted]
    by_filename = {result.relative_path.rpartition("/")[2]: result for result in report.results}
    files, stale = [], []
    for item in items:
        result = by_filename.get(item.artifact.filename)
        if result is None:
            continue
        if result.sha256 == item.sha256:
            files.append(ArtifactFile(item.artifact.name, item.path, result.sha256, result.size, result.status))
            continue
        item.path.unlink(missing_ok=True)
        if result.status == "resumed":
            stale.append((item, result.sha256))
        else:
            problems.append(_mismatch(item, result.sha256))
    return files, problems, stale


def _download(dataset: str, items: list[ResolvedArtifact], folder: Path,
              settings: TransferSettings) -> tuple[list[ArtifactFile], list[str]]:
    """Download `items`, checking each file that arrives: a failed download does not skip the others' checks,
    and a file with the wrong sha256 is deleted and reported, never left at its final path.

    A resumed file with the wrong sha256 is downloaded once more from byte 0: the bytes held from an
    earlier run may be damaged (a crash) or predate a change upstream the server did not signal.
    """
    files, problems, stale = _transfer_and_check(dataset, items, folder, settings)
    if stale:
        again, more, still_wrong = _transfer_and_check(dataset, [item for item, _ in stale], folder, settings)
        files, problems = files + again, problems + more + [_mismatch(item, sha256) for item, sha256 in still_wrong]
    return files, problems


def _in_handler_order(handler: Handler, files: Iterable[ArtifactFile]) -> ArtifactReport:
    by_name = {file.name: file for file in files}
    return ArtifactReport(tuple(by_name[artifact.name] for artifact in handler.artifacts))


def fetch_artifacts(dataset: str, handler: Handler, source: HandlerSource, folder: Path,
                    settings: TransferSettings = TransferSettings()) -> ArtifactReport:
    """Make every artifact of `handler` present and verified in `folder`, downloading only what is missing.

    Every artifact is attempted even when some fail (verified bytes accumulate); then one
    `ArtifactFetchError` lists every problem: unpinned checksums, manual files to place, failed
    downloads, checksum mismatches.
    """
    folder.mkdir(parents=True, exist_ok=True)
    files: list[ArtifactFile] = []
    problems: list[str] = []
    wanted: list[ResolvedArtifact] = []
    for item in resolve_artifacts(handler, source, folder):
        try:
            existing = _existing(dataset, item)
        except ArtifactError as error:
            problems.append(str(error))
            continue
        if existing is None:
            wanted.append(item)
        else:
            files.append(existing)
    if wanted:
        downloaded, failed = _download(dataset, wanted, folder, settings)
        files += downloaded
        problems += failed
    if problems:
        raise ArtifactFetchError(dataset, problems)
    return _in_handler_order(handler, files)


def verify_artifacts(dataset: str, handler: Handler, source: HandlerSource, folder: Path) -> ArtifactReport:
    """Check every artifact file in `folder` against its sha256 without touching the network."""
    files: list[ArtifactFile] = []
    problems: list[str] = []
    for item in resolve_artifacts(handler, source, folder):
        if item.sha256 is None:
            problems.append(str(_unpinned(dataset, item)))
        elif not item.path.exists():
            problems.append(str(ArtifactError(item.artifact.name, None, f"is missing at {item.path}: materialize "
                                                                        f"{dataset}/artifacts first")))
        else:
            digest = digest_file(item.path)
            if digest.sha256 != item.sha256:
                problems.append(str(ArtifactError(item.artifact.name, None, f"the file at {item.path} has sha256 "
                                                                            f"{digest.sha256}, expected {item.sha256}; "
                                                                            f"materialize {dataset}/artifacts again")))
            else:
                files.append(ArtifactFile(item.artifact.name, item.path, digest.sha256, digest.size, "verified"))
    if problems:
        raise ArtifactFetchError(dataset, problems)
    return _in_handler_order(handler, files)
