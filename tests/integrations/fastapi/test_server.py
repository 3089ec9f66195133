"""The example app under a real server: uvicorn with two worker processes on
one SQLite ledger, many jobs whose first calls race each other."""

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from jobcredits_plugin import Ledger  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
JOBS = 40
CALLS_PER_JOB = 3  # all sent at once: racing first calls of the job
CREDITS = 1000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"uvicorn exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"uvicorn not ready after {limit} s:\n{log.read_text()}")


async def drive(base: str) -> tuple[list[str], dict[str, list[str]]]:
    """Every job's calls at once; a 409 (first call still running) is retried
    after a short pause. Returns every X-Job-Charge and, per job, its calls'."""
    limits = httpx.Limits(max_connections=30)
    async with httpx.AsyncClient(base_url=base, timeout=10.0, limits=limits) as client:

        async def one(job: str, path: str) -> str:
            headers = {"X-Api-Key": "key-ada", "X-Job-Id": job}
            for _ in range(100):
                response = await client.post(path, headers=headers, json={"text": "a b"})
                if response.status_code == 409:
                    await asyncio.sleep(0.05)
                    continue
                assert response.status_code == 200, response.text
                return str(response.headers["X-Job-Charge"])
            raise AssertionError(f"job {job} still in progress after 100 tries")

        jobs = [str(uuid.uuid4()) for _ in range(JOBS)]
        paths = ["/v1/summarize", "/v1/analyze", "/v1/summarize"]
        tasks = {
            job: [asyncio.ensure_future(one(job, paths[i])) for i in range(CALLS_PER_JOB)]
            for job in jobs
        }
        per_job = {job: list(await asyncio.gather(*ts)) for job, ts in tasks.items()}
    return [c for calls in per_job.values() for c in calls], per_job


@pytest.mark.slow
def test_two_uvicorn_workers_charge_each_job_exactly_once(tmp_path: Path) -> None:
    """40 jobs x 3 racing calls over 2 uvicorn workers sharing a SQLite ledger:
    each job is charged exactly once, its other calls reused, and the balance
    is debited once per job."""
    db = tmp_path / "jobs.db"
    url = f"sqlite:///{db}"
    with Ledger.from_url(url, balances=True) as ledger:
        ledger.grant("acct-ada", CREDITS)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "uvicorn.log"
    env = {**os.environ, "JOBCREDITS_URL": url, "SUMMARIZE_LATENCY": "0.05"}
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "examples.fastapi_app:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "2",
        "--log-level",
        "warning",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(base, proc, log)
        outcomes, per_job = asyncio.run(drive(base))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    assert Counter(outcomes) == {"charged": JOBS, "reused": JOBS * (CALLS_PER_JOB - 1)}
    for job, calls in per_job.items():
        assert calls.count("charged") == 1, (job, calls)
    with Ledger.from_url(url, balances=True) as ledger:
        records = ledger.snapshot()
        assert ledger.balance("acct-ada") == CREDITS - JOBS
    assert {r.job_id for r in records} == set(per_job)
    assert all(r.state == "charged" and r.uses == CALLS_PER_JOB for r in records)
    assert {r.scope for r in records} == {"summarize"}
