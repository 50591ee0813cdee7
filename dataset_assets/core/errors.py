"""Exception classes shared by the core.

Every error about bad input names where the input came from (a file path or a redacted URL),
the field inside it, and the offending value, so a user can fix it without reading code.
"""
from __future__ import annotations

from typing import Any

from dataset_assets.core.redaction import redact_text


class DatasetAssetsError(Exception):
    """Base class of every error this project raises on purpose."""


class InvalidInputError(DatasetAssetsError):
    """A value in a user-supplied file is missing, of the wrong type or out of range."""

    def __init__(self, source: str, field: str, value: Any, problem: str) -> None:
        self.source = redact_text(str(source))
        self.field = field
        self.value = value
        self.problem = problem
        shown = redact_text(repr(value))
        if len(shown) > 200:
            shown = shown[:200] + "..."
        super().__init__(f"{self.source}: field '{field}' {problem} (got {shown})")


class CatalogError(InvalidInputError):
    """The dataset catalog YAML is malformed."""


class ManifestError(InvalidInputError):
    """A URL manifest (ATEK data store JSON) is malformed or lacks what the catalog asks for."""


class SplitError(InvalidInputError):
    """A train/validation split definition is malformed."""


class InputChangedError(DatasetAssetsError):
    """A file no longer holds the bytes it was verified to hold, so nothing may be derived from it."""

    def __init__(self, path: str, found: str, expected: str) -> None:
        self.path = path
        super().__init__(f"{path}: holds {found}, not the {expected} verified when it was downloaded")


class UnsafeArchiveError(DatasetAssetsError):
    """An archive member would escape its folder or is not a regular file."""

    def __init__(self, archive: str, member: str, reason: str) -> None:
        self.archive = archive
        self.member = member
        super().__init__(f"{archive}: member {member!r} rejected: {reason}")
