"""PostgreSQL schema version 5 (issue 13, defects 1 and 4): every balance a
claim decides on, or a journal entry records, is read under the balance
row's lock.

The races are forced, not hoped for: a trigger in the test's schema pauses
the store's own function at a chosen point (only on the connection whose
``application_name`` says so), signals it with an advisory lock, and waits
until another connection's change has committed, or until that change waits
for a lock the paused function holds (then the function is what serialises
them, which is the point of the fix). The other connection acts as soon as
it sees the signal.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobcredits_plugin import InsufficientCredits, JobCreditsError, Ledger, hookimpl
from jobcredits_plugin.stores import ClaimRequest
from jobcredits_plugin.testing import FakeClock, RecordingPlugin
from tests.stores.conftest import POSTGRES_DEFAULT, POSTGRES_URL_ENV, _server_url

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from psycopg import sql  # noqa: E402

from jobcredits_plugin.stores._postgres import SCHEMA_VERSION, PostgresStore  # noqa: E402
from tests.stores._pg_history import make_schema_at  # noqa: E402


#: The advisory lock a paused function holds while it waits (its signal).
#: Each test draws its own key, and the watcher looks only in its own
#: database: a victim of another test or of another run on the same server
#: (a parallel worker, a backend still in its pause after its client went)
#: must not look like this test's.
def _new_pause_lock() -> int:
    return random.randrange(1, 2**31)


VICTIM = "jc-victim"


@pytest.fixture
def url() -> str:
    return _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")


@pytest.fixture
def make_store(url: str) -> Iterator[Callable[..., PostgresStore]]:
    made: list[PostgresStore] = []

    def make(schema: str, victim: bool = False, **kw: Any) -> PostgresStore:
        target = (
            url + ("&" if "?" in url else "?") + f"application_name={VICTIM}" if victim else url
        )
        store = PostgresStore.from_url(target, schema=schema, **kw)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
    if made:
        made[0].drop()


def _pause(url: str, schema: str, until: str, triggers: list[str]) -> int:
    """Install a pause: each trigger (``"<timing> <event> ON <table> FOR EACH
    <level>"``) runs, on the victim's connection only, a function that returns
    at once when ``until`` (a SQL condition) already holds, and otherwise
    takes a pause lock of its own (returned: what ``_when_paused`` watches)
    and waits (5 s at most) until ``until`` holds or another session waits
    for a lock this one holds."""
    lock = _new_pause_lock()
    with psycopg.connect(url, autocommit=True) as conn:
        body = f"""
        CREATE FUNCTION {{schema}}.test_pause() RETURNS trigger LANGUAGE plpgsql AS $p$
        BEGIN
            IF current_setting('application_name') = '{VICTIM}' AND NOT ({until}) THEN
                PERFORM pg_advisory_lock({lock});
                FOR i IN 1..500 LOOP
                    EXIT WHEN ({until});
                    EXIT WHEN EXISTS (SELECT 1 FROM pg_locks l WHERE NOT l.granted
                                       AND pg_backend_pid() = ANY (pg_blocking_pids(l.pid)));
                    PERFORM pg_sleep(0.01);
                END LOOP;
                PERFORM pg_advisory_unlock({lock});
            END IF;
            IF TG_LEVEL = 'ROW' THEN
                RETURN OLD;
            END IF;
            RETURN NULL;
        END
        $p$;
        """
        conn.execute(sql.SQL(body).format(schema=sql.Identifier(schema)))
        for n, spec in enumerate(triggers):
            timing, event, _on, table, *level = spec.split()
            conn.execute(
                sql.SQL(
                    "CREATE TRIGGER {name} "
                    + timing
                    + " "
                    + event
                    + " ON {table} "
                    + " ".join(level)
                    + " EXECUTE FUNCTION {fn}()"
                ).format(
                    name=sql.Identifier(f"test_pause_{n}"),
                    table=sql.Identifier(schema, table),
                    fn=sql.Identifier(schema, "test_pause"),
                )
            )
    return lock


def _when_paused(
    url: str, lock: int, action: Callable[[], None]
) -> tuple[threading.Thread, list[str]]:
    """Run ``action`` in a thread as soon as the victim holds its pause lock."""
    seen: list[str] = []

    def run() -> None:
        deadline = time.monotonic() + 10
        with psycopg.connect(url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND database = (SELECT oid FROM pg_database "
                    "                WHERE datname = current_database()) "
                    "AND ((classid::bigint << 32) | objid::bigint) = %s",
                    (lock,),
                ).fetchone()
                if row and row[0]:
                    seen.append("paused")
                    break
                time.sleep(0.005)
        action()
        seen.append("done")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, seen


class Rejections:
    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    @hookimpl
    def on_reject(
        self, error: BaseException, account: Any, scope: Any, job_id: Any, cost: Any
    ) -> None:
        self.errors.append(error)


# -- defect 1: a grant racing an insufficient claim -----------------------------------------


def test_a_grant_committed_during_an_insufficient_claim_still_gives_402(
    url: str, make_store: Callable[..., PostgresStore]
) -> None:
    """Balance 3, cost 5: the claim decides "insufficient", and a grant of 5
    commits while it runs. Versions 3 and 4 re-read the balance after its failed
    debit, reported 8, and the Python rules (8 >= 5: charged) disagreed: a
    RuntimeError, a 500, no on_reject. The claim now reports the balance it
    decided on: 402 with balance 3, on_reject fired, nothing recorded."""
    schema = f"jctest_{uuid.uuid4().hex[:12]}"
    other = make_store(schema)
    other_ledger = Ledger(other, clock=FakeClock(), balances=True)
    other_ledger.grant("acct", 3)
    # The pause sits right after the decision in either version: after
    # version 4's failed conditional UPDATE of the balance (a statement
    # trigger fires for zero rows), or after version 5's DELETE of the
    # refused job's row.
    balance_is = f"(SELECT credits FROM {schema}.balances WHERE account = 'acct') >= 8"
    lock = _pause(
        url,
        schema,
        balance_is,
        [
            "AFTER UPDATE ON balances FOR EACH STATEMENT",
            "AFTER DELETE ON jobs FOR EACH STATEMENT",
        ],
    )
    victim = make_store(schema, victim=True, statement_timeout=20)
    recorder, rejections = RecordingPlugin(), Rejections()
    ledger = Ledger(victim, clock=FakeClock(), balances=True, plugins=[recorder, rejections])

    thread, seen = _when_paused(url, lock, lambda: other_ledger.grant("acct", 5))
    with pytest.raises(InsufficientCredits) as info:
        ledger.charge("acct", "job-1", cost=5)
    thread.join(timeout=20)
    assert seen == ["paused", "done"]  # the grant really raced the claim
    assert info.value.balance == 3  # the balance the decision was made on
    assert info.value.cost == 5
    assert rejections.errors == [info.value]
    assert recorder.events == []
    assert ledger.lookup("acct", "job-1") is None
    assert ledger.balance("acct") == 8
    # and the next call is charged normally
    assert ledger.charge("acct", "job-1", cost=5).balance == 3


def test_a_disagreement_with_the_rules_reports_what_the_server_committed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Should a server's decision and the Python rules ever disagree again,
    the caller gets the server's committed outcome (logged at ERROR), never a
    bare RuntimeError."""
    from jobcredits_plugin.stores import claim_from_server

    req = ClaimRequest(
        account="acct",
        scope="default",
        job_id="job",
        charge_id="c-1",
        cost=5,
        tier=None,
        backend=None,
        now=100.0,
        ttl=3600.0,
        lease=60.0,
        max_uses=None,
        balances=True,
    )
    with caplog.at_level(logging.ERROR, logger="jobcredits_plugin"):
        refused = claim_from_server("test store", "insufficient", None, 8, req)
    assert refused.status == "insufficient"
    assert refused.record is None
    assert refused.balance == 8
    assert refused.events == ()
    assert "the server decided 'insufficient' where the rules decide 'charged'" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="jobcredits_plugin"):
        charged = claim_from_server("test store", "charged", None, 3, req)
    assert charged.status == "charged"
    assert charged.record is not None
    assert (charged.record.charge_id, charged.record.debited) == ("c-1", 5)
    assert [e.kind for e in charged.events] == ["charge"]
    assert [r.levelno for r in caplog.records] == [logging.ERROR]

    # agreement: no log line
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="jobcredits_plugin"):
        assert claim_from_server("test store", "charged", None, 8, req).balance == 3
    assert caplog.text == ""

    with pytest.raises(JobCreditsError) as info:
        claim_from_server("test store", "replay", None, 8, req)
    assert type(info.value) is JobCreditsError
    assert info.value.status == 500


