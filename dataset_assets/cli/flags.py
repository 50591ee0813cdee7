"""Checks of the S3 multipart flags both `download` and `versioned publish` take, naming the flag as
typed: the core settings would name their own fields, in bytes."""
from __future__ import annotations

from dataset_assets.core.errors import InvalidInputError
from dataset_assets.core.s3 import MAX_PART_SIZE, MIB, MIN_PART_SIZE

COMMAND_LINE = "command line"


def check_multipart_flags(part_size_mib: int | None, concurrency: int | None, concurrency_flag: str) -> None:
    """`--part-size-mib` and the part concurrency flag, each unless None (not given)."""
    if part_size_mib is not None and part_size_mib < MIN_PART_SIZE // MIB:
        raise InvalidInputError(COMMAND_LINE, "--part-size-mib", part_size_mib,
                                f"must be at least {MIN_PART_SIZE // MIB} (the S3 minimum part size)")
    if part_size_mib is not None and part_size_mib > MAX_PART_SIZE // MIB:
        raise InvalidInputError(COMMAND_LINE, "--part-size-mib", part_size_mib,
                                f"must be at most {MAX_PART_SIZE // MIB} (the S3 maximum part size)")
    if concurrency is not None and concurrency < 1:
        raise InvalidInputError(COMMAND_LINE, concurrency_flag, concurrency, "must be at least 1")
