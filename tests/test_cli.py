"""The ``jobcredits`` command: the demo's figures, the operator commands on a
SQLite file, and errors that are one line on stderr, never a traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest

from jobcredits_plugin import JobInProgress, Ledger, __version__
from jobcredits_plugin._demo import build_app, call
from jobcredits_plugin.cli import main
from jobcredits_plugin.testing import FakeClock

# The demo's figures for seed 1 and 40 jobs, as the table prints them:
# granted, charged, reused, refunded, expired, live, 402, 409, balance.
SEED1 = {
    "demo:ada": [30, 13, 9, 1, 6, 6, 0, 1, 18],
    "demo:bob": [15, 12, 10, 0, 5, 7, 0, 0, 3],
    "demo:cy": [6, 10, 3, 4, 5, 1, 8, 2, 0],
    "demo:dee": [3, 3, 3, 0, 3, 0, 4, 0, 0],
    "total": [54, 38, 25, 5, 19, 14, 12, 3, 21],
}
COLUMNS = ("granted", "charged", "reused", "refunded", "expired", "live", "402", "409", "balance")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def demo_rows(out: str) -> dict[str, dict[str, int]]:
    """The demo table's rows, by account (and "total")."""
    rows = {}
    for line in out.splitlines():
        m = re.fullmatch(r"(demo:\w+|total)\s+([\d\s]+)", line)
        if m:
            rows[m[1]] = dict(zip(COLUMNS, map(int, m[2].split()), strict=True))
    return rows


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"  # an absolute path: four slashes in all


@pytest.fixture
def db(tmp_path: Path) -> str:
    """The URL of a SQLite file that exists and holds no jobs."""
    url = sqlite_url(tmp_path / "jobs.db")
    Ledger.from_url(url).close()
    return url


# -- demo --------------------------------------------------------------------------


def test_demo_figures_are_exact_for_a_seed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "demo")
    assert code == 0, err
    assert err == ""
    rows = demo_rows(out)
    assert {k: list(v.values()) for k, v in rows.items()} == SEED1
    assert "calls: 78 (200 ok 55, 402 insufficient_credits 12, 409 job_in_progress 3,\n" in out
    assert "second calls after the 1h window: 5 (charged 2, insufficient_credits 3)" in out
    assert len(out.splitlines()) <= 30