# -- defect 4: prune journals running balances -------------------------------------------


def _running_sums_hold(store: PostgresStore) -> list[tuple[Any, ...]]:
    """Every entry whose balance is not its account's running sum of deltas."""
    wrong = []
    sums: dict[str, int] = {}
    for entry in store.read_journal(0, 1_000_000):
        sums[entry.account] = sums.get(entry.account, 0) + entry.delta
        if entry.balance != sums[entry.account]:
            wrong.append((entry.seq, entry.kind, entry.job_id, entry.balance, sums[entry.account]))
    return wrong


def test_an_expiry_journaled_by_prune_shows_the_running_balance(
    url: str, make_store: Callable[..., PostgresStore]
) -> None:
    """A prune expires a record of an account while a charge of that account
    commits. Versions 3 and 4 journaled the balance from the prune statement's
    snapshot (before the charge) in an entry numbered after the charge's:
    "5" where the running sum was 4. Version 5 locks the balance row and
    reads it afterwards."""
    schema = f"jctest_{uuid.uuid4().hex[:12]}"
    clock = FakeClock()
    other = make_store(schema)
    other_ledger = Ledger(other, clock=clock, balances=True, ttl=10.0, lease=5.0)
    other_ledger.grant("acct", 6)
    other_ledger.charge("acct", "old", cost=1)
    other_ledger.confirm("acct", "old")
    clock.advance(20.0)  # "old" has expired
    racer_done = f"EXISTS (SELECT 1 FROM {schema}.journal WHERE job_id = 'racer')"
    lock = _pause(url, schema, racer_done, ["BEFORE DELETE ON jobs FOR EACH ROW"])
    victim = make_store(schema, victim=True, statement_timeout=20)
    recorder = RecordingPlugin()
    ledger = Ledger(victim, clock=clock, balances=True, ttl=10.0, lease=5.0, plugins=[recorder])

    thread, seen = _when_paused(url, lock, lambda: other_ledger.charge("acct", "racer", cost=1))
    pruned = ledger.prune()
    thread.join(timeout=20)
    assert seen == ["paused", "done"]
    assert [r.job_id for r in pruned] == ["old"]
    assert recorder.kinds() == ["expire"]
    assert ledger.balance("acct") == 4
    entries = victim.read_journal(0, 100)
    assert [(e.kind, e.job_id, e.delta, e.balance) for e in entries] == [
        ("grant", None, 6, 6),
        ("charge", "old", -1, 5),
        ("charge", "racer", -1, 4),
        ("expire", "old", 0, 4),
    ]
    assert _running_sums_hold(victim) == []


