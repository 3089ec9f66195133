"""Real servers for the system tests: the three example apps under gunicorn or
uvicorn with several worker processes, on loopback ports, and the stores they
share.

``start_server(kind, store_url)`` starts one and always stops it::

    with provision_store("sqlite", tmp_path) as url:
        grant(url, {"acct-a": 100})
        with start_server("flask", url, env=scenario_env(scenario)) as server:
            run_load_sync(server.base_url, scenario, path=server.charged_paths)

Servers:

``flask``
    ``gunicorn -w N 'examples.flask_app:create_app()'`` (sync workers).
``django``
    ``gunicorn -w N jobsite.wsgi:application`` in ``examples/django_project``.
``fastapi``
    ``uvicorn --workers N --factory examples.fastapi_app:create_app``. Since
    uvicorn 0.30 its multiprocess supervisor checks its workers every half
    second and starts a new one in place of one that died, as gunicorn's
    arbiter does, so a killed worker comes back without gunicorn's
    ``UvicornWorker`` (see ``docs/reliability.md``).

Each server runs with a short lease (``JOBCREDITS_LEASE``, :data:`LEASE`
seconds unless ``env`` says otherwise): a worker killed in the middle of a
charging call leaves a ``pending`` record, and a short lease lets the next call
of that job, or :func:`tests.system._books.settle`, refund it within seconds
instead of the default minute.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parents[2]
DJANGO_PROJECT = ROOT / "examples" / "django_project"

KINDS = ("flask", "django", "fastapi")
STORES = ("sqlite", "redis", "postgres")
#: DjangoStore (the ledger in the project's database, through the ORM) on
#: SQLite and on PostgreSQL: the Django example only.
DJANGO_STORES = ("django-sqlite", "django-postgres")

#: The lease (seconds) the servers run with unless told otherwise; see the
#: module docstring.
LEASE = 5.0

#: Paths of one job's calls on each example (a job's calls share the scope
#: "summarize", so they may be spread over several endpoints).
CHARGED_PATHS: dict[str, tuple[str, ...]] = {
    "flask": ("/v1/summarize",),
    "django": ("/v1/transcribe", "/v1/analyze"),
    "fastapi": ("/v1/summarize", "/v1/analyze"),
}

#: The same work as the first charged path, with no charge: the baseline.
FREE_PATHS: dict[str, str] = {
    "flask": "/v1/summarize/free",
    "django": "/v1/transcribe/free",
    "fastapi": "/v1/summarize/free",
}

#: What each server needs installed.
NEEDS: dict[str, tuple[str, ...]] = {
    "flask": ("flask", "gunicorn"),
    "django": ("django", "gunicorn"),
    "fastapi": ("fastapi", "uvicorn"),
}


def require(kind: str) -> None:
    """Skip the calling test when the ``kind`` server cannot run here."""
    import pytest

    for module in NEEDS[kind]:
        pytest.importorskip(module)


#: How long stop() waits after SIGTERM before SIGKILL, and after SIGKILL.
STOP_GRACE = 10.0
KILL_GRACE = 5.0


def free_port() -> int:
    """A TCP port nobody listens on right now, on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc; empty when it is gone)."""
    found: set[int] = set()
    task_dir = Path(f"/proc/{pid}/task")
    try:
        tasks = list(task_dir.iterdir())
    except OSError:
        return []
    for task in tasks:
        try:
            found.update(int(p) for p in (task / "children").read_text().split())
        except OSError:
            break  # no children file on this kernel: scan /proc below
    else:
        return sorted(found)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.add(int(entry.name))
    return sorted(found)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Server:
    """One running server: its master process and how to reach it."""

    kind: str
    base_url: str
    store_url: str
    proc: subprocess.Popen[bytes]
    log_path: Path = field(default_factory=lambda: Path(os.devnull))
    workers: int = 4
    _seen_workers: set[int] = field(default_factory=set, repr=False)

    @property
    def charged_paths(self) -> tuple[str, ...]:
        """The paths of a job's calls (call n uses the n-th, the last one after)."""
        return CHARGED_PATHS[self.kind]

    @property
    def free_path(self) -> str:
        """The uncharged twin of the first charged path."""
        return FREE_PATHS[self.kind]

    def worker_pids(self) -> list[int]:
        """The worker processes' pids: the master's children, less
        multiprocessing's helper processes (uvicorn spawns its workers)."""
        if self.kind == "fastapi" and self.workers == 1:
            # uvicorn --workers 1 serves in its own process.
            return [self.proc.pid] if self.proc.poll() is None else []
        pids = [
            pid
            for pid in _children(self.proc.pid)
            if _alive(pid) and "resource_tracker" not in _cmdline(pid)
        ]
        self._seen_workers.update(pids)
        return pids

    def log_text(self) -> str:
        """What the server printed so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_workers(self, count: int | None = None, timeout: float = 30.0) -> list[int]:
        """Wait (bounded) until ``count`` workers (default: all) run and the
        server answers; returns their pids. Raises AssertionError on timeout."""
        count = self.workers if count is None else count
        deadline = time.monotonic() + timeout
        pids: list[int] = []
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.kind} server exited with {self.proc.returncode}:\n{self.log_text()}"
                )
            pids = self.worker_pids()
            if len(pids) >= count and _answers(self.base_url):
                return pids
            time.sleep(0.1)
        raise AssertionError(
            f"{self.kind} server: {len(pids)} of {count} workers after {timeout:g} s:\n"
            f"{self.log_text()[-4000:]}"
        )

    def stop(self) -> None:
        """SIGTERM the master, SIGKILL it after :data:`STOP_GRACE` seconds, and
        SIGKILL any worker of it still alive (a master killed outright leaves
        its workers behind). Idempotent."""
        self.worker_pids()  # remember the workers, to reap orphans below
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=KILL_GRACE)
        deadline = time.monotonic() + KILL_GRACE
        for pid in sorted(self._seen_workers):
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


def _answers(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _command(kind: str, port: int, workers: int) -> tuple[list[str], Path]:
    bind = f"127.0.0.1:{port}"
    gunicorn = [
        sys.executable, "-m", "gunicorn",
        "--workers", str(workers),
        "--bind", bind,
        "--graceful-timeout", "5",
        "--timeout", "30",
        # Gunicorn's default backlog is plenty; the load's clients queue there
        # while the sync workers are busy.
    ]  # fmt: skip
    if kind == "flask":
        return [*gunicorn, "examples.flask_app:create_app()"], ROOT
    if kind == "django":
        return [*gunicorn, "jobsite.wsgi:application"], DJANGO_PROJECT
    if kind == "fastapi":
        return [
            sys.executable, "-m", "uvicorn",
            "--factory", "examples.fastapi_app:create_app",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--workers", str(workers),
            "--log-level", "warning",
            "--no-access-log",
            "--timeout-graceful-shutdown", "5",
        ], ROOT  # fmt: skip
    raise ValueError(f"unknown server kind {kind!r}; expected one of {KINDS}")


@contextlib.contextmanager
def start_server(
    kind: str,
    store_url: str,
    *,
    workers: int = 4,
    env: Mapping[str, str] | None = None,
    timeout: float = 30,
    log_dir: Path | None = None,
) -> Iterator[Server]:
    """Start the ``kind`` example with ``workers`` worker processes on
    ``store_url``, wait until every worker runs and the server answers, yield
    it, and stop it whatever happens.

    ``env`` adds to (and overrides) the server's environment: e.g.
    ``EXAMPLE_API_KEYS``, ``SUMMARIZE_LATENCY``, ``JOBCREDITS_LEASE`` (default
    :data:`LEASE`). The server's output goes to ``log_dir/<kind>-<port>.log``
    (default: a fresh temporary directory, removed afterwards).
    """
    port = free_port()
    command, cwd = _command(kind, port, workers)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    server_url, database = _server_store(kind, store_url)
    pythonpath = [str(ROOT), str(DJANGO_PROJECT) if kind == "django" else ""]
    full_env = {
        **base_env,
        "JOBCREDITS_URL": server_url,
        **({"EXAMPLE_DATABASE": database} if database else {}),
        "JOBCREDITS_LEASE": str(LEASE),
        "PYTHONPATH": os.pathsep.join(filter(None, [*pythonpath, base_env.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
        **({"DJANGO_SETTINGS_MODULE": "jobsite.settings"} if kind == "django" else {}),
        **(env or {}),
    }
    with contextlib.ExitStack() as stack:
        if log_dir is None:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jcsys-")))
        log_path = log_dir / f"{kind}-{port}.log"
        with log_path.open("wb") as out:
            if database:
                _migrate(full_env, out)
            proc = subprocess.Popen(
                command, cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT
            )
        server = Server(
            kind=kind,
            base_url=f"http://127.0.0.1:{port}",
            store_url=store_url,
            proc=proc,
            log_path=log_path,
            workers=workers,
        )
        try:
            server.wait_workers(timeout=timeout)
            yield server
        finally:
            server.stop()


def _server_store(kind: str, store_url: str) -> tuple[str, str | None]:
    """The server's ``JOBCREDITS_URL`` and, for a DjangoStore, its
    ``EXAMPLE_DATABASE``.

    A ``django://ALIAS`` store of this process (``provision_store``) is the
    example project's ``default`` database in the server: the same database
    settings (file, or server and schema), as a project deploys it, with
    ``JOBCREDITS = {"URL": "django://default"}``."""
    if not store_url.startswith("django://"):
        return store_url, None
    if kind != "django":
        raise ValueError(f"a DjangoStore needs the Django example, not {kind!r}")
    from django.conf import settings

    alias = urllib.parse.urlsplit(store_url).netloc
    entry = settings.DATABASES[alias]
    keys = ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS")
    database: dict[str, object] = {k: entry[k] for k in keys if k in entry}
    # Persistent connections, as a deployment configures them: Django's
    # default (0) opens a connection per request.
    database["CONN_MAX_AGE"] = None
    return "django://default", json.dumps(database)


def _migrate(env: Mapping[str, str], out: IO[bytes]) -> None:
    """``manage.py migrate`` with the server's settings, before it starts."""
    done = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=DJANGO_PROJECT,
        env=dict(env),
        stdout=out,
        stderr=subprocess.STDOUT,
        timeout=120,
        check=False,
    )
    if done.returncode:
        out.flush()
        raise AssertionError(f"manage.py migrate exited with {done.returncode}")


