"""Real servers with four worker processes under a bounded load: nothing lost,
nothing charged twice.

Each example app (Flask and Django under gunicorn, FastAPI under uvicorn) on
each shared store (SQLite, Redis, PostgreSQL), balances on; and the Django
example on DjangoStore, its ledger in the project's database through the ORM
(``django://default``, on a SQLite file and on PostgreSQL, ``manage.py
migrate`` first). The load: jobs of
3 calls from concurrent clients; 10% of jobs send their charging call twice at
once, 5% have their first call fail upstream (502, refunded) and retry it
with the same job id; one account runs out of credits. Then the books must
balance exactly against the ledger (see ``_books.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("httpx")

from jobcredits_plugin import Ledger
from tests.system._books import check_books
from tests.system._load import Scenario, run_load_sync
from tests.system._servers import (
    DJANGO_STORES,
    KINDS,
    LEASE,
    STORES,
    grant,
    provision_store,
    require,
    start_server,
)
from tests.system.conftest import LOAD_LATENCY, Report, Sizes

pytestmark = pytest.mark.slow


#: (server, store): each example on each shared store, and the Django example
#: on DjangoStore (its ledger in the project's database) on SQLite and PostgreSQL.
RUNS = [(kind, store) for kind in KINDS for store in STORES] + [
    ("django", store) for store in DJANGO_STORES
]


#: The load's deadline (seconds) on DjangoStore. The ORM's statements make a
#: call several times dearer than on the native stores (docs/performance.md):
#: the full load (2,000 jobs) served 908 (SQLite) and 1,594 (PostgreSQL) of
#: its 5,830 calls in the stores' 60 s on the 2-core VM at a load average of
#: 12 (2026-12-06), every other check of the books holding.
DJANGO_STORE_DEADLINE = 240.0


@pytest.mark.timeout(360)
@pytest.mark.parametrize(("kind", "store"), RUNS)
def test_load_balances_the_books(
    kind: str, store: str, tmp_path: Path, sizes: Sizes, system_report: Report
) -> None:
    """Four workers, one shared ledger, a load with duplicates, upstream
    failures and an account running dry: every job charged once at most,
    every failed charging call refunded, debits = charged jobs x cost, no
    balance below zero, no 5xx but the injected ones, every 402 deserved, and
    no worker lost."""
    require(kind)
    jobs = sizes.django_store_jobs if store in DJANGO_STORES else sizes.jobs
    # The shorter load of a reduced DjangoStore run draws its jobs from
    # another seed: the first 80 jobs of seed 7 hold no injected failure,
    # those of seed 4 hold six (and eleven duplicates, an account run dry).
    scenario = Scenario(
        jobs=jobs,
        clients=sizes.clients,
        seed=7 if jobs == sizes.jobs else 4,
        deadline=DJANGO_STORE_DEADLINE if store in DJANGO_STORES else 60.0,
    )
    env = {**scenario.api_keys_env(), "SUMMARIZE_LATENCY": LOAD_LATENCY}
    with provision_store(store, tmp_path) as url:
        grant(url, scenario.granted())
        with start_server(kind, url, env=env, log_dir=tmp_path) as server:
            workers = set(server.worker_pids())
            result = run_load_sync(server.base_url, scenario, path=server.charged_paths)
            assert set(server.worker_pids()) == workers, "a worker died under the load"
        log = server.log_text()
        with Ledger.from_url(url, balances=True, lease=LEASE) as ledger:
            books = check_books(result, ledger, scenario.granted(), cost=scenario.cost)

    assert "Traceback" not in log, log[-4000:]
    # The load did what it says: duplicates raced, failures were injected and
    # refunded, the short account ran dry, and most jobs were served.
    assert books.refunded > 0
    assert books.rejected > 0
    assert sum(1 for c in result.calls if c.duplicate) > 0
    assert books.charged_jobs == result.jobs_by_outcome()["done"]
    # The journal alone tells the same story (check_books rebuilt every
    # balance from it): one refund entry per refund the clients or the
    # settling saw, and the charges left standing are the charged jobs.
    assert books.journal.get("refund", 0) == books.refunded + books.settled
    assert books.journal["charge"] - books.journal.get("refund", 0) == books.charged_jobs
    system_report.load.append(
        {
            "server": kind,
            "store": store,
            "workers": len(workers),
            "jobs": scenario.jobs,
            "clients": scenario.clients,
            "calls": len(result.calls),
            "seconds": round(result.duration, 2),
            "statuses": {str(k): v for k, v in sorted(result.count_by_status().items(), key=str)},
            "books": books.as_dict(),
            "summary": result.summary(),
        }
    )