def test_a_refund_journaled_by_prune_shows_the_running_balance(
    url: str, make_store: Callable[..., PostgresStore]
) -> None:
    """The same with a stale pending charge, which prune refunds: the racing
    charge of the same account is serialised by the balance row."""
    schema = f"jctest_{uuid.uuid4().hex[:12]}"
    clock = FakeClock()
    other = make_store(schema)
    other_ledger = Ledger(other, clock=clock, balances=True, lease=5.0)
    other_ledger.grant("acct", 6)
    other_ledger.charge("acct", "stale", cost=2)  # never confirmed
    clock.advance(10.0)
    racer_done = f"EXISTS (SELECT 1 FROM {schema}.journal WHERE job_id = 'racer')"
    lock = _pause(url, schema, racer_done, ["BEFORE DELETE ON jobs FOR EACH ROW"])
    victim = make_store(schema, victim=True, statement_timeout=20)
    ledger = Ledger(victim, clock=clock, balances=True, lease=5.0)

    thread, seen = _when_paused(url, lock, lambda: other_ledger.charge("acct", "racer", cost=1))
    assert [r.job_id for r in ledger.prune()] == ["stale"]
    thread.join(timeout=20)
    assert seen == ["paused", "done"]
    assert ledger.balance("acct") == 5
    assert _running_sums_hold(victim) == []


