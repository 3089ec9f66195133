"""``manage.py jobcredits`` on get_ledger(), through call_command."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest

pytest.importorskip("django")

from django.core.management import CommandError, call_command

from jobcredits_plugin import Ledger
from jobcredits_plugin.django import get_ledger
from jobcredits_plugin.testing import FakeClock


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("jobcredits", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_snapshot_with_no_jobs(jc_settings: Any) -> None:
    """An empty ledger says so."""
    jc_settings()
    assert run("snapshot")[0].strip() == "no live jobs"


def test_snapshot_lists_the_live_jobs_as_a_table(jc_settings: Any) -> None:
    """One row per live job, with its state and uses."""
    jc_settings()
    ledger = get_ledger()
    first = ledger.charge("ada", "job-1", scope="summarize")
    ledger.confirm("ada", "job-1", scope="summarize", charge_id=first.record.charge_id)
    ledger.charge("bob", "job-2")
    lines = run("snapshot")[0].splitlines()
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
    rows = sorted(line.split()[:6] for line in lines[1:])
    assert rows == [
        ["ada", "summarize", "job-1", "charged", "1", "1"],
        ["bob", "default", "job-2", "pending", "1", "1"],
    ]


def test_snapshot_limit_and_json(jc_settings: Any) -> None:
    """--limit caps the table and says how many more; --json prints every record."""
    jc_settings()
    ledger = get_ledger()
    for i in range(3):
        ledger.charge("ada", f"job-{i}")
    table = run("snapshot", "--limit", "1")[0].splitlines()
    assert len(table) == 3  # header, one row, the remainder line
    assert table[-1] == "… and 2 more"
    records = json.loads(run("snapshot", "--json")[0])
    assert sorted(r["job_id"] for r in records) == ["job-0", "job-1", "job-2"]
    assert {r["state"] for r in records} == {"pending"}


def test_prune_expires_old_jobs_and_refunds_stale_first_calls(jc_settings: Any) -> None:
    """prune removes jobs past their window and refunds first calls whose lease ran out."""
    jc_settings()
    ledger = get_ledger()
    # Other ledgers on the same store, their clocks in the past: by the real
    # clock the command's ledger reads, one job's window has closed and one
    # first call's lease has run out. (Oldest last: a charge settles whatever
    # is already due by its own clock, and these must be left to prune.)
    ledger.charge("ada", "live-job")
    Ledger(ledger.store, clock=FakeClock(time.time() - 120)).charge("ada", "stale-job")
    past = Ledger(ledger.store, clock=FakeClock(time.time() - 7200))
    old = past.charge("ada", "old-job")
    past.confirm("ada", "old-job", charge_id=old.record.charge_id)
    assert run("prune")[0].strip() == "expired 1, refunded 1"
    assert [r.job_id for r in get_ledger().snapshot()] == ["live-job"]


def test_grant_then_balance(jc_settings: Any) -> None:
    """grant prints the new balance; balance prints it back."""
    jc_settings(BALANCES=True)
    assert run("grant", "ada", "5")[0].strip() == "5"
    assert run("grant", "ada", "-2")[0].strip() == "3"
    assert run("balance", "ada") == ("3\n", "")
    assert get_ledger().balance("ada") == 3


def test_grant_with_an_id_is_applied_once(jc_settings: Any) -> None:
    """grant --id ID twice grants once and prints the first balance both times;
    the same ID with another amount is a CommandError that grants nothing."""
    jc_settings(BALANCES=True)
    assert run("grant", "--id", "pay-1", "ada", "5")[0].strip() == "5"
    assert run("grant", "ada", "1")[0].strip() == "6"
    assert run("grant", "ada", "5", "--id", "pay-1")[0].strip() == "5"
    with pytest.raises(CommandError, match="already used for a grant of 5"):
        run("grant", "--id", "pay-1", "ada", "4")
    with pytest.raises(CommandError, match="grant_id"):
        run("grant", "--id", "no spaces", "ada", "4")
    assert get_ledger().balance("ada") == 6


def test_balance_with_balances_off_prints_the_stored_figure(jc_settings: Any) -> None:
    """Balances off: the stored figure (grants are loaded before switching on) and a note."""
    jc_settings(BALANCES=False)
    run("grant", "ada", "4")
    out, err = run("balance", "ada")
    assert out.strip() == "4"
    assert "balances are off" in err


def test_ledger_errors_become_command_errors(jc_settings: Any) -> None:
    """An invalid account is a CommandError (one line, exit status 1), not a traceback."""
    jc_settings()
    with pytest.raises(CommandError, match="account"):
        run("grant", "bad\naccount", "1")


def test_an_action_is_required(jc_settings: Any) -> None:
    """No action, or an unknown one: a usage error."""
    jc_settings()
    with pytest.raises(CommandError):
        run()
    with pytest.raises(CommandError):
        run("explode")
