"""A loopback TCP proxy that can cut connections after a number of bytes from the server.

moto's S3 server has no fault injection of its own; put this proxy in front of it and a client
sees a real connection lost mid-body, as over the internet.
"""
from __future__ import annotations

import socket
import threading
from types import TracebackType


class DroppingProxy:
    """Relay 127.0.0.1:`port` to `upstream`; `drop_after(n)` cuts the next connections after n bytes down."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._lock = threading.Lock()
        self._drops: list[int] = []
        self.dropped = 0
        self._thread = threading.Thread(target=self._accept, name="dropping-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def drop_after(self, nbytes: int, times: int = 1) -> None:
        """Cut each of the next `times` connections once `nbytes` bytes went from the server to the client."""
        with self._lock:
            self._drops.extend([nbytes] * times)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # shut down by `__exit__`
                return
            server = socket.create_connection(self._upstream)
            with self._lock:
                limit = self._drops.pop(0) if self._drops else None
            threading.Thread(target=self._relay, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._relay, args=(server, client, limit), daemon=True).start()

    def _relay(self, source: socket.socket, target: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := source.recv(65536 if limit is None else min(65536, limit - sent)):
                target.sendall(data)
                sent += len(data)
                if limit is not None and sent >= limit:
                    with self._lock:
                        self.dropped += 1
                    break
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()

    def __enter__(self) -> DroppingProxy:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked `accept`, which a close alone does not
        self._listener.close()
        self._thread.join()