def test_demo_fits_80_columns_and_says_what_live_means(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The report of the default run reads in an 80-column terminal, and its
    legend explains the columns whose name is not self-evident."""
    code, out, _ = run(capsys, "demo")
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 80
    legend = " ".join(out.split())
    assert "live: jobs still inside their 1h window at the end" in legend
    assert "402: calls refused for want of credit" in legend
    assert "409: calls refused while the job's first call ran" in legend


# -- demo --trace --------------------------------------------------------------------------


def trace_steps(out: str) -> dict[str, dict[str, str]]:
    """The trace's steps by their first line ("[0:00:00] POST /transcribe
    X-Job-Id: job-1 (a new job)"): each a dict of its labelled lines."""
    steps: dict[str, dict[str, str]] = {}
    for block in out.split("\n\n"):
        head, *rest = block.splitlines()
        if not head.startswith("[") or not rest:
            continue
        fields: dict[str, str] = {}
        label = ""
        for line in rest:
            name, _, text = line.strip().partition(" ")
            if line.startswith("  ") and not line.startswith("   "):
                label = name
                fields[label] = text.strip()
            else:
                fields[label] += " " + line.strip()
        steps[" ".join(head.split())] = {k: " ".join(v.split()) for k, v in fields.items()}
    return steps


def test_demo_trace_walks_one_account_through_every_outcome(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A charge, a 409 while it runs, a free follow-up, a refund on a failed
    backend and the retry charged anew, a 402, an expiry, a prune: each step
    with its decision, hooks, headers and balance."""
    code, out, err = run(capsys, "demo", "--trace")
    assert (code, err) == (0, "")
    steps = trace_steps(out)
    hooks = {head: step["hooks"] for head, step in steps.items()}
    assert list(hooks.values()) == [
        "on_charge",
        "none",
        "on_reuse",
        "on_charge, on_refund",
        "on_charge",
        "on_reuse",
        "none",
        "on_expire, on_charge",
        "on_expire(job-2)",
    ]
    first = steps["[0:00:00] POST /transcribe X-Job-Id: job-1 (a new job)"]
    assert first["headers"] == "X-Job-Charge: charged X-Credits-Remaining: 1"
    assert first["after"] == "job-1: charged, uses 1, window ends 1:00:00; balance 1"
    busy = steps["[0:00:00] POST /transcribe X-Job-Id: job-1 (sent again while the first runs)"]
    assert busy["before"].startswith("job-1: pending")
    assert "409" in busy["app"]
    assert "job_in_progress" in busy["app"]
    assert busy["headers"].startswith("Retry-After: ")
    failed = steps["[0:05:00] POST /transcribe X-Job-Id: job-2 (a new job; the backend fails)"]
    assert "refunds the charge" in failed["app"]
    assert failed["headers"] == "X-Job-Charge: refunded X-Credits-Remaining: 1"
    broke = steps["[0:11:00] POST /transcribe X-Job-Id: job-3 (a new job, no credit left)"]
    assert "402" in broke["app"]
    assert broke["ledger"] == "refused: balance 0 < cost 1; nothing is recorded"
    late = steps["[1:05:00] POST /analyze X-Job-Id: job-1 (back after the 1h window)"]
    assert "window had closed" in late["ledger"]
    assert "live at the end: job-1." in out


def test_demo_trace_is_the_same_every_run_and_fits_80_columns(
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = run(capsys, "demo", "--trace")[1]
    assert run(capsys, "demo", "--trace")[1] == first
    assert max(len(line) for line in first.splitlines()) <= 80


def test_demo_trace_reports_what_the_library_does(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trace is read off real calls, not printed from a script: a
    middleware that confirms nothing shows up in it."""
    from jobcredits_plugin import Ledger as RealLedger

    monkeypatch.setattr(RealLedger, "confirm", lambda self, *a, **k: None)  # confirms nothing
    out = run(capsys, "demo", "--trace")[1]
    first = trace_steps(out)["[0:00:00] POST /transcribe X-Job-Id: job-1 (a new job)"]
    assert first["hooks"] == "on_charge, on_refund"
    assert first["app"] == "answered 200: the charge could not be confirmed; refunded"
    assert first["headers"] == "X-Job-Charge: refunded X-Credits-Remaining: 2"


def test_demo_trace_takes_no_store(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "demo", "--trace", "--store", "sqlite:///demo.db")
    assert (code, out) == (2, "")
    assert "--trace runs on its own memory store" in err


def test_demo_books_balance(capsys: pytest.CaptureFixture[str]) -> None:
    """What the balances lost is what was charged and not refunded, and every
    charge ended refunded, expired or still live."""
    code, out, _ = run(capsys, "demo", "--seed", "3", "--jobs", "60")
    assert code == 0
    rows = demo_rows(out)
    for name, r in rows.items():
        assert r["granted"] - r["balance"] == r["charged"] - r["refunded"], name
        assert r["charged"] == r["refunded"] + r["expired"] + r["live"], name
    for column in COLUMNS:
        assert rows["total"][column] == sum(r[column] for n, r in rows.items() if n != "total")
    assert out.count(": ok") == 2
    assert "MISMATCH" not in out


def test_demo_is_deterministic_per_seed(capsys: pytest.CaptureFixture[str]) -> None:
    first = run(capsys, "demo", "--seed", "9")[1]
    assert run(capsys, "demo", "--seed", "9")[1] == first
    assert run(capsys, "demo", "--seed", "10")[1] != first


def test_demo_on_sqlite_matches_memory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "demo.db")
    memory = run(capsys, "demo")[1]
    code, out, err = run(capsys, "demo", "--store", url)
    assert code == 0, err
    assert (tmp_path / "demo.db").exists()
    assert out.splitlines()[1].startswith(f"store {url}; ")
    assert out.splitlines()[2:] == memory.splitlines()[2:]


def test_demo_rerun_on_a_file_starts_afresh_and_leaves_live_jobs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The simulation ends at the real present, so its live jobs are live for a
    later snapshot; a second run sets the balances again and does not count
    the first run's jobs."""
    url = sqlite_url(tmp_path / "demo.db")
    first = run(capsys, "demo", "--store", url)[1]
    second = run(capsys, "demo", "--store", url)[1]
    assert demo_rows(second) == demo_rows(first)
    with Ledger.from_url(url, balances=True) as ledger:
        live = ledger.snapshot()
        assert ledger.balance("demo:ada") == SEED1["demo:ada"][-1]
    assert len(live) == 2 * SEED1["total"][5]
    assert {r.state for r in live} == {"charged"}
    assert all(r.expires_at > time.time() for r in live)


def test_demo_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "demo", "--jobs", "0")
    assert code == 2
    assert err.startswith("jobcredits: error: argument --jobs")
    code, _, err = run(capsys, "demo", "--store", "ftp://nowhere")
    assert code == 1
    assert "unknown store URL scheme 'ftp'" in err


