"""The `flask jobcredits` command group, on the app's own ledger."""

from __future__ import annotations

import json
from typing import Any

import pytest

flask = pytest.importorskip("flask")

from jobcredits_plugin import Ledger  # noqa: E402
from jobcredits_plugin.flask import JobCredits  # noqa: E402
from jobcredits_plugin.stores import ClaimRequest, MemoryStore  # noqa: E402
from jobcredits_plugin.testing import FakeClock, make_ledger  # noqa: E402


class SnapshotDown(MemoryStore):
    """A store that cannot be read."""

    def snapshot(self, now: float) -> Any:
        raise ConnectionError("backend unreachable")

    def claim(self, req: ClaimRequest) -> Any:  # pragma: no cover - never called
        raise ConnectionError("backend unreachable")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_app(ledger: Ledger) -> Any:
    app = flask.Flask(__name__)
    app.config["JOBCREDITS_ACCOUNT"] = None  # no view is charged: the commands only
    JobCredits(app, ledger)
    return app


def invoke(app: Any, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=["jobcredits", *args])


def test_snapshot_lists_the_live_jobs_as_a_table(clock: FakeClock) -> None:
    """`snapshot` prints one row per live job of the app's ledger, with ISO times."""
    ledger = make_ledger(clock=clock)
    ledger.charge("acct-1", "job-1", scope="summarize", cost=2)
    ledger.confirm("acct-1", "job-1", scope="summarize")
    ledger.charge("acct-2", "job-2")
    result = invoke(make_app(ledger), "snapshot")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "account",
        "scope",
        "job_id",
        "state",
        "cost",
        "uses",
        "charged_at",
        "expires_at",
    ]
    assert lines[1].split()[:6] == ["acct-1", "summarize", "job-1", "charged", "2", "1"]
    assert lines[2].split()[:4] == ["acct-2", "default", "job-2", "pending"]
    assert "2023-11-14T22:13:20Z" in lines[1]
    assert len(lines) == 3


def test_snapshot_json_and_limit(clock: FakeClock) -> None:
    """`snapshot --json` prints every live job as JSON; `--limit` cuts the table and says
    how many more there are."""
    ledger = make_ledger(clock=clock)
    for n in range(3):
        ledger.charge("acct", f"job-{n}")
    app = make_app(ledger)
    data = json.loads(invoke(app, "snapshot", "--json").stdout)
    assert [d["job_id"] for d in data] == ["job-0", "job-1", "job-2"]
    assert data[0]["state"] == "pending"
    limited = invoke(app, "snapshot", "--limit", "1").stdout.splitlines()
    assert len(limited) == 3
    assert limited[-1] == "… and 2 more"


def test_snapshot_of_an_empty_ledger(clock: FakeClock) -> None:
    """`snapshot` on an empty ledger says so."""
    result = invoke(make_app(make_ledger(clock=clock)), "snapshot")
    assert result.exit_code == 0
    assert result.stdout.strip() == "no live jobs"


def test_prune_expires_and_refunds(clock: FakeClock) -> None:
    """`prune` removes expired jobs and refunds stale first calls, and says how many."""
    ledger = make_ledger(clock=clock, ttl=100, lease=10)
    ledger.charge("acct", "done")
    ledger.confirm("acct", "done")
    clock.advance(50)
    ledger.charge("acct", "stuck")
    clock.advance(60)  # "done" expired (110 > 100), "stuck" past its lease
    result = invoke(make_app(ledger), "prune")
    assert result.exit_code == 0
    assert result.stdout.strip() == "expired 1, refunded 1"
    assert ledger.snapshot() == []


def test_grant_and_balance(clock: FakeClock) -> None:
    """`grant ACCOUNT N` adds credits and prints the new balance; `balance` prints it;
    a negative N (after `--`) takes credits away."""
    ledger = make_ledger(clock=clock, balances=True)
    app = make_app(ledger)
    assert invoke(app, "grant", "acct-1", "10").stdout.strip() == "10"
    assert invoke(app, "grant", "--", "acct-1", "-3").stdout.strip() == "7"
    result = invoke(app, "balance", "acct-1")
    assert result.exit_code == 0
    assert result.stdout.strip() == "7"
    assert result.stderr == ""
    assert ledger.balance("acct-1") == 7


def test_grant_with_an_id_is_applied_once(clock: FakeClock) -> None:
    """`grant --id ID ACCOUNT N` twice grants once; the repeat prints the first
    balance; the same ID with another amount is an error (exit 1)."""
    ledger = make_ledger(clock=clock, balances=True)
    app = make_app(ledger)
    assert invoke(app, "grant", "--id", "pay-1", "acct-1", "10").stdout.strip() == "10"
    assert invoke(app, "grant", "acct-1", "1").stdout.strip() == "11"
    assert invoke(app, "grant", "--id", "pay-1", "acct-1", "10").stdout.strip() == "10"
    assert invoke(app, "grant", "--id", "pay-2", "--", "acct-1", "-3").stdout.strip() == "8"
    assert invoke(app, "grant", "--id", "pay-2", "--", "acct-1", "-3").stdout.strip() == "8"
    clash = invoke(app, "grant", "--id", "pay-1", "acct-1", "9")
    assert clash.exit_code == 1
    assert "already used for a grant of 10" in clash.stderr
    assert ledger.balance("acct-1") == 8


def test_balance_with_balances_off_shows_the_stored_figure(clock: FakeClock) -> None:
    """With balances off, `balance` prints the stored figure and notes on stderr that
    nothing enforces it."""
    ledger = make_ledger(clock=clock)
    ledger.grant("acct-1", 4)
    result = invoke(make_app(ledger), "balance", "acct-1")
    assert result.exit_code == 0
    assert result.stdout.strip() == "4"
    assert "balances are off" in result.stderr


def test_ledger_errors_are_one_line_and_exit_1(clock: FakeClock) -> None:
    """A ledger error (a bad account, the store down) is one `Error:` line and exit 1,
    not a traceback."""
    app = make_app(make_ledger(clock=clock))
    bad = invoke(app, "grant", "bad\naccount", "1")
    assert bad.exit_code == 1
    assert "Error: account must not contain control characters" in bad.stderr
    down = invoke(make_app(Ledger(SnapshotDown(), clock=clock)), "snapshot")
    assert down.exit_code == 1
    assert "unreachable" in down.stderr
    assert "Traceback" not in down.output


def test_grant_needs_an_integer(clock: FakeClock) -> None:
    """`grant` rejects a non-integer N with click's usage error (exit 2)."""
    result = invoke(make_app(make_ledger(clock=clock)), "grant", "acct", "ten")
    assert result.exit_code == 2
    assert "not a valid integer" in result.stderr


def test_the_commands_use_the_apps_ledger(clock: FakeClock) -> None:
    """Two apps, two ledgers: each app's commands see only its own jobs."""
    one, two = make_ledger(clock=clock), make_ledger(clock=clock)
    one.charge("acct", "only-in-one")
    assert "only-in-one" in invoke(make_app(one), "snapshot").stdout
    assert invoke(make_app(two), "snapshot").stdout.strip() == "no live jobs"
