"""A loopback port whose connects hang: the kernel drops their SYNs, as a firewalled host does."""
from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def server_that_never_accepts() -> Iterator[int]:
    """The port of a loopback listener whose accept queue is full: Linux drops the SYN of every further connect,
    which then hangs until its timeout."""
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            yield port


def connecting_to(port: int) -> bool:
    """Whether a socket on this machine is sending its SYN to 127.0.0.1:`port` (state 02 in /proc/net/tcp)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(row.split()[2] == f"0100007F:{port:04X}" and row.split()[3] == "02" for row in rows)