@pytest.mark.parametrize("jobs", ["100001", "100000000000", str(2**64)])
def test_demo_refuses_more_jobs_than_it_can_run(
    capsys: pytest.CaptureFixture[str], jobs: str
) -> None:
    """--jobs 100000000000 ran into a clock before 1970 (the demo's clock
    starts far enough back for every job) and was reported as a broken clock;
    the argument is bounded instead, as a usage error naming it."""
    code, out, err = run(capsys, "demo", "--jobs", jobs)
    assert code == 2
    assert out == ""
    assert err.startswith("jobcredits: error: argument --jobs: invalid int from 1 to 100000")
    assert len(err.splitlines()) == 1


# -- the demo's WSGI app -------------------------------------------------------------------


@attrs.define
class Upstream:
    """A backend that fails when told to, and can run a callback mid-call."""

    fail: bool = False
    during: list[object] = attrs.Factory(list)

    def __call__(self, environ: dict[str, object], step: str) -> dict[str, str]:
        for hook in self.during:
            hook()  # type: ignore[operator]
        self.during.clear()
        if self.fail:
            from jobcredits_plugin._demo import UpstreamError

            raise UpstreamError(f"{step} failed")
        return {"step": step}


def test_app_tells_the_client_what_each_call_cost() -> None:
    upstream = Upstream()
    with Ledger(balances=True, clock=FakeClock()) as ledger:
        ledger.grant("acct", 2)
        app = build_app(ledger, upstream)

        first = call(app, "/transcribe", "acct", "job-1")
        assert (first.status, first.headers["X-Job-Charge"]) == (200, "charged")
        assert first.headers["X-Credits-Remaining"] == "1"
        follow = call(app, "/analyze", "acct", "job-1")
        assert (follow.status, follow.headers["X-Job-Charge"]) == (200, "reused")

        upstream.fail = True
        failed = call(app, "/transcribe", "acct", "job-2")
        assert failed.status == 502
        assert failed.headers["X-Job-Charge"] == "refunded"
        assert failed.headers["X-Credits-Remaining"] == "1"
        assert ledger.balance("acct") == 1
        failed_follow = call(app, "/analyze", "acct", "job-1")
        assert failed_follow.headers["X-Job-Charge"] == "reused"  # nothing to give back

        upstream.fail = False
        retry = call(app, "/transcribe", "acct", "job-2")
        assert retry.headers["X-Job-Charge"] == "charged"
        assert ledger.balance("acct") == 0


def test_app_answers_errors_as_problem_json() -> None:
    upstream = Upstream()
    with Ledger(balances=True, clock=FakeClock()) as ledger:
        app = build_app(ledger, upstream)
        broke = call(app, "/transcribe", "acct", "job-1")
        assert broke.status == 402
        assert broke.headers["Content-Type"] == "application/problem+json"
        assert broke.body["code"] == "insufficient_credits"
        assert "X-Job-Charge" not in broke.headers

        ledger.grant("acct", 1)
        seen = []
        upstream.during.append(lambda: seen.append(call(app, "/transcribe", "acct", "job-1")))
        assert call(app, "/transcribe", "acct", "job-1").status == 200
        (dup,) = seen
        assert dup.status == 409
        assert dup.body["code"] == "job_in_progress"
        assert dup.headers["Retry-After"] == JobInProgress(retry_after=60).headers()["Retry-After"]

        bad = call(app, "/transcribe", "acct", "no spaces allowed")
        assert (bad.status, bad.body["code"]) == (400, "invalid_job_id")