# -- stores ---------------------------------------------------------------------------


@contextlib.contextmanager
def provision_store(store: str, directory: Path) -> Iterator[str]:
    """A fresh, empty store of kind ``store`` ("sqlite", "redis", "postgres"),
    as a URL the servers can share; removed afterwards.

    SQLite is a file in ``directory``. Redis and PostgreSQL are the test
    servers of the store suite (``JOBCREDITS_TEST_REDIS_URL``,
    ``JOBCREDITS_TEST_POSTGRES_URL``): they skip the test off CI when absent and
    fail it under ``CI=true``. Redis gets a key prefix of its own (deleted
    afterwards, nothing else touched), PostgreSQL a schema of its own (dropped
    afterwards).
    """
    from tests.stores.conftest import (
        POSTGRES_DEFAULT,
        POSTGRES_URL_ENV,
        REDIS_DEFAULT,
        REDIS_URL_ENV,
        _server_url,
    )

    token = uuid.uuid4().hex[:12]
    if store in DJANGO_STORES:
        yield _django_store(store)
        return
    if store == "sqlite":
        # A generous busy timeout: four workers and a load on two cores must
        # never turn ordinary lock waits into 503s.
        yield f"sqlite:///{directory / f'jobs-{token}.db'}?timeout=30"
        return
    if store == "redis":
        base = _server_url(REDIS_URL_ENV, REDIS_DEFAULT, "Redis")
        prefix = f"jcsys:{token}"
        url = _with_query(base, prefix=prefix)
        try:
            yield url
        finally:
            _drop_redis_prefix(base, prefix)
        return
    if store == "postgres":
        base = _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")
        url = _with_query(base, schema=f"jcsys_{token}")
        try:
            yield url
        finally:
            _drop_postgres_schema(url)
        return
    raise ValueError(f"unknown store {store!r}; expected one of {STORES + DJANGO_STORES}")


