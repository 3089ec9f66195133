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


@contextlib.contextmanager
def redis_cluster(directory: Path) -> Iterator[str]:
    """Run a 3-master cluster for the duration of the block; yields its URL."""
    assert REDIS_SERVER is not None
    assert REDIS_CLI is not None
    ports: list[int] = []
    while len(ports) < 3:
        ports.append(_free_cluster_port(ports))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            procs.append(
                subprocess.Popen(
                    [
                        REDIS_SERVER,
                        "--port", str(port),
                        "--bind", "127.0.0.1",
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", str(directory / f"nodes-{port}.conf"),
                        "--dir", str(directory),
                        "--save", "",
                        "--appendonly", "no",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        deadline = time.monotonic() + 20
        for port in ports:
            while _cli("-p", str(port), "ping").stdout.strip() != "PONG":
                assert time.monotonic() < deadline, f"redis-server on {port} did not start"
                time.sleep(0.05)
        created = _cli(
            "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
            "--cluster-replicas", "0", "--cluster-yes",
            timeout=60,
        )  # fmt: skip
        assert created.returncode == 0, created.stdout + created.stderr
        deadline = time.monotonic() + 30
        for port in ports:
            while "cluster_state:ok" not in _cli("-p", str(port), "cluster", "info").stdout:
                assert time.monotonic() < deadline, "the cluster did not become ok"
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{ports[0]}/0?cluster=true"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


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
