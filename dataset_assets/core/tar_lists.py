"""Split YAMLs (`{"tars": {sequence: [path or URL, ...]}}`) as tar lists, without importing torch.

The Dagster layer checks split YAMLs with these (so its processes never pay for torch);
`core.loading` builds datasets on them.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from dataset_assets.core.errors import DatasetAssetsError, SplitError
from dataset_assets.core.redaction import redact_url

URL_SCHEMES = frozenset({"http", "https", "s3", "gs"})


def url_scheme(entry: str) -> str:
    """The lowercased scheme of a tar-list entry ("" for a path); a URL that cannot be parsed is an error."""
    try:
        return urlsplit(entry).scheme.lower()
    except ValueError as error:  # urllib's message (e.g. "Invalid IPv6 URL") names neither the entry nor why
        raise DatasetAssetsError(f"{redact_url(entry)}: not a valid URL ({error})") from error


def is_url(entry: str) -> bool:
    """Whether a tar-list entry is kept as a URL rather than resolved as a path."""
    return url_scheme(entry) in URL_SCHEMES


def _read_yaml(path: Path) -> object:
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except (OSError, UnicodeDecodeError) as error:
        raise SplitError(str(path), "(file)", str(path), f"cannot be read ({error})") from error
    except yaml.YAMLError as error:
        raise SplitError(str(path), "(document)", str(error).splitlines()[0], "is not valid YAML") from error


def _sequence_entries(path: Path, sequence: object, entries: object) -> list[str]:
    if not isinstance(entries, list):
        raise SplitError(str(path), f"tars.{sequence}", entries, "must be a list of tar paths or URLs")
    for index, entry in enumerate(entries):
        if not isinstance(entry, str) or not entry:
            raise SplitError(str(path), f"tars.{sequence}[{index}]", entry, "must be a non-empty string")
    return entries


def load_tars_by_sequence(yaml_path: str | Path) -> dict[str, list[str]]:
    """`{sequence: [tar, ...]}` of a split YAML; URLs kept, paths made absolute against the YAML's folder."""
    path = Path(yaml_path)
    document = _read_yaml(path)
    if not isinstance(document, dict) or "tars" not in document:
        raise SplitError(str(path), "tars", document, "is required: the YAML must be a mapping with a 'tars' key")
    sequences = document["tars"]
    if not isinstance(sequences, dict):
        raise SplitError(str(path), "tars", sequences, "must map sequence names to lists of tars")
    folder = os.path.dirname(os.path.abspath(path))
    return {
        str(sequence): [
            entry if is_url(entry) else os.path.abspath(os.path.join(folder, entry))
            for entry in _sequence_entries(path, sequence, entries)
        ]
        for sequence, entries in sequences.items()
    }


def load_yaml_and_extract_tar_list(yaml_path: str | Path) -> list[str]:
    """All tars of a `{"tars": {sequence: [path or URL, ...]}}` YAML, in file order.

    URLs (http, https, s3, gs) are kept as they are; any other entry is joined to the YAML's
    folder and returned as an absolute path, so a `pipe:` entry can never reach a shell.
    """
    return [tar for tars in load_tars_by_sequence(yaml_path).values() for tar in tars]


def missing_tars(yaml_path: str | Path) -> list[str]:
    """Local entries of a split YAML that are not existing files (URLs are not fetched)."""
    return [tar for tar in load_yaml_and_extract_tar_list(yaml_path) if not is_url(tar) and not os.path.isfile(tar)]


def split_overlap(train_yaml: str | Path, validation_yaml: str | Path) -> list[str]:
    """Sequences or tars listed in both split YAMLs (empty when the split is clean)."""
    train, validation = load_tars_by_sequence(train_yaml), load_tars_by_sequence(validation_yaml)
    both = sorted(set(train) & set(validation))
    train_tars = {tar for tars in train.values() for tar in tars}
    return both + sorted({tar for tars in validation.values() for tar in tars} & train_tars)