def _django_store(store: str) -> str:
    """An emptied DjangoStore of this process, as ``django://ALIAS``.

    The aliases of the store suite (``tests/stores/_django.py``): a SQLite
    file, and a schema of this run on the PostgreSQL test server (skipped off
    CI when absent, failed under ``CI=true``). Their tables are made by the
    app's migrations here; the server runs ``manage.py migrate`` again on the
    same database before it starts, as a deployment does."""
    import pytest

    pytest.importorskip("django", reason="the django extra is not installed")
    from tests.stores import _django

    if store == "django-postgres":
        from tests.stores.conftest import POSTGRES_DEFAULT, POSTGRES_URL_ENV, _server_url

        _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")
        alias = _django.POSTGRES_ALIAS
    else:
        alias = _django.SQLITE_ALIAS
    _django.migrate(alias)
    _django.empty(alias)
    return f"django://{alias}"


def _with_query(url: str, **options: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, v) for k, v in query if k not in options] + list(options.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _drop_redis_prefix(url: str, prefix: str) -> None:
    """Delete the keys under our own prefix, and nothing else."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=prefix + ":*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    except redis.exceptions.RedisError:
        pass  # the server is gone (a fault test): nothing left to clean
    finally:
        client.close()


def _drop_postgres_schema(url: str) -> None:
    from jobcredits_plugin.stores import PostgresStore

    store = PostgresStore.from_url(url)
    try:
        store.drop()
    except Exception:
        pass  # the server is gone (a fault test): nothing left to clean
    finally:
        store.close()


def grant(store_url: str, credits: Mapping[str, int]) -> None:
    """Give each account its credits, once, before the servers start (a shared
    store is granted once, not by every worker)."""
    from jobcredits_plugin import Ledger

    with Ledger.from_url(store_url, balances=True) as ledger:
        for account, amount in credits.items():
            ledger.grant(account, amount)
