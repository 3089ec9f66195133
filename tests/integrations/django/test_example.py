"""The example project (examples/django_project, the quickstart of docs/django.md):
in process through Django's test client, and for real under gunicorn with two
worker processes sharing a SQLite ledger."""

from __future__ import annotations

import asyncio
import collections
import importlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")

from django.core.management import call_command
from django.test import Client, override_settings

from jobcredits_plugin import Ledger

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "django_project"
KEY = {"Authorization": "Bearer key-ada"}


@pytest.fixture
def example() -> Iterator[Any]:
    """The example's settings in force (its URLs, middleware, JOBCREDITS), on a
    memory store so each test starts empty."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(EXAMPLE))
        mp.delenv("JOBCREDITS_URL", raising=False)
        conf = importlib.import_module("jobsite.settings")
        with override_settings(
            ROOT_URLCONF=conf.ROOT_URLCONF,
            MIDDLEWARE=conf.MIDDLEWARE,
            API_KEYS=conf.API_KEYS,
            JOBCREDITS={**conf.JOBCREDITS, "URL": "memory://"},
        ):
            yield conf


def call(path: str, job: str, **headers: str) -> Any:
    # enforce_csrf_checks: the API views must work without a CSRF token.
    client = Client(enforce_csrf_checks=True)
    return client.post(path, headers={**KEY, "X-Job-Id": job, **headers})


def test_example_settings_use_a_shared_sqlite_store(example: Any) -> None:
    """The example's default store is a SQLite file, shared by worker processes."""
    assert example.JOBCREDITS["BALANCES"] is True
    assert example.JOBCREDITS["URL"] == f"sqlite:///{EXAMPLE / 'jobcredits.db'}"


def test_example_job_is_charged_once_and_the_follow_up_rides_free(example: Any) -> None:
    """transcribe charges the job, analyze reuses it."""
    call_command("jobcredits", "grant", "ada", "3", stdout=io.StringIO())
    job = str(uuid.uuid4())
    first = call("/v1/transcribe", job)
    second = call("/v1/analyze", job)
    assert (first.status_code, second.status_code) == (200, 200)
    assert json.loads(first.content) == {
        "transcript": "hello world",
        "outcome": "charged",
        "uses": 1,
        "credits_left": 2,
    }
    assert json.loads(second.content)["outcome"] == "reused"
    assert (first["X-Job-Charge"], second["X-Job-Charge"]) == ("charged", "reused")
    assert second["X-Credits-Remaining"] == "2"


def test_example_failed_first_call_is_refunded_and_retried(example: Any) -> None:
    """?fail=1 answers 502 and refunds; the retry with the same id is charged."""
    call_command("jobcredits", "grant", "ada", "1", stdout=io.StringIO())
    job = str(uuid.uuid4())
    failed = call("/v1/transcribe?fail=1", job)
    assert failed.status_code == 502
    assert failed["X-Job-Charge"] == "refunded"
    assert failed["X-Credits-Remaining"] == "1"
    retry = call("/v1/transcribe", job)
    assert retry["X-Job-Charge"] == "charged"
    assert retry["X-Credits-Remaining"] == "0"
    assert call("/v1/transcribe", str(uuid.uuid4())).status_code == 402


def test_example_unknown_key_is_401_and_wrong_method_is_free(example: Any) -> None:
    """A bad API key gets 401; GET on a POST view gets 405 before any charge."""
    call_command("jobcredits", "grant", "ada", "1", stdout=io.StringIO())
    bad = call("/v1/transcribe", "job-1", Authorization="Bearer nope")
    assert bad.status_code == 401
    assert bad["Content-Type"] == "application/problem+json"
    wrong = Client().get("/v1/transcribe", headers={**KEY, "X-Job-Id": "job-1"})
    assert wrong.status_code == 405
    assert "X-Job-Charge" not in wrong
    out = io.StringIO()
    call_command("jobcredits", "balance", "ada", stdout=out)
    assert out.getvalue().strip() == "1"