# -- snapshot, prune, grant, balance ---------------------------------------------------


def fill(url: str, n: int) -> list[str]:
    """``n`` live jobs, all confirmed but the last (still pending)."""
    ids = [f"job-{i:02d}" for i in range(n)]
    with Ledger.from_url(url) as ledger:
        for i, job_id in enumerate(ids):
            ledger.charge(f"acct-{i % 2}", job_id, scope="summarize", cost=2)
            if i < n - 1:
                ledger.confirm(f"acct-{i % 2}", job_id, scope="summarize")
    return ids


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def test_snapshot_table(capsys: pytest.CaptureFixture[str], db: str) -> None:
    fill(db, 3)
    with Ledger.from_url(db) as ledger:
        records = ledger.snapshot()
    code, out, err = run(capsys, "snapshot", "--url", db)
    assert (code, err) == (0, "")
    lines = out.splitlines()
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
    assert len(lines) == 4
    for line, r in zip(lines[1:], records, strict=True):
        assert line.split() == [
            r.account,
            r.scope,
            r.job_id,
            r.state,
            "2",
            "1",
            iso(r.charged_at),
            iso(r.expires_at),
        ]
    assert [line.split()[3] for line in lines[1:]] == ["charged", "charged", "pending"]


def test_snapshot_limit_truncates_the_table(capsys: pytest.CaptureFixture[str], db: str) -> None:
    fill(db, 5)
    code, out, _ = run(capsys, "snapshot", "--url", db, "--limit", "2")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 4
    assert [line.split()[2] for line in lines[1:3]] == ["job-00", "job-01"]
    assert lines[3] == "… and 3 more"
    assert run(capsys, "snapshot", "--url", db, "--limit", "0")[1] == "… and 5 more\n"
    assert "more" not in run(capsys, "snapshot", "--url", db, "--limit", "5")[1]


def test_snapshot_json_lists_every_live_job(capsys: pytest.CaptureFixture[str], db: str) -> None:
    fill(db, 4)
    with Ledger.from_url(db) as ledger:
        expected = [attrs.asdict(r) for r in ledger.snapshot()]
    code, out, _ = run(capsys, "snapshot", "--url", db, "--json", "--limit", "1")
    assert code == 0
    assert json.loads(out) == expected  # --limit is for the table only
    assert len(expected) == 4


def test_snapshot_of_an_empty_store(capsys: pytest.CaptureFixture[str], db: str) -> None:
    assert run(capsys, "snapshot", "--url", db)[1] == "no live jobs\n"
    assert json.loads(run(capsys, "snapshot", "--url", db, "--json")[1]) == []


# -- stats --------------------------------------------------------------------------


