"""Hand-made tar headers for tests of what a tar library would refuse to write."""
from __future__ import annotations

import tarfile


def header_with_size_field(name: str, size_field: bytes) -> bytes:
    """A ustar header for `name` whose 12-byte size field holds exactly `size_field`, checksum valid."""
    block = bytearray(tarfile.TarInfo(name).tobuf(tarfile.USTAR_FORMAT)[:tarfile.BLOCKSIZE])
    block[124:136] = size_field
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)
