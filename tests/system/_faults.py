"""Fault injectors for the system tests: what goes wrong under load, on purpose.

Each injector does one thing to one process or connection *the test started*
(never a shared server, never a process found by name), and returns what it
did, so a test can report it and check the books against it:

- :func:`kill_worker` sends ``SIGKILL`` to one worker of a running server
  (``tests/system/_servers.py``), whatever it is doing;
  :func:`kill_worker_mid_charge` kills the one worker that is serving a given
  charging call, after its charge is committed and before it answers;
  :func:`wait_for_workers` waits until the master has replaced them.
- :class:`RedisServer` is a private ``redis-server`` on a free loopback port
  that a test can stop (``SIGKILL``: a crash), start again on the same port,
  or pause (``SIGSTOP``: a hung server). It runs with ``appendonly yes`` and
  ``appendfsync always``, the persistence a billing ledger needs: a restart
  keeps every committed charge and balance.
- :func:`terminate_backends` runs ``pg_terminate_backend`` on the PostgreSQL
  backends whose ``application_name`` is the test's own.
- :func:`kill_sqlite_writer` kills the worker that holds a SQLite file's WAL
  write lock (seen in ``/proc/locks``): a worker dying inside its write
  transaction. :func:`hold_sqlite_write_and_die` opens a write transaction of
  its own, writes into it until SQLite has spilled uncommitted pages to the
  WAL, and is killed with ``SIGKILL`` before it commits.
- :class:`FaultRunner` fires faults from a background thread at given times
  into a load, and logs when each fired and what it returned.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "REDIS_CHECK_AOF",
    "REDIS_SERVER",
    "FaultEvent",
    "FaultRunner",
    "RedisServer",
    "hold_sqlite_write_and_die",
    "integrity_check",
    "kill_sqlite_writer",
    "kill_worker",
    "kill_worker_mid_charge",
    "live_pids",
    "serving_workers",
    "terminate_backends",
    "wait_for_workers",
    "wait_gone",
    "with_query",
]

REDIS_SERVER = shutil.which("redis-server")
#: Redis' own tool for a damaged append-only file: ``--fix`` cuts the file
#: before the first command it cannot read, and before the ``MULTI`` of a
#: transaction whose ``EXEC`` is missing (see RedisServer.start).
REDIS_CHECK_AOF = shutil.which("redis-check-aof")


class _HasWorkers(Protocol):
    def worker_pids(self) -> list[int]: ...


# -- the runner -----------------------------------------------------------------------


@dataclass
class FaultEvent:
    """One fault fired: its name, when (seconds after the runner started), how
    long it took, what the injector returned, or the error it raised."""

    name: str
    at: float
    took: float = 0.0
    result: Any = None
    error: BaseException | None = None


@dataclass
class FaultRunner:
    """Fires faults into a load from one background thread.

    ::

        with FaultRunner() as faults:
            faults.at(1.0, "kill worker", lambda: kill_worker(server))
            faults.every(0.5, 4, "terminate", lambda: terminate_backends(url, app))
            result = run_load_sync(...)
        # leaving the block waits for the faults that are due and raises the
        # first error an injector raised

    Times count from ``__enter__``. Faults fire in time order, one at a time;
    a fault due while another one still runs fires right after it.
    :meth:`stop` (or leaving the block) drops the faults not yet due, unless
    ``finish=True`` was given, in which case they still fire on schedule.
    """

    finish: bool = False
    events: list[FaultEvent] = field(default_factory=list)
    _plan: list[tuple[float, int, str, Callable[[], Any]]] = field(default_factory=list)
    _started: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _wake: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def at(self, seconds: float, name: str, fn: Callable[[], Any]) -> None:
        """Fire ``fn`` once, ``seconds`` after the runner started."""
        with self._lock:
            self._plan.append((seconds, len(self._plan), name, fn))
            self._plan.sort(key=lambda item: (item[0], item[1]))
        self._wake.set()

    def every(
        self, interval: float, count: int, name: str, fn: Callable[[], Any], *, start: float = 0.0
    ) -> None:
        """Fire ``fn`` ``count`` times, at ``start + interval``, ``start + 2 *
        interval``, …"""
        for n in range(1, count + 1):
            self.at(start + n * interval, f"{name} #{n}", fn)

    @property
    def started(self) -> float:
        """When the runner started (``time.monotonic()``): event times count from it."""
        return self._started

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def __enter__(self) -> FaultRunner:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="fault-runner", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if exc[0] is None:
            self.raise_errors()

    def stop(self, timeout: float = 60.0) -> None:
        """Wait for the faults that must still fire (all with ``finish=True``,
        else only the one running now), then stop the thread."""
        if not self.finish:
            self._stop.set()
        self._wake.set()
        if self._thread is not None:
            if self.finish:
                # let the plan run out, then stop
                while self._thread.is_alive() and self.pending():
                    self._thread.join(0.05)
                self._stop.set()
                self._wake.set()
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"a fault injector is still running after {timeout} s")

    def pending(self) -> int:
        with self._lock:
            return len(self._plan)

    def raise_errors(self) -> None:
        for event in self.events:
            if event.error is not None:
                raise AssertionError(
                    f"fault {event.name!r} at {event.at:.2f} s failed: {event.error!r}"
                ) from event.error

    def fired(self, prefix: str = "") -> list[FaultEvent]:
        """The events fired so far whose name starts with ``prefix``."""
        return [e for e in self.events if e.name.startswith(prefix)]

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                due = self._plan[0] if self._plan else None
            if due is None:
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            wait = due[0] - self.elapsed()
            if wait > 0:
                self._wake.wait(min(wait, 0.05))
                self._wake.clear()
                continue
            with self._lock:
                self._plan.remove(due)
            event = FaultEvent(name=due[2], at=self.elapsed())
            try:
                event.result = due[3]()
            except BaseException as error:  # reported by raise_errors
                event.error = error
            event.took = self.elapsed() - event.at
            self.events.append(event)


# -- worker processes ------------------------------------------------------------------------


def live_pids(pids: Iterable[int]) -> list[int]:
    """The pids among ``pids`` that still name a running (not zombie) process."""
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if state not in ("Z", "X"):
            alive.append(pid)
    return alive


def kill_worker(
    server: _HasWorkers,
    *,
    sig: int = signal.SIGKILL,
    rng: random.Random | None = None,
    serving: str | None = None,
    timeout: float = 5.0,
) -> int:
    """Send ``sig`` (``SIGKILL`` by default: no handler runs, no ``finally``,
    no refund) to one worker of ``server``, picked by ``rng``. Returns its pid.

    With ``serving`` (the server's base URL), only a worker that holds a
    client's connection is picked (waiting up to ``timeout`` seconds for one),
    so that the kill lands in the middle of a request rather than on a worker
    that is still booting or idle. The worker's in-flight requests end with a
    dropped connection; the charges they made stay ``pending`` until their
    lease ends. The server's master starts a new worker;
    :func:`wait_for_workers` waits for it.
    """
    deadline = time.monotonic() + timeout
    while True:
        pids = live_pids(server.worker_pids())
        if serving is not None:
            port = urllib.parse.urlsplit(serving).port or 80
            pids = serving_workers(pids, port) or ([] if time.monotonic() < deadline else pids)
        if pids:
            break
        if time.monotonic() > deadline:
            raise RuntimeError("the server has no live worker to kill")
        time.sleep(0.002)
    pid = (rng or random).choice(sorted(pids))
    os.kill(pid, sig)
    if sig == signal.SIGKILL:
        wait_gone(pid)
    return pid


def serving_workers(pids: Iterable[int], port: int) -> list[int]:
    """The pids among ``pids`` that hold an established TCP connection
    accepted on ``port`` (a client's request, or a kept-alive connection)."""
    accepted: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                accepted.add(int(fields[9]))
    accepted.discard(0)
    found = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and int(link[8:-1]) in accepted:
                found.append(pid)
                break
    return found


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Wait until the process ``pid`` has exited (it may be a zombie until its
    parent reaps it): a process killed with ``SIGKILL`` still holds its
    sockets and file locks for a moment after the signal."""
    deadline = time.monotonic() + timeout
    while live_pids([pid]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} still runs {timeout} s after it was killed")
        time.sleep(0.005)


def wait_for_workers(
    server: _HasWorkers, count: int, *, gone: Iterable[int] = (), timeout: float = 30.0
) -> list[int]:
    """Wait until ``server`` has ``count`` live workers, none of them in
    ``gone`` (the killed ones); returns their pids. Raises ``TimeoutError``."""
    gone = set(gone)
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in live_pids(server.worker_pids()) if p not in gone]
        if len(pids) >= count:
            return pids
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pids)} of {count} workers after {timeout} s: {pids}")
        time.sleep(0.05)


def _socket_inode(local_port: int, remote_port: int) -> int | None:
    """The inode of the loopback TCP socket ``local_port`` -> ``remote_port``
    (from /proc/net/tcp and tcp6), or None."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], int(fields[9])
            if (
                int(local.rsplit(":", 1)[1], 16) == local_port
                and int(remote.rsplit(":", 1)[1], 16) == remote_port
                and inode
            ):
                return inode
    return None


def _owner_of(inode: int, pids: Iterable[int]) -> int | None:
    """Which of ``pids`` holds the socket with this inode open."""
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


@dataclass
class ProbeKill:
    """What :func:`kill_worker_mid_charge` did: the worker it killed, the
    probe's job, the charge the probe made (``pending`` when it was killed),
    what came back on the probe's connection (nothing), and the jobs of
    earlier attempts that were served before the kill could land (charged
    and confirmed: the caller refunds or counts them)."""

    pid: int
    job_id: str
    charge_id: str
    answer: bytes
    served: list[str] = field(default_factory=list)


class _Ledgerish(Protocol):
    def lookup(self, account: str, job_id: str, *, scope: str = "default") -> Any: ...


class _Served(Exception):
    """The probe's call was answered before the kill."""


def _probe_request(host: str, port: int, path: str, api_key: str, job_id: str) -> bytes:
    body = b'{"text": "a probe the fault test kills mid-call"}'
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        f"X-Api-Key: {api_key}\r\n"
        f"Authorization: Bearer {api_key}\r\n"
        f"X-Job-Id: {job_id}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def kill_worker_mid_charge(
    server: _HasWorkers,
    ledger: _Ledgerish,
    *,
    base_url: str,
    path: str,
    api_key: str,
    account: str,
    job_id: str,
    scope: str = "summarize",
    timeout: float = 20.0,
    attempts: int = 5,
) -> ProbeKill:
    """``SIGKILL`` the worker that is serving a charging call, after the
    charge is committed and before the handler answers.

    A probe sends the first call of job ``job_id`` on a raw socket, finds the
    worker that accepted the connection (``/proc/net/tcp`` and the workers'
    file descriptors), waits (reading the store through ``ledger``) until
    the job is ``pending``, kills that worker, and reads what comes back:
    nothing, the connection just closes. The charge is left ``pending``, with
    nobody to confirm or refund it: only the lease can settle it, as a refund.

    The handler must take long enough for this to be seen
    (``SUMMARIZE_LATENCY`` of a tenth of a second or more). If the answer
    still comes first (a loaded machine), the probe is tried again with job
    ``<job_id>-r<n>``, up to ``attempts`` times; the served jobs are listed
    in :attr:`ProbeKill.served`.
    """
    parts = urllib.parse.urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    deadline = time.monotonic() + timeout
    served: list[str] = []
    reasons: list[str] = []
    for attempt in range(attempts):
        job = job_id if attempt == 0 else f"{job_id}-r{attempt}"
        try:
            done = _probe_once(server, ledger, host, port, path, api_key, account, job, scope,
                               deadline)  # fmt: skip
        except _Served as why:
            served.append(job)
            reasons.append(f"{job}: {why}")
            continue
        done.served = served
        return done
    raise RuntimeError(f"{attempts} probes were all answered before the kill: {reasons}")


def _probe_once(
    server: _HasWorkers,
    ledger: _Ledgerish,
    host: str,
    port: int,
    path: str,
    api_key: str,
    account: str,
    job_id: str,
    scope: str,
    deadline: float,
) -> ProbeKill:
    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"the probe {job_id} was not charged in time")
        return remaining

    with socket.create_connection((host, port), timeout=left()) as probe:
        probe.sendall(_probe_request(host, port, path, api_key, job_id))
        client_port = probe.getsockname()[1]
        # 1. the worker that accepted the connection (before it can answer)
        pid = None
        while pid is None:
            left()
            inode = _socket_inode(port, client_port)
            pid = _owner_of(inode, live_pids(server.worker_pids())) if inode else None
            if pid is None:
                if _readable(probe):
                    raise _Served(f"answered before a worker was seen: {probe.recv(200)!r}")
                time.sleep(0.002)
        # 2. its charge is committed
        record = None
        while record is None:
            left()
            record = ledger.lookup(account, job_id, scope=scope)
            if record is None:
                if _readable(probe):
                    raise _Served(f"answered before the charge was seen: {probe.recv(200)!r}")
                time.sleep(0.002)
        if record.state != "pending":
            raise _Served(f"already {record.state} when first seen")
        # 3. kill it before it answers
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
        answer = b""
        try:
            while chunk := probe.recv(65536):
                answer += chunk
        except OSError:
            pass  # reset: no answer
    if answer:
        raise _Served(f"answered despite the kill: {answer[:200]!r}")
    return ProbeKill(pid=pid, job_id=job_id, charge_id=record.charge_id, answer=answer)


