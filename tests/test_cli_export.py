"""``jobcredits export``: the journal as JSON lines, a named cursor advanced
only after the lines are out, ``--follow`` that polls with a pause, and a
crash that re-sends instead of skipping."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobcredits_plugin import InvalidArgument, Ledger
from jobcredits_plugin._operations import export_journal
from jobcredits_plugin.cli import main
from jobcredits_plugin.testing import FakeClock


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with Ledger.from_url(url, balances=True) as ledger:
        ledger.grant("acct", 10)
        for i in range(4):
            c = ledger.charge("acct", f"job-{i}")
            if i == 3:
                ledger.refund("acct", f"job-{i}", charge_id=c.record.charge_id)
    return url


def lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines()]


def test_export_prints_every_entry_once_and_advances_the_cursor(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    code, out, err = run(capsys, "export", "--url", db, "--cursor", "stripe", "--batch", "2")
    assert (code, err) == (0, "")
    rows = lines(out)
    assert [r["kind"] for r in rows] == ["grant", "charge", "charge", "charge", "charge", "refund"]
    assert [r["seq"] for r in rows] == list(range(1, 7))
    assert rows[-1]["idempotency_key"] == f"{rows[-1]['charge_id']}:refund"
    assert rows[-1]["balance"] == 7
    assert set(rows[1]) == {
        "seq",
        "kind",
        "idempotency_key",
        "account",
        "scope",
        "job_id",
        "charge_id",
        "cost",
        "tier",
        "backend",
        "delta",
        "balance",
        "at",
    }
    assert run(capsys, "export", "--url", db, "--cursor", "stripe")[1] == ""  # caught up
    with Ledger.from_url(db) as ledger:
        assert ledger.cursors() == {"stripe": 6}
        ledger.charge("acct", "later")
    assert [
        r["job_id"] for r in lines(run(capsys, "export", "--url", db, "--cursor", "stripe")[1])
    ] == ["later"]
    # another exporter has its own cursor and sees everything
    assert len(lines(run(capsys, "export", "--url", db, "--cursor", "warehouse")[1])) == 7


class Broken(io.StringIO):
    """An output that fails after ``ok`` lines, like a pipe whose reader died."""

    def __init__(self, ok: int) -> None:
        super().__init__()
        self.ok = ok

    def write(self, text: str) -> int:
        if self.ok == 0:
            raise BrokenPipeError
        self.ok -= 1
        return super().write(text)


def test_a_failed_write_does_not_advance_the_cursor(db: str) -> None:
    with Ledger.from_url(db) as ledger:
        broken = Broken(ok=3)
        with pytest.raises(BrokenPipeError):
            export_journal(ledger, "billing", broken, batch=2)
        # the first page (seq 1-2) went out and was committed; the second failed midway
        assert ledger.cursors() == {"billing": 2}
        again = io.StringIO()
        assert export_journal(ledger, "billing", again, batch=2) == 4
        resent = [json.loads(x) for x in again.getvalue().splitlines()]
        first = [json.loads(x) for x in broken.getvalue().splitlines()]
        # seq 3 was written before the failure and is written again: same key
        assert first[-1]["idempotency_key"] == resent[0]["idempotency_key"]
        assert [r["seq"] for r in resent] == [3, 4, 5, 6]


def test_follow_polls_with_a_pause_and_stops_when_asked(tmp_path: Path) -> None:
    clock = FakeClock()
    with Ledger.from_url(f"sqlite:///{tmp_path / 'f.db'}", clock=clock) as ledger:
        sleeps: list[float] = []

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            if len(sleeps) <= 3:
                ledger.charge("acct", f"job-{len(sleeps)}")

        out = io.StringIO()
        n = export_journal(
            ledger,
            "f",
            out,
            follow=True,
            poll=0.5,
            sleep=sleep,
            stop=lambda: len(sleeps) >= 5,
        )
        assert n == 3
        assert sleeps == [0.5] * 5  # one pause per empty read: no busy loop
        assert [json.loads(x)["job_id"] for x in out.getvalue().splitlines()] == [
            "job-1",
            "job-2",
            "job-3",
        ]


def test_follow_in_a_real_process_ends_cleanly_on_sigterm(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    Ledger.from_url(url).close()
    argv = ["export", "--url", url, "--cursor", "live", "--follow", "--poll", "0.05"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobcredits_plugin", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        with Ledger.from_url(url) as ledger:
            for i in range(3):
                ledger.charge("acct", f"job-{i}")
            assert proc.stdout is not None
            got = [json.loads(proc.stdout.readline()) for _ in range(3)]
            assert [g["job_id"] for g in got] == ["job-0", "job-1", "job-2"]
            deadline = time.monotonic() + 10
            while ledger.cursors().get("live") != 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert ledger.cursors() == {"live": 3}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["export", "--cursor", "x"], 2, "no store URL"),
        (["export"], 2, "--cursor"),
        (["export", "--cursor", "x", "--batch", "0"], 2, "--batch"),
        (["export", "--cursor", "x", "--batch", "10001"], 2, "--batch"),
        (["export", "--cursor", "x", "--poll", "0"], 2, "--poll"),
        (["export", "--cursor", "bad name"], 1, "cursor name"),
    ],
)
def test_export_errors_are_one_line(
    capsys: pytest.CaptureFixture[str],
    db: str,
    argv: list[str],
    status: int,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JOBCREDITS_URL", raising=False)
    if "no store URL" not in message:
        argv = [*argv, "--url", db]
    code, out, err = run(capsys, *argv)
    assert code == status
    assert out == ""
    assert message in err
    assert len(err.splitlines()) == 1


def test_prune_trims_the_journal_to_its_max_age_but_not_past_a_cursor(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}?journal_max_age=60"
    clock = FakeClock(time.time() - 3600)
    with Ledger.from_url(url, clock=clock) as ledger:
        for i in range(3):
            c = ledger.charge("acct", f"job-{i}")
            ledger.confirm("acct", f"job-{i}", charge_id=c.record.charge_id)
        cursor = ledger.cursor("slow")
        cursor.advance(2)
    code, out, _ = run(capsys, "prune", "--url", url)
    assert code == 0
    assert out == "expired 3, refunded 0\ntrimmed 2 journal entries\n"
    with Ledger.from_url(url) as ledger:
        # seq 3 (unread by "slow") and the 3 expiries (newer than 60 s) remain
        assert [e.seq for e in ledger.journal()] == [3, 4, 5, 6]


def test_prune_on_a_store_that_keeps_no_journal_still_prunes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from jobcredits_plugin._report import prune_lines
    from jobcredits_plugin.stores import MemoryStore

    class Journalless(MemoryStore):
        """A store of one's own, built before the journal existed: None blocks
        a member of a protocol, so this is no JournalStore."""

        read_journal = None
        trim_journal = None

    ledger = Ledger(Journalless())
    assert prune_lines(ledger) == ["expired 0, refunded 0"]
    with pytest.raises(InvalidArgument, match="keeps no journal"):
        ledger.journal()


def test_cursors_lists_and_deletes(capsys: pytest.CaptureFixture[str], db: str) -> None:
    assert run(capsys, "cursors", "--url", db) == (0, "no journal cursors\n", "")
    run(capsys, "export", "--url", db, "--cursor", "stripe")
    with Ledger.from_url(db) as ledger:
        ledger.cursor("warehouse")
        assert ledger.cursor_exists("stripe")
        assert not ledger.cursor_exists("nobody")
    code, out, _ = run(capsys, "cursors", "--url", db)
    assert code == 0
    assert out.splitlines() == ["cursor     position", "stripe            6", "warehouse         0"]
    assert json.loads(run(capsys, "cursors", "--url", db, "--json")[1]) == {
        "stripe": 6,
        "warehouse": 0,
    }
    assert run(capsys, "cursors", "--url", db, "--delete", "warehouse") == (
        0,
        "deleted warehouse\n",
        "",
    )
    code, out, err = run(capsys, "cursors", "--url", db, "--delete", "warehouse")
    assert (code, out) == (1, "")
    assert "no journal cursor named 'warehouse'" in err
    code, _, err = run(capsys, "cursors", "--url", db, "--delete", "bad name")
    assert code == 1
    assert "cursor name" in err
    with Ledger.from_url(db) as ledger:
        assert ledger.cursors() == {"stripe": 6}
        # a deleted cursor no longer holds entries back
        assert ledger.trim_journal(6) == 5  # SQLite keeps its newest entry