def test_stats_json_counts_live_jobs_by_state_and_scope(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    fill(db, 3)  # summarize: 2 charged + 1 pending, cost 2 each
    with Ledger.from_url(db) as ledger:
        ledger.charge("acct-9", "other", scope="translate")  # pending, cost 1
        ledger.charge("acct-9", "gone", scope="translate")
        ledger.refund("acct-9", "gone", scope="translate")  # not live: not counted
        first = min(ledger.snapshot(), key=lambda r: r.charged_at)
    code, out, err = run(capsys, "stats", "--url", db, "--json")
    assert (code, err) == (0, "")
    stats = json.loads(out)
    assert stats["live_jobs"] == 4
    assert stats["by_state"] == {"pending": 2, "charged": 2}
    assert stats["by_scope"] == {
        "summarize": {"pending": 1, "charged": 2, "credits": 6},
        "translate": {"pending": 1, "charged": 0, "credits": 1},
    }
    assert stats["credits_held"] == 7
    assert stats["credits_refundable"] == 3
    oldest = stats["oldest"]
    assert (oldest["job_id"], oldest["account"], oldest["scope"]) == (
        first.job_id,
        first.account,
        first.scope,
    )
    assert oldest["charged_at"] == first.charged_at
    assert oldest["age_seconds"] >= 0


def test_stats_report(capsys: pytest.CaptureFixture[str], db: str) -> None:
    fill(db, 3)
    code, out, _ = run(capsys, "stats", "--url", db)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "live jobs: 3 (pending 1, charged 2)"
    assert lines[1] == "credits held: 6 (2 refundable while pending)"
    assert lines[2].startswith("oldest job: job-00 of acct-0 in summarize (charged, charged ")
    assert lines[4].split() == ["scope", "pending", "charged", "credits"]
    assert lines[5].split() == ["summarize", "1", "2", "6"]


def test_stats_of_an_empty_store(capsys: pytest.CaptureFixture[str], db: str) -> None:
    code, out, _ = run(capsys, "stats", "--url", db)
    assert code == 0
    assert out.splitlines() == [
        "live jobs: 0 (pending 0, charged 0)",
        "credits held: 0 (0 refundable while pending)",
    ]
    assert json.loads(run(capsys, "stats", "--url", db, "--json")[1])["oldest"] is None


def test_stats_refuses_a_missing_sqlite_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "stats", "--url", sqlite_url(tmp_path / "typo.db"))
    assert code == 1
    assert "no SQLite database" in err
    assert not (tmp_path / "typo.db").exists()