def _readable(sock: socket.socket) -> bool:
    """Whether an answer (or the end of the connection) is waiting on ``sock``."""
    ready, _, _ = select.select([sock], [], [], 0)
    return bool(ready)


# -- a private Redis ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _TornAppendOnlyFile(RuntimeError):
    """The server refused to start: its append-only file ends mid-command."""


class RedisServer:
    """A ``redis-server`` of the test's own, on a free loopback port, with its
    data in ``directory``.

    Persistence is on: ``appendonly yes`` and ``appendfsync always`` (each
    write is in the append-only file, fsynced, before Redis answers it), so a
    ``SIGKILL`` and a start on the same port bring every acknowledged charge,
    refund and balance back. That is the setting a billing ledger needs; with
    Redis' defaults a restart loses what was written since the last snapshot.

    And ``aof-load-truncated no``, with the repair docs/redis.md gives: a
    ``SIGKILL`` can land in the middle of Redis' write to the file, leaving
    the tail of a script's ``MULTI`` ... ``EXEC`` block on disk without its
    end. Redis 7.0 (``aof-load-truncated yes``, its default) then cuts only
    the torn command and leaves the block's ``MULTI`` and first commands in
    the file; the writes after the restart are appended behind them, and the
    *next* load runs the stranded commands inside the following transaction:
    half a script applied (a refund's credit without its journal entry or its
    record's change). Valkey fixed this in valkey-io/valkey#4342. With ``no``
    the server refuses to start on a torn tail; ``redis-check-aof --fix``
    then cuts the file before the unfinished ``MULTI``, and the server starts
    with whole scripts only. :meth:`start` does that repair, as an operator
    would, and counts it in :attr:`repairs`.
    """

    def __init__(self, directory: Path, *extra: str, persistent: bool = True) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.extra = extra
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.log = directory / "redis.log"
        #: How many starts found a torn append-only file and repaired it.
        self.repairs = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        assert REDIS_SERVER is not None
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always", "--aof-load-truncated", "no"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        return [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--dbfilename", "dump.rdb",
            "--save", "",
            *persistence,
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.log),
            *self.extra,
        ]  # fmt: skip

    def start(self, timeout: float = 15.0, *, repair: bool = True) -> None:
        """Start the server (on the same port as before) and wait until it
        answers ``PING`` (so also until it has loaded its append-only file).

        A server that refuses its append-only file because its tail is torn
        (see the class docstring) is repaired with ``redis-check-aof --fix``
        and started again, unless ``repair`` is false."""
        if self.proc is not None:
            raise RuntimeError("the private redis-server is already running")
        try:
            self._start(timeout)
        except _TornAppendOnlyFile:
            if not repair:
                raise
            self._repair()
            self._start(timeout)

    def _start(self, timeout: float) -> None:
        logged = self.log.stat().st_size if self.log.exists() else 0
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.log.read_bytes()[logged:].decode() if self.log.exists() else ""
                self.kill()
                if "Unexpected end of file reading the append only file" in log:
                    raise _TornAppendOnlyFile(log)
                raise RuntimeError(f"redis-server did not start on {self.port}:\n{log}")
            time.sleep(0.05)

    def aof_path(self) -> Path:
        """The append-only file to check: the manifest of Redis 7's multi-part
        files, else the single file of older servers."""
        manifest = self.directory / "appendonlydir" / "appendonly.aof.manifest"
        return manifest if manifest.exists() else self.directory / "appendonly.aof"

    def _repair(self) -> None:
        """``redis-check-aof --fix`` (it asks before it cuts: answered yes)."""
        if REDIS_CHECK_AOF is None:
            raise RuntimeError("redis-check-aof is not installed: cannot repair a torn AOF")
        done = subprocess.run(
            [REDIS_CHECK_AOF, "--fix", str(self.aof_path())],
            input="y\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-check-aof --fix failed:\n{done.stdout}{done.stderr}")
        self.repairs += 1

    def ping(self) -> bool:
        """Whether the server answers ``+PONG`` now (a raw socket: no client
        library, no retries)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def dbsize(self) -> int:
        """How many keys the server holds (``DBSIZE`` of database 0)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"DBSIZE\r\n")
            reply = s.recv(64)
        if not reply.startswith(b":"):
            raise RuntimeError(f"DBSIZE answered {reply!r}")
        return int(reply[1:].split(b"\r\n", 1)[0])

    def kill(self) -> None:
        """``SIGKILL``: the server dies at once, as in a crash or an OOM kill;
        its clients' connections are reset and new ones are refused."""
        if self.proc is None:
            return
        if self.paused:
            self.proc.send_signal(signal.SIGCONT)
            self.paused = False
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        """``SIGTERM``: a clean shutdown (Redis flushes its append-only file)."""
        if self.proc is None:
            return
        if self.paused:
            self.proc.send_signal(signal.SIGCONT)
            self.paused = False
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def pause(self) -> None:
        """``SIGSTOP``: the server hangs; connections stay open, nothing is
        answered (clients run into their socket timeout)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def outage(
        self,
        seconds: float,
        *,
        crash: bool = True,
        while_down: Callable[[], object] | None = None,
    ) -> dict[str, float]:
        """Take the server down for ``seconds`` and bring it back on the same
        port: ``crash=True`` kills it (``SIGKILL``) and starts it again,
        ``crash=False`` pauses it (``SIGSTOP``/``SIGCONT``). ``while_down``
        runs once the server is down, and the server stays down until it
        returned (at least ``seconds`` in all), so what it does is known to
        have met the outage whatever the machine's load. Returns how long it
        was down and how long the restart took."""
        t0 = time.monotonic()
        if crash:
            self.kill()
        else:
            self.pause()
        if while_down is not None:
            while_down()
        time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
        t1 = time.monotonic()
        if crash:
            self.start()
        else:
            self.resume()
        t2 = time.monotonic()
        return {"down": t2 - t0, "restart": t2 - t1}

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


# -- PostgreSQL ------------------------------------------------------------------------------


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to its query string."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query) + list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def terminate_backends(admin_url: str, application_name: str) -> int:
    """``pg_terminate_backend`` every backend whose ``application_name`` is
    ``application_name`` (the test's own, set in its store URL): the app's
    pooled connections die, idle or mid-statement. Returns how many were
    signalled. ``admin_url`` is a plain libpq URL (no store options)."""
    import psycopg

    if not application_name or "%" in application_name:
        raise ValueError("terminate only backends of one exact, test-owned application_name")
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        ).fetchall()
    return sum(1 for (done,) in rows if done)


def count_backends(admin_url: str, application_name: str) -> int:
    """How many backends ``application_name`` has open now."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        ).fetchone()
    return int(row[0]) if row else 0


def drop_schema(admin_url: str, schema: str) -> None:
    """Drop a test's schema and everything in it."""
    import psycopg
    from psycopg import sql

    if not schema.startswith("jcsys_"):
        raise ValueError(f"refusing to drop {schema!r}: not a system-test schema")
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


# -- SQLite ------------------------------------------------------------------------------------

#: Run by :func:`hold_sqlite_write_and_die` in a child process: take the write
#: lock, write enough rows that SQLite spills uncommitted pages into the WAL,
#: debit every balance, say so, and wait to be killed.
_WRITER = r"""
import os, sqlite3, sys, time
def wal():
    try:
        st = os.stat(sys.argv[1] + "-wal")
        return st.st_size, st.st_mtime_ns
    except OSError:
        return 0, 0
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("PRAGMA cache_size = 8")  # a tiny page cache: spill to the WAL early
conn.execute("BEGIN IMMEDIATE")  # from here on, only this process writes the WAL
before = wal()
conn.execute("CREATE TABLE IF NOT EXISTS fault_torn (n INTEGER PRIMARY KEY, pad TEXT)")
conn.executemany(
    "INSERT INTO fault_torn (pad) VALUES (?)", [("x" * 500,) for _ in range(int(sys.argv[2]))]
)
conn.execute("UPDATE jobcredits_balances SET credits = credits - 1000000")
after = wal()
print("locked", int(after != before), after[0], flush=True)
time.sleep(120)
"""


@dataclass
class TornWrite:
    """What :func:`hold_sqlite_write_and_die` did: the killed pid, how long it
    held the write lock, whether its uncommitted transaction wrote into the
    WAL (frames the next connection must ignore), and the WAL's size then."""

    pid: int
    held: float
    wal_written: bool
    wal_size: int


def hold_sqlite_write_and_die(path: Path, *, rows: int = 2000, hold: float = 0.3) -> TornWrite:
    """A writer of ``path`` killed mid-transaction.

    A child process takes SQLite's write lock (``BEGIN IMMEDIATE``), inserts
    ``rows`` padded rows into a table of its own and debits every balance by a
    million, with a page cache so small that SQLite writes the uncommitted
    pages into the WAL (the child checks that the WAL changed while it held
    the lock); it holds the lock ``hold`` seconds (the server's writers queue
    behind it on their busy timeout) and gets ``SIGKILL`` before it commits.
    Nothing it wrote may ever be visible: afterwards the table does not exist
    and no balance moved.
    """
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(rows)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()  # the lock is taken and the rows written
        if not line or line[0] != b"locked":
            child.kill()
            _, err = child.communicate(timeout=10)
            raise RuntimeError(f"the torn writer did not take the lock: {err.decode()!r}")
        locked = time.monotonic()
        time.sleep(hold)
        child.kill()
        child.wait(timeout=10)
        return TornWrite(
            pid=child.pid,
            held=time.monotonic() - locked,
            wal_written=line[1] == b"1",
            wal_size=int(line[2]),
        )
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()


#: Where SQLite takes the WAL write lock: byte 120 of the ``-shm`` file
#: (WALINDEX_LOCK_OFFSET; the write lock is slot 0), held from the first write
#: of a transaction to its commit or rollback.
_WAL_WRITE_LOCK = 120


def sqlite_writer(path: Path, pids: Iterable[int]) -> int | None:
    """Which of ``pids`` holds the WAL write lock of the SQLite file ``path``
    right now (``/proc/locks``), if any: a process in the middle of a write
    transaction."""
    try:
        inode = os.stat(f"{path}-shm").st_ino
    except OSError:
        return None
    wanted = set(pids)
    with open("/proc/locks") as locks:
        for line in locks:
            fields = line.split()
            # "1: POSIX  ADVISORY  WRITE 8832 fe:00:2146577 120 120"
            if len(fields) < 8 or fields[1] != "POSIX" or fields[3] != "WRITE":
                continue
            if (
                fields[5].rsplit(":", 1)[1] == str(inode)
                and fields[6] == str(_WAL_WRITE_LOCK)
                and int(fields[4]) in wanted
            ):
                return int(fields[4])
    return None


def kill_sqlite_writer(server: _HasWorkers, path: Path, *, timeout: float = 3.0) -> int | None:
    """``SIGKILL`` a worker of ``server`` in the middle of a write transaction
    on the SQLite file ``path``.

    Polls ``/proc/locks`` for a worker holding the WAL write lock, freezes it
    (``SIGSTOP``), checks that it still holds the lock, and kills it: it dies
    inside its transaction, never between two. A worker that let go of the
    lock before it froze is resumed (``SIGCONT``) and the search goes on.
    Returns the pid, or None when no worker was caught within ``timeout``
    seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = sqlite_writer(path, live_pids(server.worker_pids()))
        if pid is None:
            time.sleep(0.0005)
            continue
        os.kill(pid, signal.SIGSTOP)
        try:
            _wait_stopped(pid)
            still = sqlite_writer(path, [pid]) == pid
        except BaseException:
            os.kill(pid, signal.SIGCONT)
            raise
        if still:
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid)
            return pid
        os.kill(pid, signal.SIGCONT)
    return None


def _wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """Wait until ``pid`` is stopped (state ``T``) after a ``SIGSTOP``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return  # gone
        if state in ("T", "t", "Z", "X"):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} did not stop")
        time.sleep(0.0005)


def integrity_check(path: Path) -> list[str]:
    """``PRAGMA integrity_check`` of the SQLite file: ``["ok"]`` when sound."""
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]


def table_exists(path: Path, table: str) -> bool:
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        row = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
    return row is not None


@contextlib.contextmanager
def timed() -> Iterator[dict[str, float]]:
    """``with timed() as t: ...``; afterwards ``t["seconds"]`` is how long it took."""
    out: dict[str, float] = {}
    start = time.monotonic()
    try:
        yield out
    finally:
        out["seconds"] = time.monotonic() - start
