"""A loopback TCP proxy for fault tests: cut a server off, lose one answer, or
freeze (a server that still accepts and acknowledges but never answers, like
a ``SIGSTOP``ped one).

It forwards bytes, so it serves any protocol sent in the clear: Redis's RESP
and PostgreSQL's wire protocol (connect with ``sslmode=disable``, or the
request is encrypted and no marker can be found in it)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable

#: PostgreSQL's ReadyForQuery message ('Z', length 5), which the server sends
#: after the statement's transaction has ended (committed, in autocommit).
PG_READY_FOR_QUERY = b"Z\x00\x00\x00\x05"


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
        self.lose_until: bytes | None = None
        self.then: Callable[[], object] | None = None
        self.errors: list[BaseException] = []
        self.lost = 0
        self._losing: dict[socket.socket, bytes | None] = {}
        self.flowing = threading.Event()  # cleared while frozen
        self.flowing.set()
        self._thaw_timer: threading.Timer | None = None
        self.freeze_marker: tuple[bytes, float] | None = None
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
            # The 2 s were for connecting: a quiet server (an idle pooled
            # connection, a frozen proxy) must not be cut by a read timeout.
            server.settimeout(None)
            with self.lock:
                # Checked again under the lock that cut() takes: a connection
                # accepted while cut() ran (a pool opening one in the
                # background) would otherwise outlive the cut, and a retry
                # meant to find the server unreachable would get through.
                if not self.up:
                    client.close()
                    server.close()
                    continue
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def lose_next_answer(
        self,
        marker: bytes,
        then: Callable[[], object] | None = None,
        *,
        until: bytes | None = None,
    ) -> None:
        """Cut the connection instead of passing on the answer to the next
        request that contains ``marker`` (e.g. ``b"EVALSHA"``).

        ``then`` runs once the server has answered (so the request has
        committed) and before the connection is cut, so before the client can
        retry: another client's call made there lands between the original and
        its retry. An exception it raises is kept in ``errors``.

        With ``until``, the answer is swallowed until those bytes have come
        from the server, and only then is the connection cut: for PostgreSQL,
        ``until=PG_READY_FOR_QUERY`` (see :meth:`lose_next_pg_answer`) waits
        for the server to have ended the statement's transaction, so the lost
        answer is one of a committed statement, never an aborted one."""
        with self.lock:
            self.then = then
            self.lose_until = until
            self.lose_marker = marker

    def lose_next_pg_answer(self, marker: bytes, then: Callable[[], object] | None = None) -> None:
        """:meth:`lose_next_answer` for PostgreSQL: the answer to the next
        query containing ``marker`` (e.g. ``b".claim("``) is lost after the
        server has committed it."""
        self.lose_next_answer(marker, then, until=PG_READY_FOR_QUERY)

    def freeze(self, most: float) -> None:
        """Stop forwarding, both ways, on every connection, new ones included
        (they are accepted, and their bytes held): what the client sees of a
        frozen server. Bytes received meanwhile are held, in order, and
        forwarded on :meth:`thaw`, which happens by itself after ``most``
        seconds (so that a test of code that would wait forever ends)."""
        self.flowing.clear()
        timer = threading.Timer(most, self.thaw)
        timer.daemon = True
        self._thaw_timer = timer
        timer.start()

    def freeze_on(self, marker: bytes, most: float) -> None:
        """:meth:`freeze` as the next request containing ``marker`` arrives:
        that request is held too, so the server freezes mid-session, after
        the client has connected."""
        with self.lock:
            self.freeze_marker = (marker, most)

    def thaw(self) -> None:
        """Forward again what was held, and everything after it."""
        timer, self._thaw_timer = self._thaw_timer, None
        if timer is not None:
            timer.cancel()
        self.flowing.set()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        seen = b""  # the tail of what a swallowed answer has sent so far
        try:
            while True:
                data = src.recv(65536)
                with self.lock:
                    freeze, self.freeze_marker = self.freeze_marker, None
                    if freeze is not None and freeze[0] not in data:
                        self.freeze_marker, freeze = freeze, None
                if freeze is not None:
                    self.freeze(freeze[1])
                self.flowing.wait()  # frozen: hold the bytes
                if not data:
                    break
                with self.lock:
                    if self.lose_marker is not None and self.lose_marker in data:
                        # a request: its answer, coming back from dst, is lost
                        self.lose_marker = None
                        self._losing[dst] = self.lose_until
                        losing = False
                    elif src in self._losing:
                        until = self._losing[src]
                        seen = (seen + data)[-4096:]
                        losing = until is None or until in seen
                        if losing:
                            del self._losing[src]
                        else:
                            continue  # swallowed: wait for the rest of the answer
                    else:
                        losing = False
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
        with self.lock:
            self.up = False
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.thaw()
        self.cut()
        self.closed = True
        self.thread.join(timeout=5)
        self.listener.close()
