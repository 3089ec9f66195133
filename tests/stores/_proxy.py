"""A loopback TCP proxy for fault tests: cut a server off, or lose one answer."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable


class Proxy:
    """A TCP proxy on a free loopback port in front of the server, which a test
    can cut (every connection dropped, new ones closed at once) and restore,
    or arm to lose one answer: the server gets the request and commits, and
    the client's connection is cut instead of getting the reply."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.up = True
        self.closed = False
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.lose_marker: bytes | None = None
        self.then: Callable[[], object] | None = None
        self.errors: list[BaseException] = []
        self.lost = 0
        self._losing: set[socket.socket] = set()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closed:
            ready, _, _ = select.select([self.listener], [], [], 0.1)
            if not ready:
                continue
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def lose_next_answer(self, marker: bytes, then: Callable[[], object] | None = None) -> None:
        """Cut the connection instead of passing on the answer to the next
        request that contains ``marker`` (e.g. ``b"EVALSHA"``).

        ``then`` runs once the server has answered (so the request has
        committed) and before the connection is cut, so before the client can
        retry: another client's call made there lands between the original and
        its retry. An exception it raises is kept in ``errors``."""
        with self.lock:
            self.then = then
            self.lose_marker = marker

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    if self.lose_marker is not None and self.lose_marker in data:
                        # a request: its answer, coming back from dst, is lost
                        self.lose_marker = None
                        self._losing.add(dst)
                        losing = False
                    else:
                        losing = src in self._losing
                        self._losing.discard(src)
                if losing:
                    self.lost += 1
                    then, self.then = self.then, None
                    if then is not None:
                        try:
                            then()
                        except BaseException as exc:  # the test reports it
                            self.errors.append(exc)
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.closed = True
        self.thread.join(timeout=5)
        self.listener.close()