@pytest.mark.slow
def test_concurrent_prunes_and_charges_journal_running_balances(
    make_store: Callable[..., PostgresStore],
) -> None:
    """Unforced: two pruners and four chargers on three accounts with short
    leases and windows; afterwards every entry's balance is its account's
    running sum, and the balances equal the journal's sums."""
    schema = f"jctest_{uuid.uuid4().hex[:12]}"
    store = make_store(schema, max_size=8)
    accounts = ["a", "b", "c"]
    setup = Ledger(store, balances=True)
    for account in accounts:
        setup.grant(account, 1_000_000)
    stop = threading.Event()
    errors: list[BaseException] = []

    def charger(n: int) -> None:
        ledger = Ledger(store, balances=True, ttl=0.02, lease=0.01)
        i = 0
        try:
            while not stop.is_set():
                i += 1
                account, job = accounts[i % 3], f"j{n}-{i % 40}"
                charge = ledger.charge(account, job, cost=1 + i % 3)
                if i % 4 and charge.charged:  # a quarter stay pending, for prune
                    ledger.confirm(account, job, charge_id=charge.record.charge_id)
        except JobCreditsError as exc:  # JobInProgress and co. are fine here
            if exc.status >= 500:
                errors.append(exc)
        except BaseException as exc:  # pragma: no cover - the failure being tested
            errors.append(exc)

    def pruner() -> None:
        ledger = Ledger(store, balances=True)
        try:
            while not stop.is_set():
                ledger.prune()
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    def restart(target: Callable[..., None], *args: Any) -> Callable[[], None]:
        def run() -> None:
            while not stop.is_set():
                target(*args)

        return run

    threads = [threading.Thread(target=restart(charger, n)) for n in range(4)]
    threads += [threading.Thread(target=pruner) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(4.0)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert _running_sums_hold(store) == []
    entries = store.read_journal(0, 1_000_000)
    assert any(e.kind in ("expire", "refund") for e in entries)
    for account in accounts:
        assert setup.balance(account) == sum(e.delta for e in entries if e.account == account)


# -- the migration ---------------------------------------------------------------------------


def _make_v4_schema(url: str, schema: str) -> None:
    """A schema exactly as version 4 left it, with a balance, a charged job,
    a pending one and their journal."""
    store = PostgresStore.from_url(url, schema=schema)
    try:
        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            make_schema_at(conn, store, 4)
            conn.execute(
                store._format("SELECT {schema}.grant_credits('acct', 10, 100.0, 'g-1', true)")
            )
            for job, charge_id in (("done", "c-done"), ("open", "c-open")):
                conn.execute(
                    store._format(
                        "SELECT status FROM {schema}.claim('acct', 'default', %s, %s, 2, NULL, "
                        "NULL, 100.0, 3600.0, 60.0, NULL, true, true, false)"
                    ),
                    (job, charge_id),
                )
            conn.execute(
                store._format("SELECT hit FROM {schema}.confirm('acct', 'default', 'done', NULL)")
            )
    finally:
        store.close()


def test_a_version_4_schema_is_migrated_to_version_5(
    url: str, make_store: Callable[..., PostgresStore]
) -> None:
    assert SCHEMA_VERSION >= 5
    schema = f"jctest_{uuid.uuid4().hex[:12]}"
    _make_v4_schema(url, schema)
    strict = make_store(schema, auto_migrate=False)
    assert strict.schema_version() == 4

    store = make_store(schema)
    assert store.migrate() == SCHEMA_VERSION
    with psycopg.connect(url, autocommit=True) as conn:
        versions = conn.execute(
            sql.SQL("SELECT version FROM {}.schema_version ORDER BY version").format(
                sql.Identifier(schema)
            )
        ).fetchall()
        helper = conn.execute(
            "SELECT to_regprocedure(%s) IS NOT NULL",
            (f"{schema}.journal_balance(text)",),
        ).fetchone()
    assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    assert helper == (True,)

    clock = FakeClock(start=100.0)
    ledger = Ledger(store, clock=clock, balances=True, lease=60.0)
    assert ledger.balance("acct") == 6  # the data survived
    assert ledger.charge("acct", "done", cost=2).outcome == "reused"
    with pytest.raises(InsufficientCredits) as info:
        ledger.charge("acct", "big", cost=7)
    assert info.value.balance == 6
    clock.advance(61.0)
    assert [r.job_id for r in ledger.prune()] == ["open"]  # the stale pending one
    assert ledger.balance("acct") == 8
    assert [(e.kind, e.job_id, e.balance) for e in ledger.journal()] == [
        ("grant", None, 10),
        ("charge", "done", 8),
        ("charge", "open", 6),
        ("refund", "open", 8),
    ]
    assert _running_sums_hold(store) == []
    assert strict.balance("acct") == 8  # the strict store now finds the current version
    assert store.migrate() == SCHEMA_VERSION  # idempotent
