"""The ledger in the project's own database, through Django's ORM.

Each operation is one transaction of its own (``transaction.atomic(durable=True)``
on the store's database alias): it reads what it needs under row locks
(``select_for_update``), asks the ``plan_*`` rules what to do, writes that and
its journal rows, and commits, as the SQL stores do; the caller that got an
event is the only one that ever will, so hooks fire once across processes.

Locks, always taken in this order so that two operations never wait on each
other in a circle: the job's row, then the account's balance row (created at
0 when missing, so that there is a row to lock), then the journal state row.
Prune locks its batch of job rows with ``SKIP LOCKED`` where the database has
it, then the balances of their accounts in account order; its last pass waits
for the rows others hold instead (see :meth:`DjangoStore.prune`). SQLite has no row
locks: there every writing operation starts with a write (an ``UPDATE`` of
the journal state row), which takes the file's write lock before anything is
read, as ``BEGIN IMMEDIATE`` does (Django 5.1's ``transaction_mode`` setting
does the same, and is then left to do it).

Why the store never joins the caller's transaction: see :class:`DjangoStore`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from django.db import (  # type: ignore[import-untyped]
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connections,
    transaction,
)
from django.db.models import F, Min  # type: ignore[import-untyped]

from .._errors import ConfigurationError, JobCreditsError, StoreUnavailable
from .._records import CHARGED, JobRecord, JournalEntry
from .._validation import MAX_BATCH, check_int_option, check_optional_seconds
from ..stores import (
    GRANT_ID_RETENTION,
    BaseStore,
    ClaimRequest,
    ClaimResult,
    Event,
    JournalRow,
    Key,
    balance_cap_error,
    deadline,
    entry_from_row,
    grant_conflict_error,
    grant_exceeds_cap,
    grant_id_live,
    grant_row,
    journal_rows,
    plan_claim,
    plan_confirm,
    plan_refund,
    plan_settle,
    with_settled,
)
from ..stores._urls import redact_text

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["DjangoStore"]

T = TypeVar("T")

#: The columns of a job row, in :class:`~jobcredits_plugin.JobRecord` order.
JOB_FIELDS = (
    "account",
    "scope",
    "job_id",
    "charge_id",
    "state",
    "cost",
    "tier",
    "backend",
    "charged_at",
    "expires_at",
    "uses",
    "lease_until",
    "debited",
)
#: The columns of a journal row after seq, in :data:`JournalRow` order.
JOURNAL_FIELDS = (
    "kind",
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
)
#: The largest value a 64-bit balance column holds.
BIGINT_MAX = 2**63 - 1
#: How often an operation is run again after losing a race its database
#: reported as an error (two first claims of one new job both inserting it,
#: a deadlock the database broke): each attempt is a whole transaction that
#: rolled back, so running it again is what a single attempt would have done.
ATTEMPTS = 5
#: SQLSTATEs (PostgreSQL) and error numbers (MySQL/MariaDB) of a transaction
#: the database rolled back so that another could go on: run it again.
RETRY_SQLSTATES = frozenset({"40001", "40P01"})
RETRY_MYSQL_ERRORS = frozenset({1213, 1205})


def _row_to_record(row: Iterable[Any]) -> JobRecord:
    return JobRecord(*row)


def _record_fields(r: JobRecord) -> dict[str, Any]:
    return {
        "account": r.account,
        "scope": r.scope,
        "job_id": r.job_id,
        "charge_id": r.charge_id,
        "state": r.state,
        "cost": r.cost,
        "tier": r.tier,
        "backend": r.backend,
        "charged_at": r.charged_at,
        "expires_at": r.expires_at,
        "lease_until": r.lease_until,
        "uses": r.uses,
        "debited": r.debited,
        "deadline": deadline(r),
    }


def _retryable(exc: DatabaseError) -> bool:
    """Whether the database rolled the transaction back to let another one
    through (a deadlock, a serialization failure), so it may simply run again."""
    cause = exc.__cause__
    if getattr(cause, "sqlstate", None) in RETRY_SQLSTATES:
        return True
    args: tuple[Any, ...] = getattr(cause, "args", ())
    return bool(args) and args[0] in RETRY_MYSQL_ERRORS


class _Opened:
    """The connections one thread opened for stores: lives in the thread's
    locals as long as the thread does (see :meth:`DjangoStore._connection`)."""

    def __init__(self) -> None:
        self.conns: dict[int, Any] = {}


#: Per thread, the :class:`_Opened` of that thread.
_thread = threading.local()


def _close_connections(conns: dict[int, Any]) -> None:
    """Close the Django connections of a thread that has ended."""
    for conn in conns.values():
        try:
            conn.inc_thread_sharing()  # closed from whichever thread runs this
            try:
                conn.close()
            finally:
                conn.dec_thread_sharing()
        except Exception:  # noqa: BLE001, S112 - a connection already gone is as good as closed
            continue


class DjangoStore(BaseStore):
    """Jobs, balances and the journal in the project's own database (any
    backend Django supports), through the ORM; ``URL = "django://ALIAS"``.

    :param using: the database alias (a key of ``settings.DATABASES``) whose
        database holds the tables. They are created by ``manage.py migrate``
        (the app ``jobcredits_plugin.django`` must be installed; with
        database routers, let it migrate on this alias).
    :param prune_batch: how many records one transaction of
        :meth:`~jobcredits_plugin.Ledger.prune` settles.
    :param journal: write a journal entry in the transaction of each change.
    :param journal_reuses: journal reuses too.
    :param journal_max_age: seconds :meth:`~jobcredits_plugin.Ledger.trim_journal`
        keeps entries when called without bounds.

    **Transactions.** Every operation commits in a transaction of its own, and
    refuses to run inside one of the caller's on the same alias
    (:class:`~jobcredits_plugin.ConfigurationError`): joined to a view's
    transaction (``ATOMIC_REQUESTS``), a charge would be rolled back with the
    view's error after its ``on_charge`` hook fired and the client was told
    it was charged, and the refund that the error triggers would be rolled
    back with it. Django cannot commit one part of a connection's
    transaction, so a project whose views run in transactions gives the
    ledger an alias of its own on the same database, without
    ``ATOMIC_REQUESTS`` (see the Django page of the docs). Django's
    ``TestCase`` wraps each test in a transaction: the store runs inside it
    (a savepoint, rolled back with the test), as the durable blocks of
    Django itself do.
    """

    schemes = ("django",)

    def __init__(
        self,
        using: str = "default",
        *,
        prune_batch: int = 500,
        journal: bool = True,
        journal_reuses: bool = False,
        journal_max_age: float | None = 7 * 86400.0,
    ) -> None:
        journal_max_age = check_optional_seconds("journal_max_age", journal_max_age)
        check_int_option("prune_batch", prune_batch, 1, MAX_BATCH)
        self.journal = bool(journal)
        self.journal_reuses = bool(journal_reuses)
        self.journal_max_age = None if journal_max_age is None else float(journal_max_age)
        self.prune_batch = int(prune_batch)
        self.using = _check_alias(using)
        self._m = _models()

    def __repr__(self) -> str:
        return f"DjangoStore(using={self.using!r})"

    # -- transactions ------------------------------------------------------------------

    def _describe(self, exc: BaseException) -> str:
        return f"Django store (database {self.using!r}): {redact_text(str(exc))}"

    def _connection(self) -> Any:
        """This thread's Django connection to the store's database.

        Django opens one per thread and closes it between requests, but never
        in threads it does not run requests in: the worker threads of the
        async twins (``asyncio.to_thread``) and an app's own threads would
        leave theirs open until garbage collection. So the store closes the
        connection of each thread it ran in when that thread ends.
        """
        conn = connections[self.using]
        opened = getattr(_thread, "opened", None)
        if opened is None:
            opened = _thread.opened = _Opened()
            weakref.finalize(opened, _close_connections, opened.conns)
        if id(conn) not in opened.conns:
            opened.conns[id(conn)] = conn
        return conn

    def _write(self, op: Callable[[], T]) -> T:
        """Run ``op`` in a transaction of its own, again after a lost race,
        with the database's errors turned into the library's."""
        if _in_event_loop():
            return _in_a_thread(functools.partial(self._write, op))
        conn = self._connection()
        if conn.in_atomic_block and any(
            not getattr(block, "_from_testcase", False) for block in conn.atomic_blocks
        ):
            raise ConfigurationError(
                f"DjangoStore: called inside a transaction on database {self.using!r} "
                "(transaction.atomic, or ATOMIC_REQUESTS); the ledger commits each operation "
                "on its own, so that a charge is never rolled back after its client was "
                "told of it. Give the ledger a database alias of its own on the same "
                "database, without ATOMIC_REQUESTS (JOBCREDITS['URL'] = 'django://ALIAS'), "
                "or mark the view transaction.non_atomic_requests"
            )
        if conn.errors_occurred and not conn.in_atomic_block:
            # A connection broken by an earlier error (the server restarted)
            # is replaced here: Django only does it between requests.
            conn.close_if_unusable_or_obsolete()
        for attempt in range(1, ATTEMPTS + 1):
            try:
                with transaction.atomic(using=self.using, durable=True):
                    self._begin_writing(conn)
                    return op()
            except IntegrityError:
                # Another transaction inserted the same row first (the first
                # claims of one new job, or of one new account): this one
                # rolled back whole; run again, it now finds that row.
                if attempt == ATTEMPTS:
                    raise
            except (OperationalError, InterfaceError) as exc:
                if attempt < ATTEMPTS and _retryable(exc):
                    continue
                raise StoreUnavailable(self._describe(exc)) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, op: Callable[[], T]) -> T:
        if _in_event_loop():
            return _in_a_thread(functools.partial(self._read, op))
        conn = self._connection()
        if conn.errors_occurred and not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()
        try:
            return op()
        except (OperationalError, InterfaceError) as exc:
            raise StoreUnavailable(self._describe(exc)) from exc

    def _begin_writing(self, conn: Any) -> None:
        """On SQLite, take the file's write lock before the first read (see
        the module docstring); other databases lock the rows they read."""
        if conn.vendor != "sqlite":
            return
        if str(conn.settings_dict.get("OPTIONS", {}).get("transaction_mode", "")).upper() in (
            "IMMEDIATE",
            "EXCLUSIVE",
        ):
            return
        self._m.JournalState.objects.using(self.using).filter(pk=1).update(last_seq=F("last_seq"))

    # -- helpers inside a transaction ------------------------------------------------------

    def _jobs(self) -> Any:
        return self._m.Job.objects.using(self.using)

    def _balances(self) -> Any:
        return self._m.Balance.objects.using(self.using)

    def _get(self, key: Key, lock: bool) -> JobRecord | None:
        qs = self._jobs()
        if lock:
            qs = qs.select_for_update()
        row = (
            qs.filter(account=key[0], scope=key[1], job_id=key[2]).values_list(*JOB_FIELDS).first()
        )
        return None if row is None else _row_to_record(row)

    def _locked_balance(self, account: str) -> int:
        """The account's balance, its row locked until the commit (created at
        0 first when the account has none, so that there is a row to lock)."""
        qs = self._balances().select_for_update().filter(account=account)
        credits = qs.values_list("credits", flat=True).first()
        if credits is None:
            self._balances().bulk_create(
                [self._m.Balance(account=account, credits=0)], ignore_conflicts=True
            )
            credits = qs.values_list("credits", flat=True).first()
        return 0 if credits is None else int(credits)

    def _add(self, account: str, delta: int) -> None:
        """Move a balance whose row this transaction holds: a debit only
        where the credits cover it, a credit only where it fits in 64 bits
        (the transaction rolls back otherwise: never a negative or a
        rounded balance)."""
        if not delta:
            return
        qs = self._balances().filter(account=account)
        if delta < 0:
            done = qs.filter(credits__gte=-delta).update(credits=F("credits") + delta)
        else:
            done = qs.filter(credits__lte=BIGINT_MAX - delta).update(credits=F("credits") + delta)
        if done != 1:
            raise JobCreditsError(
                f"Django store: moving the balance of account {account!r} by {delta} would take "
                "it below zero or past 64 bits; nothing was changed"
            )

    def _journal(self, rows: list[JournalRow]) -> None:
        if rows:
            entry = self._m.JournalEntry
            self._m.JournalEntry.objects.using(self.using).bulk_create(
                [entry(**dict(zip(JOURNAL_FIELDS, row, strict=True))) for row in rows]
            )

    def _journaled(self, events: Iterable[Event]) -> bool:
        """Whether any of ``events`` gets a journal entry."""
        return self.journal and any(e.kind != "reuse" or self.journal_reuses for e in events)

    # -- the store protocol ------------------------------------------------------------

    def claim(self, req: ClaimRequest) -> ClaimResult:
        return self._write(lambda: self._claim(req))

    def _claim(self, req: ClaimRequest) -> ClaimResult:
        key = req.key
        existing = self._get(key, lock=True)
        balance = self._locked_balance(req.account) if req.balances else 0
        plan = plan_claim(existing, balance, req)
        events = plan.result.events
        journaled = self._journaled(events)
        if journaled and not req.balances:
            balance = self._locked_balance(req.account)
        if plan.write is not None:
            if existing is None:
                self._m.Job.objects.using(self.using).create(**_record_fields(plan.write))
            else:
                self._jobs().filter(account=key[0], scope=key[1], job_id=key[2]).update(
                    **_record_fields(plan.write)
                )
        elif plan.delete:
            self._jobs().filter(account=key[0], scope=key[1], job_id=key[2]).delete()
        if plan.balance_delta:
            if not req.balances and not journaled:
                self._locked_balance(req.account)  # the row to credit must exist
            self._add(req.account, plan.balance_delta)
        if journaled:
            self._journal(journal_rows(events, lambda _a: balance, req.now, self.journal_reuses))
        return plan.result

    def confirm(self, key: Key, charge_id: str | None, now: float) -> JobRecord | None:
        def op() -> JobRecord | None:
            record, write = plan_confirm(self._get(key, lock=True), charge_id, now)
            if write and record is not None:
                self._jobs().filter(account=key[0], scope=key[1], job_id=key[2]).update(
                    state=CHARGED, deadline=deadline(record)
                )
            return record

        return self._write(op)

    def refund(self, key: Key, charge_id: str | None, now: float) -> Event | None:
        def op() -> Event | None:
            existing = self._get(key, lock=True)
            event = plan_refund(existing, charge_id, now)
            if event is None or existing is None:
                return None
            self._jobs().filter(account=key[0], scope=key[1], job_id=key[2]).delete()
            if self.journal or existing.debited:
                before = self._locked_balance(existing.account)
                if self.journal:
                    self._journal(
                        journal_rows([event], lambda _a: before, now, self.journal_reuses)
                    )
                self._add(existing.account, existing.debited)
            return event

        return self._write(op)

    def lookup(self, key: Key, now: float) -> JobRecord | None:
        record = self._read(lambda: self._get(key, lock=False))
        return record if record is not None and record.is_live(now) else None

    def prune(self, now: float, limit: int | None = None) -> list[Event]:
        # Batches skip the rows another transaction holds (that one settles
        # them), so that pruners running at once share the work instead of
        # queueing. That relies on a transaction locking only the rows it
        # returns, which InnoDB does not promise: it can lock rows it read to
        # sort or to find the end of the range and then leave them alone, and
        # a pruner that skipped one would end with it still due (seen on
        # MariaDB 10.11 with four pruners: 349 of 350 settled). So when a
        # skipping batch comes back short, the next passes wait for the locks
        # instead, and settle whatever is still due once they are released.
        skip = True
        events: list[Event] = []
        try:
            while limit is None or len(events) < limit:
                batch = (
                    self.prune_batch
                    if limit is None
                    else min(self.prune_batch, limit - len(events))
                )
                found, done = self._write(functools.partial(self._prune_batch, now, batch, skip))
                events.extend(done)
                if found < batch or not done:
                    if not skip:
                        break
                    skip = False
            self._forget_grants(now)
        except BaseException as exc:
            # Each batch committed on its own: the ledger still fires theirs.
            with_settled(exc, events)
            raise
        return events

    def _prune_batch(self, now: float, batch: int, skip: bool) -> tuple[int, list[Event]]:
        """Settle up to ``batch`` due records; returns how many rows were
        found and the events committed. With ``skip``, rows another operation
        holds are skipped (where the database can); without, waited for."""
        conn = connections[self.using]
        skip = skip and bool(conn.features.has_select_for_update_skip_locked)
        qs = (
            self._jobs().select_for_update(skip_locked=skip)
            if conn.vendor != "sqlite"
            else (self._jobs())
        )
        rows = list(
            qs.filter(deadline__lte=now).order_by("deadline").values_list("pk", *JOB_FIELDS)[:batch]
        )
        settled: list[tuple[Any, Event]] = []
        for row in rows:
            event = plan_settle(_row_to_record(row[1:]), now)
            if event is not None:
                settled.append((row[0], event))
        if not settled:
            return len(rows), []
        self._jobs().filter(pk__in=[pk for pk, _ in settled]).delete()
        events = [event for _, event in settled]
        credits: dict[str, int] = {}
        for event in events:
            if event.kind == "refund" and event.record.debited:
                account = event.record.account
                credits[account] = credits.get(account, 0) + event.record.debited
        accounts = sorted({e.record.account for e in events} if self.journal else set(credits))
        before = {account: self._locked_balance(account) for account in accounts}
        if self.journal:
            self._journal(journal_rows(events, before.__getitem__, now, self.journal_reuses))
        for account in sorted(credits):
            self._add(account, credits[account])
        return len(rows), events

    def _forget_grants(self, now: float) -> None:
        """Delete the grant ids past their retention, a batch per transaction."""
        grants = self._m.GrantId.objects.using(self.using)
        # (a second of slack in the index bound: grant_id_live is the exact test)
        bound = now - GRANT_ID_RETENTION + 1.0
        while True:
            candidates = self._read(
                lambda: list(
                    grants.filter(at__lte=bound)
                    .order_by("at")
                    .values_list("pk", "at")[: self.prune_batch]
                )
            )
            gone = [pk for pk, at in candidates if not grant_id_live(float(at), now)]
            if gone:
                self._read(grants.filter(pk__in=gone).delete)
            if len(gone) < self.prune_batch:
                return

    def snapshot(self, now: float) -> list[JobRecord]:
        rows = self._read(
            lambda: list(self._jobs().filter(expires_at__gt=now).values_list(*JOB_FIELDS))
        )
        records = [r for r in map(_row_to_record, rows) if r.is_live(now)]
        # Sorted here, not by the database: its collation may order text in
        # another way than the other stores do (code points).
        records.sort(key=lambda r: (r.charged_at, r.account, r.scope, r.job_id))
        return records

    def grant(self, account: str, amount: int, now: float = 0.0, grant_id: str = "") -> int:
        def op() -> int:
            grants = self._m.GrantId.objects.using(self.using)
            before = self._locked_balance(account)
            if grant_id:
                seen = (
                    grants.filter(account=account, grant_id=grant_id)
                    .values_list("at", "amount", "balance")
                    .first()
                )
                if seen is not None and grant_id_live(float(seen[0]), now):
                    if int(seen[1]) != amount:
                        raise grant_conflict_error(int(seen[1]), amount)
                    return int(seen[2])  # a repeat: nothing written
            if grant_exceeds_cap(before, amount):
                raise balance_cap_error(before, amount)  # rolled back: nothing written
            after = max(0, before + amount)
            self._balances().filter(account=account).update(credits=after)
            if self.journal:
                self._journal([grant_row(account, amount, grant_id, before, after, now)])
            if grant_id:
                if seen is not None:
                    # An expired one: gone first. (None found: none to delete;
                    # no other transaction can insert this id meanwhile, as it
                    # would need the balance row, or on SQLite the write lock,
                    # that this one holds.)
                    grants.filter(account=account, grant_id=grant_id).delete()
                grants.create(
                    account=account, grant_id=grant_id, amount=amount, balance=after, at=now
                )
            return after

        return self._write(op)

    def balance(self, account: str) -> int:
        credits = self._read(
            lambda: (
                self._balances().filter(account=account).values_list("credits", flat=True).first()
            )
        )
        return 0 if credits is None else int(credits)

    # -- the journal ---------------------------------------------------------------------

    def _locked_state(self) -> int:
        """The last seq handed out, the state row locked until the commit."""
        states = self._m.JournalState.objects.using(self.using)
        qs = states.select_for_update().filter(pk=1)
        last = qs.values_list("last_seq", flat=True).first()
        if last is None:
            states.bulk_create([self._m.JournalState(id=1, last_seq=0)], ignore_conflicts=True)
            last = qs.values_list("last_seq", flat=True).first()
        return 0 if last is None else int(last)

    def _sequence(self) -> None:
        """Number the committed entries that have no seq yet, in id order."""
        entries = self._m.JournalEntry.objects.using(self.using)
        if not self._read(lambda: entries.filter(seq__isnull=True).exists()):
            return

        def op() -> int:
            last = self._locked_state()
            todo = list(entries.filter(seq__isnull=True).order_by("id")[: self.prune_batch])
            for n, entry in enumerate(todo, start=1):
                entry.seq = last + n
            if todo:
                entries.bulk_update(todo, ["seq"])
                self._m.JournalState.objects.using(self.using).filter(pk=1).update(
                    last_seq=last + len(todo)
                )
            return len(todo)

        while self._write(op) == self.prune_batch:
            pass

    def read_journal(self, after: int, limit: int) -> list[JournalEntry]:
        self._sequence()
        entries = self._m.JournalEntry.objects.using(self.using)
        rows = self._read(
            lambda: list(
                entries.filter(seq__gt=after)
                .order_by("seq")
                .values_list("seq", *JOURNAL_FIELDS)[:limit]
            )
        )
        return [entry_from_row(row[0], row[1:]) for row in rows]

    def trim_journal(self, through: int | None, cutoff: float | None) -> int:
        if through is None and cutoff is None:
            return 0
        self._sequence()
        entries = self._m.JournalEntry.objects.using(self.using)
        cursors = self._m.JournalCursor.objects.using(self.using)

        def op() -> int:
            # The state row's lock keeps a cursor from being set meanwhile.
            self._locked_state()
            cap = cursors.aggregate(low=Min("position"))["low"]
            if through is not None:
                cap = through if cap is None else min(cap, through)
            qs = entries.filter(seq__isnull=False)
            if cap is not None:
                qs = qs.filter(seq__lte=cap)
            if cutoff is not None:
                qs = qs.filter(at__lt=cutoff)
            pks = list(qs.order_by("seq").values_list("pk", flat=True)[: self.prune_batch])
            if pks:
                entries.filter(pk__in=pks).delete()
            return len(pks)

        removed = 0
        while True:
            done = self._write(op)
            removed += done
            if done < self.prune_batch:
                return removed

    def get_cursor(self, name: str) -> int | None:
        cursors = self._m.JournalCursor.objects.using(self.using)
        position = self._read(
            lambda: cursors.filter(name=name).values_list("position", flat=True).first()
        )
        return None if position is None else int(position)

    def set_cursor(self, name: str, position: int, force: bool = False) -> int:
        cursors = self._m.JournalCursor.objects.using(self.using)

        def op() -> int:
            self._locked_state()  # one cursor write at a time, none during a trim
            current = cursors.filter(name=name).values_list("position", flat=True).first()
            if current is None:
                cursors.create(name=name, position=position, updated_at=time.time())
                return position
            stored = position if force else max(int(current), position)
            cursors.filter(name=name).update(position=stored, updated_at=time.time())
            return stored

        return self._write(op)

    def delete_cursor(self, name: str) -> bool:
        cursors = self._m.JournalCursor.objects.using(self.using)
        return bool(self._write(lambda: cursors.filter(name=name).delete()[0]))

    def cursors(self) -> dict[str, int]:
        cursors = self._m.JournalCursor.objects.using(self.using)
        rows = self._read(lambda: list(cursors.order_by("name").values_list("name", "position")))
        return {name: int(position) for name, position in rows}

    def close(self) -> None:
        """Nothing to release: the connections are Django's, per thread,
        opened and closed by Django (``CONN_MAX_AGE``)."""


def _in_event_loop() -> bool:
    """Whether this thread runs an event loop, where Django refuses the ORM."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _in_a_thread(fn: Callable[[], T]) -> T:
    """``fn()`` in a thread of its own, waited for.

    A sync operation called from async code (the ledger settles a charge
    whose async caller was cancelled from a callback on the event loop) must
    still run: Django raises ``SynchronousOnlyOperation`` for ORM calls on an
    event loop's thread, so the operation runs beside it, blocking the loop
    as a sync call of any other store would. The async twins never get here.
    """
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jobcredits") as pool:
        return pool.submit(fn).result()


