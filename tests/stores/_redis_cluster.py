"""A throwaway 3-master Redis Cluster on loopback ports, for the tests.

Started with ``redis-server --cluster-enabled yes`` and ``redis-cli --cluster
create``; used by the store suite's ``redis-cluster`` kind (one cluster for the
whole test session, stopped when the interpreter exits) and by the Redis
cluster tests.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def _free_cluster_port(taken: list[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        # The cluster bus listens on port + 10000: it must exist too.
        if port + 10000 < 65536 and port not in taken:
            return port


def _cli(*args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    assert REDIS_CLI is not None
    return subprocess.run(
        [REDIS_CLI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


class ClusterNodes:
    """The processes of a throwaway cluster: ``masters`` masters with
    ``replicas`` replicas each, on free loopback ports, in ``directory``.
    ``node_timeout`` (milliseconds) is how long a master must be unreachable
    before its replica takes over (Redis' default is 15 s)."""

    def __init__(
        self, directory: Path, *, masters: int = 3, replicas: int = 0, node_timeout: int = 15000
    ) -> None:
        assert REDIS_SERVER is not None
        assert REDIS_CLI is not None
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.replicas = replicas
        self.node_timeout = node_timeout
        self.ports: list[int] = []
        while len(self.ports) < masters * (1 + replicas):
            self.ports.append(_free_cluster_port(self.ports))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0?cluster=true"

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        assert REDIS_SERVER is not None
        return subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.directory / f"nodes-{port}.conf"),
                "--cluster-node-timeout", str(self.node_timeout),
                "--dir", str(self.directory),
                "--dbfilename", f"dump-{port}.rdb",
                "--save", "",
                "--appendonly", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def start(self) -> None:
        """Start the nodes and join them into a cluster. A node whose port (or
        bus port) was taken meanwhile (the ports were free when drawn, and a
        busy test process opens many connections) is started again on another."""
        for n, port in enumerate(list(self.ports)):
            for _attempt in range(5):
                proc = self._spawn(port)
                self.procs[port] = proc
                deadline = time.monotonic() + 20
                while _cli("-p", str(port), "ping").stdout.strip() != "PONG":
                    if proc.poll() is not None:
                        break
                    assert time.monotonic() < deadline, f"redis-server on {port} did not start"
                    time.sleep(0.05)
                if proc.poll() is None:
                    break
                del self.procs[port]
                port = _free_cluster_port(self.ports)
                self.ports[n] = port
            else:
                raise AssertionError("no redis-server of the cluster would start")
        created = _cli(
            "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
            "--cluster-replicas", str(self.replicas), "--cluster-yes",
            timeout=60,
        )  # fmt: skip
        assert created.returncode == 0, created.stdout + created.stderr
        self.wait_ok(30)
        if self.replicas:
            # A replica that has not synced yet refuses to take over (its
            # data would be too old), so wait for every replication link.
            deadline = time.monotonic() + 30
            for port in self.ports:
                while True:
                    info = _cli("-p", str(port), "info", "replication").stdout
                    if "role:master" in info or "master_link_status:up" in info:
                        break
                    assert time.monotonic() < deadline, f"replica {port} did not sync"
                    time.sleep(0.1)

    def wait_ok(self, most: float, ports: list[int] | None = None) -> None:
        """Wait until every live node (or ``ports``) reports ``cluster_state:ok``
        and, with replicas, every master has its replica attached."""
        deadline = time.monotonic() + most
        for port in ports if ports is not None else self.alive():
            while "cluster_state:ok" not in _cli("-p", str(port), "cluster", "info").stdout:
                assert time.monotonic() < deadline, "the cluster did not become ok"
                time.sleep(0.1)

    def alive(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def role(self, port: int) -> str:
        """``master`` or ``slave`` (Redis' word), as the node says now."""
        out = _cli("-p", str(port), "role").stdout.split()
        return out[0] if out else "unknown"

    def masters(self) -> list[int]:
        return [p for p in self.alive() if self.role(p) == "master"]

    def replica_of(self, master: int) -> list[int]:
        """The live replicas that replicate ``master``."""
        found = []
        for port in self.alive():
            info = _cli("-p", str(port), "info", "replication").stdout
            if "role:slave" in info and f"master_port:{master}" in info:
                found.append(port)
        return found

    def kill(self, port: int) -> None:
        """``SIGKILL`` one node: a crashed master, whose replica takes over
        after ``node_timeout``."""
        proc = self.procs[port]
        proc.kill()
        proc.wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextlib.contextmanager
def redis_cluster(directory: Path) -> Iterator[str]:
    """Run a 3-master cluster for the duration of the block; yields its URL."""
    nodes = ClusterNodes(directory)
    try:
        nodes.start()
        yield nodes.url
    finally:
        nodes.stop()


_session: dict[str, str] = {}
_lock = threading.Lock()


def session_cluster_url() -> str:
    """One cluster for the whole test session, started on first use and
    stopped when the interpreter exits."""
    with _lock:
        if "url" not in _session:
            directory = Path(tempfile.mkdtemp(prefix="jobcredits-cluster-"))
            stack = contextlib.ExitStack()
            _session["url"] = stack.enter_context(redis_cluster(directory))
            atexit.register(stack.close)
            atexit.register(shutil.rmtree, directory, True)
        return _session["url"]