def test_url_comes_from_the_environment(
    capsys: pytest.CaptureFixture[str], db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(db, 1)
    monkeypatch.setenv("JOBCREDITS_URL", db)
    code, out, _ = run(capsys, "snapshot")
    assert code == 0
    assert "job-00" in out


def test_prune_reports_expired_and_refunded(capsys: pytest.CaptureFixture[str], db: str) -> None:
    """Two jobs charged two hours ago have expired; a first call that never
    finished is past its lease and is refunded, its credit given back."""
    clock = FakeClock(time.time() - 7200)
    with Ledger.from_url(db, clock=clock, balances=True) as ledger:
        ledger.grant("acct", 5)
        for job_id in ("old-1", "old-2"):
            ledger.charge("acct", job_id)
            ledger.confirm("acct", job_id)
        ledger.charge("acct", "stuck")
    fill(db, 1)  # live now: not pruned
    code, out, _ = run(capsys, "prune", "--url", db)
    assert (code, out) == (0, "expired 2, refunded 1\n")
    assert run(capsys, "balance", "--url", db, "acct")[1] == "3\n"
    assert run(capsys, "prune", "--url", db)[1] == "expired 0, refunded 0\n"
    assert "job-00" in run(capsys, "snapshot", "--url", db)[1]


def test_grant_and_balance(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "new.db")  # a grant may create the file
    assert run(capsys, "grant", "--url", url, "acct", "10") == (0, "10\n", "")
    assert run(capsys, "grant", "--url", url, "acct", "-3") == (0, "7\n", "")
    assert run(capsys, "balance", "--url", url, "acct") == (0, "7\n", "")
    assert run(capsys, "grant", "--url", url, "acct", "-100")[1] == "0\n"  # never below zero
    assert run(capsys, "balance", "--url", url, "nobody")[1] == "0\n"
    with Ledger.from_url(url, balances=True) as ledger:
        assert ledger.balance("acct") == 0


def test_grant_with_an_id_is_applied_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Issue 13, item 6: `grant --id ID` run twice (a script re-run after a
    failure) grants once; the repeat prints the first run's balance. The same
    ID with another amount is an error that grants nothing."""
    url = sqlite_url(tmp_path / "ids.db")
    assert run(capsys, "grant", "--url", url, "--id", "pay-1", "acct", "10") == (0, "10\n", "")
    assert run(capsys, "grant", "--url", url, "acct", "2") == (0, "12\n", "")
    assert run(capsys, "grant", "--url", url, "acct", "10", "--id", "pay-1") == (0, "10\n", "")
    assert run(capsys, "grant", "--url", url, "--id", "pay-1", "other", "10")[1] == "10\n"
    code, out, err = run(capsys, "grant", "--url", url, "--id", "pay-1", "acct", "11")
    assert (code, out) == (1, "")
    assert "already used for a grant of 10" in err
    code, out, err = run(capsys, "grant", "--url", url, "--id", "bad id", "acct", "1")
    assert (code, out) == (1, "")
    assert "grant_id" in err
    assert run(capsys, "balance", "--url", url, "acct") == (0, "12\n", "")
    with Ledger.from_url(url, balances=True) as ledger:
        assert [e.cost for e in ledger.journal() if e.account == "acct"] == [10, 2]


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--version") == (0, f"jobcredits {__version__}\n", "")
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("demo", "snapshot", "prune", "grant", "balance"):
        assert command in out


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        ([], 2, "the following arguments are required: COMMAND"),
        (["refund"], 2, "invalid choice: 'refund'"),
        (["balance", "acct"], 2, "no store URL: pass --url or set JOBCREDITS_URL"),
        (["grant", "--url", "{db}", "acct", "ten"], 2, "argument N: invalid int value: 'ten'"),
        (["grant", "--url", "{db}", "acct", "1.5"], 2, "invalid int value: '1.5'"),
        (["grant", "--url", "{db}"], 2, "required: ACCOUNT, N"),
        (["snapshot", "--url", "{db}", "--limit", "-1"], 2, "invalid non-negative int value"),
        (["grant", "--url", "{db}", "", "1"], 1, "account must not be empty"),
        (["balance", "--url", "{db}", "a\x07b"], 1, "account must not contain control"),
        (["grant", "--url", "{db}", "x" * 300, "1"], 1, "at most 256 allowed"),
        (["snapshot", "--url", "nonsense"], 1, "store URL must look like scheme://"),
        (["snapshot", "--url", "mysql://localhost/db"], 1, "unknown store URL scheme 'mysql'"),
        (["prune", "--url", "sqlite://host/x.db"], 1, "sqlite URLs have no host"),
        (["snapshot", "--url", "memory://?bogus=1"], 1, "unknown option 'bogus'"),
        (["snapshot", "--url", "sqlite:///{tmp}/missing.db"], 1, "no SQLite database at"),
        (["grant", "--url", "sqlite:///{tmp}/no/dir.db", "a", "1"], 1, "does not exist"),
        (["balance", "--url", "sqlite:///{tmp}/junk.db", "a"], 1, "SQLite store"),
    ],
)
def test_errors_are_one_line_without_traceback(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    db: str,
    argv: list[str],
    status: int,
    message: str,
) -> None:
    monkeypatch.delenv("JOBCREDITS_URL", raising=False)
    (tmp_path / "junk.db").write_bytes(b"this is not a database, " * 100)
    argv = [a.replace("{db}", db).replace("{tmp}", str(tmp_path)) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == status
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("jobcredits: error: ")
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "missing.db").exists()  # a read never creates a store


# -- the real entry points ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("module", ["jobcredits_plugin.cli", "jobcredits_plugin"])
def test_python_dash_m_runs_the_demo(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, module: str
) -> None:
    expected = run(capsys, "demo", "--seed", "4")[1]
    env = {k: v for k, v in os.environ.items() if k != "JOBCREDITS_URL"}
    proc = subprocess.run(
        [sys.executable, "-m", module, "demo", "--seed", "4"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout == expected


@pytest.mark.slow
def test_python_dash_m_error_exit_status(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "jobcredits_plugin.cli", "grant", "--url", "memory://", "a", "x"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("jobcredits: error: argument N: invalid int value: 'x'")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("url", ["memory://", "sqlite:///:memory:", "sqlite://"])
@pytest.mark.parametrize(
    "argv",
    [["grant", "acct", "5"], ["balance", "acct"], ["snapshot"], ["stats"], ["prune"]],
)
def test_operator_commands_refuse_a_store_inside_their_own_process(
    capsys: pytest.CaptureFixture[str], url: str, argv: list[str]
) -> None:
    """grant --url memory:// printed the new balance and lost it when the
    command exited; snapshot showed an empty store instead of the app's. An
    in-process store is refused with one line and exit 1."""
    code, out, err = run(capsys, argv[0], "--url", url, *argv[1:])
    assert code == 1
    assert out == ""
    assert len(err.splitlines()) == 1
    assert "inside this command's own process" in err