def _check_alias(using: Any) -> str:
    """``using`` if it names a configured database, else ConfigurationError."""
    from django.conf import settings  # type: ignore[import-untyped]

    if not isinstance(using, str) or not using:
        raise ConfigurationError(f"DjangoStore: using must be a database alias, not {using!r}")
    if not settings.configured:
        raise ConfigurationError(
            "DjangoStore: Django's settings are not configured (set DJANGO_SETTINGS_MODULE "
            "or call settings.configure() and django.setup() before building the store)"
        )
    aliases = list(connections.settings)
    if using not in aliases:
        raise ConfigurationError(
            f"DjangoStore: no database alias {using!r} in settings.DATABASES "
            f"(configured: {', '.join(map(repr, aliases)) or 'none'})"
        )
    return using


def _models() -> ModuleType:
    """The app's models module, once Django has loaded its apps."""
    from django.apps import apps  # type: ignore[import-untyped]

    if not apps.ready:
        raise ConfigurationError(
            "DjangoStore: Django's apps are not loaded yet (django.setup() has not run); "
            "build the store lazily, e.g. through JOBCREDITS['URL'] and get_ledger()"
        )
    if not apps.is_installed("jobcredits_plugin.django"):
        raise ConfigurationError(
            'DjangoStore: add "jobcredits_plugin.django" to INSTALLED_APPS and run '
            "manage.py migrate: its models are the store's tables"
        )
    from . import models

    return models
