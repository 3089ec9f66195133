"""The example app under gunicorn with two worker processes on one SQLite ledger: every
job is charged exactly once across the workers, however its calls race."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("flask")
pytest.importorskip("gunicorn")
httpx = pytest.importorskip("httpx")

from jobcredits_plugin import Ledger  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
ACCOUNT = "acct-ada"
KEY = {"X-Api-Key": "key-ada"}
GRANT = 1_000
JOBS = 40  # each: 3 concurrent first calls, then 1 follow-up
FAILING_JOBS = 10  # each: a call answering 502 (refunded), then a retry
READY_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll until the server answers anything (bounded), or fail with its log."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"gunicorn exited with {proc.returncode}:\n{log.read_text()}")
        try:
            httpx.get(f"{base}/v1/summarize", timeout=1.0)
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        return
    pytest.fail(f"gunicorn not ready after {READY_TIMEOUT} s:\n{log.read_text()}")


@pytest.mark.slow
def test_gunicorn_two_workers_charge_each_job_once(tmp_path: Path) -> None:
    """Under gunicorn -w 2 on a SQLite ledger, concurrent first calls of a job are
    charged once in all (the others get 409 or ride free), follow-ups are free, failed
    calls are refunded, and the file's balance and snapshot agree with the headers."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with Ledger.from_url(url) as ledger:
        ledger.grant(ACCOUNT, GRANT)  # a shared store is granted once, before the workers

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "gunicorn.log"
    env = {
        **os.environ,
        "JOBCREDITS_URL": url,
        "SUMMARIZE_LATENCY": "0.05",  # long enough for a job's calls to overlap
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "-w",
        "2",
        "-b",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "5",
        "examples.flask_app:create_app()",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(base, proc, log)
        outcomes: dict[str, list[tuple[int, str | None]]] = defaultdict(list)

        with httpx.Client(base_url=base, timeout=10.0) as client:

            def call(job: str, query: str = "") -> None:
                r = client.post(
                    f"/v1/summarize{query}", headers={**KEY, "X-Job-Id": job}, json={"text": "x"}
                )
                outcomes[job].append((r.status_code, r.headers.get("X-Job-Charge")))

            jobs = [f"job-{n:03d}" for n in range(JOBS)]
            failing = [f"fail-{n:03d}" for n in range(FAILING_JOBS)]
            with ThreadPoolExecutor(max_workers=12) as pool:
                # Three first calls of each job at once, then one follow-up each.
                list(pool.map(call, [job for job in jobs for _ in range(3)]))
                list(pool.map(call, jobs))
                list(pool.map(lambda job: call(job, "?fail=1"), failing))
                list(pool.map(call, failing))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    assert log.read_text().count("Booting worker") >= 2  # two processes served

    for job in jobs:
        seen = outcomes[job]
        assert len(seen) == 4
        charges = Counter(charge for _, charge in seen)
        assert charges["charged"] == 1, (job, seen)
        assert {status for status, _ in seen} <= {200, 409}
        assert seen[-1] == (200, "reused")  # the follow-up after the race is free
    # The calls did race: some found their job's first call still running.
    assert sum(status == 409 for job in jobs for status, _ in outcomes[job]) > 0
    for job in failing:
        assert outcomes[job] == [(502, "refunded"), (200, "charged")]

    with Ledger.from_url(url, balances=True) as ledger:
        records = {r.job_id: r for r in ledger.snapshot()}
        assert set(records) == set(jobs) | set(failing)
        assert {r.state for r in records.values()} == {"charged"}
        for job in jobs:
            served = sum(1 for status, _ in outcomes[job] if status == 200)
            assert records[job].uses == served
        assert ledger.balance(ACCOUNT) == GRANT - JOBS - FAILING_JOBS
