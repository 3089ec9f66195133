"""Streamed responses under real servers (issue 12, item 12): a body that
fails before its first byte is not charged; one that fails after it is.

Each app of ``streaming_apps.py`` runs in its server (gunicorn for the WSGI
middleware, Flask and Django; uvicorn for the ASGI middleware, FastAPI and
Django's ASGI handler) on a SQLite ledger this test reads afterwards:

- ``/early`` raises before its first byte: the balance is unchanged and the
  journal holds the charge and its refund. The WSGI/ASGI middleware and
  FastAPI hold the response's start until the first byte, so the server,
  having sent nothing, answers 500; Flask and Django hand their headers to
  the server before the body runs (gunicorn still answers 500, having sent
  nothing; Django's ASGI handler has sent its start, so the client sees the
  connection cut before any byte).
- ``/late`` raises after its first chunk: the client got a status and bytes,
  so the call is charged (documented: the charge stands once the first byte
  is produced).
- ``/ok`` streams completely: charged.

Django streams a synchronous iterator under WSGI and an asynchronous one
under ASGI; across that divide it reads the whole body into a list first
(and warns), so nothing reaches the client before the body ended: those
combinations are not streaming, and are not tested here.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")

from jobcredits_plugin import Ledger  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
APPS = "tests.integrations.streaming_apps"
ACCOUNT = "acct"
GRANT = 10
READY_TIMEOUT = 30.0

#: kind -> (server, the app's name in streaming_apps, path prefixes, needed modules)
KINDS: dict[str, tuple[str, str, tuple[str, ...], tuple[str, ...]]] = {
    "wsgi-middleware": ("gunicorn", "wsgi_app", ("",), ()),
    "flask": ("gunicorn", "flask_app", ("",), ("flask",)),
    "django-wsgi": ("gunicorn", "django_app", ("",), ("django",)),
    "asgi-middleware": ("uvicorn", "asgi_app", ("",), ()),
    "fastapi": ("uvicorn", "fastapi_app", ("",), ("fastapi",)),
    "django-asgi": ("uvicorn", "django_asgi_app", ("/async",), ("django",)),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def serve(kind: str, url: str, tmp_path: Path) -> Iterator[str]:
    """Run the kind's app in its server; yields the base URL."""
    server, factory, _, needs = KINDS[kind]
    pytest.importorskip(server)
    for module in needs:
        pytest.importorskip(module)
    port = free_port()
    if server == "gunicorn":
        cmd = [
            sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}",
            "--graceful-timeout", "5", f"{APPS}:{factory}()",
        ]  # fmt: skip
    else:
        cmd = [
            sys.executable, "-m", "uvicorn", "--factory", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", f"{APPS}:{factory}",
        ]  # fmt: skip
    env = {
        **os.environ,
        "JOBCREDITS_URL": url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    log = tmp_path / f"{server}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{server} exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{server} not ready after {READY_TIMEOUT} s:\n{log.read_text()}")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def fetch(base: str, path: str, job: str) -> tuple[int | None, str | None, bytes]:
    """GET ``path`` as ``ACCOUNT`` for ``job``, on a connection of its own (a
    server may close one after a failed response): (status or None when the
    connection was cut before one, X-Job-Charge, the body bytes received
    before the body ended or the connection was cut)."""
    received = b""
    headers = {"X-Account": ACCOUNT, "X-Job-Id": job}
    try:
        with (
            httpx.Client(base_url=base, timeout=10.0) as client,
            client.stream("GET", path, headers=headers) as r,
        ):
            try:
                for chunk in r.iter_raw():
                    received += chunk
            except httpx.TransportError:
                pass  # the server cut the body short
            return r.status_code, r.headers.get("X-Job-Charge"), received
    except httpx.TransportError:
        return None, None, received


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_stream_failing_before_its_first_byte_is_not_charged(kind: str, tmp_path: Path) -> None:
    """Under a real server: a stream failing before its first byte leaves
    the balance as it was (refund journaled); one failing after it, and one
    that completes, are charged."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with Ledger.from_url(url, balances=True) as ledger:
        ledger.grant(ACCOUNT, GRANT)
    prefixes = KINDS[kind][2]
    with serve(kind, url, tmp_path) as base:
        for prefix in prefixes:
            suffix = prefix.replace("/", "-")
            status, _, body = fetch(base, f"{prefix}/early", f"early{suffix}")
            assert b"first chunk" not in body
            if kind != "django-asgi":  # the others send nothing before the first byte
                assert status == 500, (prefix, status, body)

            status, charge, body = fetch(base, f"{prefix}/late", f"late{suffix}")
            assert status == 200
            assert charge == "charged"
            assert b"first chunk;" in body

            status, charge, body = fetch(base, f"{prefix}/ok", f"ok{suffix}")
            assert (status, charge) == (200, "charged")
            assert b"first chunk;second chunk" in body

    with Ledger.from_url(url, balances=True) as ledger:
        assert ledger.balance(ACCOUNT) == GRANT - 2 * len(prefixes)
        journal: dict[str, list[str]] = {}
        for entry in ledger.journal(limit=1000):
            if entry.job_id is not None:
                journal.setdefault(entry.job_id, []).append(entry.kind)
        for prefix in prefixes:
            suffix = prefix.replace("/", "-")
            assert ledger.lookup(ACCOUNT, f"early{suffix}") is None
            assert journal[f"early{suffix}"] == ["charge", "refund"]
            for job in (f"late{suffix}", f"ok{suffix}"):
                record = ledger.lookup(ACCOUNT, job)
                assert record is not None, job
                assert record.state == "charged", job
                assert journal[job] == ["charge"]