def charges_counted(text: str, scope: str) -> float:
    """The jobcredits_charges_total samples of one scope in a /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "jobcredits_charges_total" and sample.labels.get("scope") == scope
    )


def test_example_metrics_count_the_charges(example: Any) -> None:
    """/metrics serves the counters of the plugin JOBCREDITS["PLUGINS"] names by
    import string: a job of two calls is one charge."""
    pytest.importorskip("prometheus_client", reason="the prometheus extra is not installed")
    assert example.JOBCREDITS["PLUGINS"] == ["jobsite.metrics:prometheus"]
    call_command("jobcredits", "grant", "ada", "1", stdout=io.StringIO())
    # One registry for the process, so earlier tests' charges are counted too.
    before = charges_counted(Client().get("/metrics").content.decode(), "summarize")
    job = str(uuid.uuid4())
    assert call("/v1/transcribe", job)["X-Job-Charge"] == "charged"
    assert call("/v1/analyze", job)["X-Job-Charge"] == "reused"
    page = Client().get("/metrics")
    assert page.status_code == 200
    assert page["Content-Type"].startswith("text/plain")
    assert charges_counted(page.content.decode(), "summarize") == before + 1
    assert 'jobcredits_charges_total{scope="summarize",tier=""}' in page.content.decode()


def test_example_metrics_without_prometheus_client_is_404(
    example: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the prometheus extra the settings name no plugin, the API still
    works, and /metrics says what to install."""
    metrics = importlib.import_module("jobsite.metrics")
    monkeypatch.setattr(metrics, "registry", None)
    with override_settings(JOBCREDITS={**example.JOBCREDITS, "URL": "memory://", "PLUGINS": []}):
        call_command("jobcredits", "grant", "ada", "1", stdout=io.StringIO())
        assert call("/v1/transcribe", str(uuid.uuid4())).status_code == 200
        page = Client().get("/metrics")
    assert page.status_code == 404
    assert b"jobcredits-plugin[prometheus]" in page.content


# -- for real: subprocesses --------------------------------------------------------------


def example_env(db: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env["DJANGO_SETTINGS_MODULE"] = "jobsite.settings"
    env["JOBCREDITS_URL"] = f"sqlite:///{db}"
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_example_passes_the_system_checks(tmp_path: Path) -> None:
    """`manage.py check` on the example reports no issue (its store is shared)."""
    result = manage(example_env(tmp_path / "jobs.db"), "check", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, limit: float = 20.0) -> None:
    import httpx

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"gunicorn exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"gunicorn not ready after {limit:g}s:\n{log.read_text()}")


async def drive(base: str, jobs: list[str]) -> list[tuple[str, str, Any]]:
    """Per job: two first calls at once (racing, likely on different workers),
    then the follow-up. Returns (job, path, response) for every call."""
    import httpx

    async with httpx.AsyncClient(base_url=base, headers=KEY, timeout=20.0) as client:

        async def post(job: str, path: str) -> tuple[str, str, Any]:
            return job, path, await client.post(path, headers={"X-Job-Id": job})

        firsts = await asyncio.gather(*(post(j, "/v1/transcribe") for j in jobs for _ in (1, 2)))
        follow_ups = await asyncio.gather(*(post(j, "/v1/analyze") for j in jobs))
    return [*firsts, *follow_ups]


@pytest.mark.slow
def test_gunicorn_two_workers_charge_each_job_exactly_once(tmp_path: Path) -> None:
    """Two gunicorn workers on one SQLite ledger: every job charged exactly once
    whichever worker served its calls, duplicates refused with 409."""
    pytest.importorskip("gunicorn")
    pytest.importorskip("httpx")
    db = tmp_path / "jobs.db"
    env = example_env(db)
    granted = manage(env, "jobcredits", "grant", "ada", "1000")
    assert granted.returncode == 0, granted.stderr
    assert granted.stdout.strip() == "1000"

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--workers",
                "2",
                "--bind",
                f"127.0.0.1:{port}",
                "--graceful-timeout",
                "5",
                "jobsite.wsgi:application",
            ],
            cwd=EXAMPLE,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(proc, f"{base}/healthz", log)
        jobs = [str(uuid.uuid4()) for _ in range(40)]
        results = asyncio.run(drive(base, jobs))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    assert len(results) == 120
    charged: collections.Counter[str] = collections.Counter()
    served: collections.Counter[str] = collections.Counter()
    for job, path, response in results:
        if response.status_code == 409:
            assert path == "/v1/transcribe"  # only a racing first call can find it pending
            assert response.json()["code"] == "job_in_progress"
            assert int(response.headers["Retry-After"]) >= 1
            continue
        assert response.status_code == 200, response.text
        served[job] += 1
        if response.headers["X-Job-Charge"] == "charged":
            charged[job] += 1
        else:
            assert response.headers["X-Job-Charge"] == "reused"
    assert charged == dict.fromkeys(jobs, 1)  # exactly once per job, across both workers

    with Ledger.from_url(f"sqlite:///{db}", balances=True) as ledger:
        records = {r.job_id: r for r in ledger.snapshot()}
        assert sorted(records) == sorted(jobs)
        for job, record in records.items():
            assert (record.account, record.scope, record.state) == ("ada", "summarize", "charged")
            assert record.uses == served[job]
        assert ledger.balance("ada") == 1000 - 40

    balance = manage(env, "jobcredits", "balance", "ada")
    assert balance.returncode == 0, balance.stderr
    assert balance.stdout.strip() == "960"
