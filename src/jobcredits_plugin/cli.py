"""The ``jobcredits`` command: a demo of the whole flow, and the operator's tools.

An operator needs to see and settle a store without writing Python: the live
jobs (``snapshot``), the clean-up a cron job runs (``prune``) and the balances
(``grant``, ``balance``). A newcomer needs to see the semantics work before
reading about them: ``demo`` drives a small WSGI app with simulated clients on
a fake clock, so an hour-long window passes in a moment and the printed
figures are the same for the same seed.

Only :mod:`argparse`: the core depends on attrs and pluggy alone, and a command
line for a billing store must not add more. Errors come out as one
``jobcredits: error: ...`` line on stderr, never a traceback (unless asked
for with ``--traceback`` or ``JOBCREDITS_TRACEBACK=1``), with a URL's
password masked: exit status 2 for a command line argparse rejects, 1 for an
error the ledger or the store reports (a bad value, a store that cannot be
reached), 70 (``EX_SOFTWARE``) for an unexpected one (a bug: the line says
so), 130 for Ctrl-C. :func:`describe_error` is that one mapping.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import signal
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from http import HTTPStatus
from typing import IO, Any, NoReturn

import attrs

from ._decorator import charges_credit, current_charge, header
from ._errors import InvalidArgument, JobCreditsError
from ._ledger import Ledger
from ._records import Charge, JobRecord
from ._version import __version__
from ._warnings import is_in_process_default
from .hookspecs import hookimpl
from .stores import from_url, redact_url
from .stores._urls import redact_text

__all__ = ["main"]

PROG = "jobcredits"
URL_ENV = "JOBCREDITS_URL"
#: Set to 1 (or true/yes/on) to print the traceback of an error, as --traceback does.
TRACEBACK_ENV = "JOBCREDITS_TRACEBACK"

#: Exit statuses: a mistake in what the operator asked for (or a store that
#: cannot be reached), a command line argparse rejects, a bug (sysexits.h's
#: EX_SOFTWARE), and an interrupt (128 + SIGINT, as shells report it).
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SOFTWARE = 70
EXIT_INTERRUPTED = 130

Environ = dict[str, Any]
Headers = list[tuple[str, str]]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class CliError(Exception):
    """A failure to report as one line on stderr, with the exit status to use."""

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, not usage plus a message.

    ``jobcredits`` is run from scripts and cron, where one greppable line is
    what gets read; the hint points at ``--help`` for the usage.
    """

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see '{self.prog} --help')", status=EXIT_USAGE)


# -- shared helpers -------------------------------------------------------------------


def _out(line: str = "", stream: IO[str] | None = None) -> None:
    print(line, file=stream if stream is not None else sys.stdout)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], left: int = 1) -> list[str]:
    """Rows as aligned text columns: the first ``left`` columns (names) to the
    left, the rest (numbers) to the right, as people read figures."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return lines


def _iso(ts: float) -> str:
    """Seconds since the epoch as ISO-8601 UTC: unambiguous whatever the
    operator's time zone, and what log search tools parse.

    A time no calendar date can show (past the year 9999: a store written by
    a clock that counted milliseconds, a ttl of 1e12 seconds; or not a finite
    number) is printed as the number of seconds it holds, so that the
    operator sees the odd record instead of a crash.
    """
    try:
        if math.isfinite(ts):
            return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):  # out of the datetime range
        pass
    return _seconds(ts)


def _seconds(ts: float) -> str:
    """A number of seconds as plain digits (no exponent), to the millisecond."""
    if not math.isfinite(ts):
        return str(ts)
    if float(ts).is_integer():
        return str(int(ts))
    return f"{ts:.3f}".rstrip("0").rstrip(".")


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, infinity) replaced by None,
    in nested dicts and lists: JSON has no such numbers, and a reader (jq, a
    billing import) rejects Python's ``NaN``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """Strict JSON (RFC 8259) for everything the commands print: NaN and
    infinity become null rather than the invalid ``NaN`` tokens."""
    return json.dumps(_finite(value), allow_nan=False, **kwargs)


def _url(args: argparse.Namespace) -> str:
    url: str | None = args.url or os.environ.get(URL_ENV) or None
    if url is None:
        raise CliError(f"no store URL: pass --url or set {URL_ENV}", status=2)
    return url


def _check_exists(url: str) -> None:
    """Refuse a read of a SQLite file that is not there.

    Opening one creates it, so a mistyped path would otherwise show an empty
    store ("no live jobs", balance 0) instead of the operator's mistake.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL": from_url gives the error that says so
        return
    if parts.scheme.lower() != "sqlite" or parts.netloc:
        return  # other stores, and malformed URLs: from_url gives the error
    path = urllib.parse.unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if path and path != ":memory:" and not os.path.exists(path):
        raise CliError(f"no SQLite database at {path!r}; check --url")


def _open(args: argparse.Namespace, *, must_exist: bool = True, **kwargs: Any) -> Ledger:
    url = _url(args)
    if must_exist:
        _check_exists(url)
    ledger = Ledger.from_url(url, **kwargs)
    if is_in_process_default(ledger.store):
        # memory:// or an in-memory SQLite database lives and dies with this
        # command: a grant would print its new balance and be lost, a
        # snapshot would show an empty store instead of the app's.
        ledger.close()
        raise CliError(
            f"{redact_url(url)!r} is a store inside this command's own process, gone when it "
            "exits; name the app's store (sqlite:///path.db, redis://..., postgresql://...)"
        )
    return ledger


#: The demo's largest run: about seven seconds. Its simulated clock starts
#: far enough back for every job, so a run of 10**11 jobs asked for a clock
#: before 1970 (and was refused as a broken clock, which misled).
DEMO_JOBS_MAX = 100_000


def _positive(text: str) -> int:
    value = int(text)
    if not 1 <= value <= DEMO_JOBS_MAX:
        raise ValueError(text)
    return value


_positive.__name__ = f"int from 1 to {DEMO_JOBS_MAX}"


# -- operator commands -------------------------------------------------------------------


def _snapshot_row(r: JobRecord) -> tuple[object, ...]:
    charged, expires = _iso(r.charged_at), _iso(r.expires_at)
    return (r.account, r.scope, r.job_id, r.state, r.cost, r.uses, charged, expires)


def snapshot_lines(records: Sequence[JobRecord], *, as_json: bool, limit: int) -> list[str]:
    """What every ``snapshot`` command prints (this one, ``flask jobcredits`` and
    ``manage.py jobcredits``): all records as JSON, or a table of the first
    ``limit`` with a line saying how many more there are."""
    if as_json:
        return [dumps([attrs.asdict(r) for r in records], indent=2)]
    if not records:
        return ["no live jobs"]
    shown = records[:limit]
    headers = ("account", "scope", "job_id", "state", "cost", "uses", "charged_at", "expires_at")
    rows = [_snapshot_row(r) for r in shown]
    lines = _table(headers, rows, left=4) if shown else []
    if len(records) > len(shown):
        lines.append(f"… and {len(records) - len(shown)} more")
    return lines


def non_negative(text: str) -> int:
    """An argparse type: a whole number >= 0 (credits to grant, rows to show)."""
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


non_negative.__name__ = "non-negative int"  # what argparse names in its error


def _cmd_snapshot(args: argparse.Namespace) -> int:
    with _open(args) as ledger:
        records = ledger.snapshot()
    for line in snapshot_lines(records, as_json=args.json, limit=args.limit):
        _out(line)
    return 0


def stats_of(records: Sequence[JobRecord], now: float) -> dict[str, Any]:
    """Counts over the live jobs, for ``jobcredits stats``: by state, by scope,
    the credits they hold (``pending`` ones can still be refunded) and the
    oldest one (a pending job that old is a handler that never finished)."""
    by_state = {"pending": 0, "charged": 0}
    by_scope: dict[str, dict[str, int]] = {}
    held = {"pending": 0, "charged": 0}
    for r in records:
        by_state[r.state] = by_state.get(r.state, 0) + 1
        held[r.state] = held.get(r.state, 0) + r.cost
        row = by_scope.setdefault(r.scope, {"pending": 0, "charged": 0, "credits": 0})
        row[r.state] = row.get(r.state, 0) + 1
        row["credits"] += r.cost
    oldest = min(records, key=lambda r: r.charged_at, default=None)
    return {
        "live_jobs": len(records),
        "by_state": by_state,
        "by_scope": dict(sorted(by_scope.items())),
        "credits_held": sum(held.values()),
        "credits_refundable": held.get("pending", 0),
        "oldest": None
        if oldest is None
        else {
            "account": oldest.account,
            "scope": oldest.scope,
            "job_id": oldest.job_id,
            "state": oldest.state,
            "charged_at": oldest.charged_at,
            "age_seconds": round(max(0.0, now - oldest.charged_at), 3),
        },
    }


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def stats_lines(stats: dict[str, Any], *, as_json: bool) -> list[str]:
    """What ``jobcredits stats`` prints: a short report, or the JSON object."""
    if as_json:
        return [dumps(stats, indent=2)]
    states = stats["by_state"]
    lines = [
        f"live jobs: {stats['live_jobs']} (pending {states['pending']}, "
        f"charged {states['charged']})",
        f"credits held: {stats['credits_held']} "
        f"({stats['credits_refundable']} refundable while pending)",
    ]
    oldest = stats["oldest"]
    if oldest is not None:
        lines.append(
            f"oldest job: {oldest['job_id']} of {oldest['account']} in {oldest['scope']} "
            f"({oldest['state']}, charged {_iso(oldest['charged_at'])}, "
            f"{_age(oldest['age_seconds'])} ago)"
        )
    if stats["by_scope"]:
        lines.append("")
        rows = [
            (scope, row["pending"], row["charged"], row["credits"])
            for scope, row in stats["by_scope"].items()
        ]
        lines += _table(("scope", "pending", "charged", "credits"), rows)
    return lines


def _cmd_stats(args: argparse.Namespace) -> int:
    with _open(args) as ledger:
        records = ledger.snapshot()
        now = ledger.now()
    for line in stats_lines(stats_of(records, now), as_json=args.json):
        _out(line)
    return 0


def prune_lines(ledger: Ledger) -> list[str]:
    """Prune the ledger and trim its journal to the store's ``journal_max_age``
    (never past a cursor); the report every ``prune`` command prints."""
    removed = ledger.prune()
    refunded = sum(1 for r in removed if r.state == "refunded")
    lines = [f"expired {len(removed) - refunded}, refunded {refunded}"]
    if getattr(ledger.store, "journal", False):
        try:
            trimmed = ledger.trim_journal()
        except InvalidArgument:  # a store of your own that keeps no journal
            trimmed = 0
        if trimmed:
            lines.append(f"trimmed {trimmed} journal entries")
    return lines


def balance_lines(ledger: Ledger, account: str, setting: str) -> tuple[str, str | None]:
    """The balance an operator command prints, and a note for stderr when
    the ledger's balances are off (``setting`` names the switch).

    Grants are stored even while balances are off (they are loaded before
    the switch is turned on), so the stored figure is shown all the same,
    read through a ledger with balances on over the same store; the note
    says that nothing enforces it. The ``balance`` command of every adapter
    prints through here."""
    if ledger.balances:
        return str(ledger.balance(account)), None
    reader = Ledger(
        ledger.store, ttl=ledger.ttl, lease=ledger.lease, balances=True, clock=ledger.clock
    )
    note = (
        f"note: balances are off ({setting}); this figure is stored, not enforced: "
        "calls are not debited"
    )
    return str(reader.balance(account)), note


def _cmd_prune(args: argparse.Namespace) -> int:
    with _open(args) as ledger:
        for line in prune_lines(ledger):
            _out(line)
    return 0


def _batch(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 10_000:
        raise ValueError(text)
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not 0.05 <= value <= 3600:
        raise ValueError(text)
    return value


def export_journal(
    ledger: Ledger,
    cursor_name: str,
    out: IO[str],
    *,
    batch: int = 500,
    follow: bool = False,
    poll: float = 1.0,
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], object] = time.sleep,
) -> int:
    """Write the journal after the named cursor to ``out`` as JSON lines and
    advance the cursor; returns how many entries were written.

    The cursor moves only after a page's lines are written and flushed, so a
    crash (or a closed pipe) re-sends at most one page on the next run and
    never skips one: receivers deduplicate on ``idempotency_key``. With
    ``follow``, an empty read waits ``poll`` seconds before asking again
    (never a busy loop) until ``stop()`` says so.
    """
    cursor = ledger.cursor(cursor_name)
    written = 0
    while not stop():
        page = cursor.read(limit=batch)
        if page:
            for entry in page:
                out.write(dumps(entry.to_dict(), separators=(",", ":")) + "\n")
            out.flush()
            cursor.advance(page[-1])
            written += len(page)
            if len(page) == batch:
                continue  # more may be waiting: no pause
        if not follow:
            break
        sleep(poll)
    return written


def _cmd_export(args: argparse.Namespace) -> int:
    stopping = threading.Event()
    previous = None
    if args.follow and threading.current_thread() is threading.main_thread():
        # SIGTERM (a deploy, systemd stop) ends the loop between pages, after
        # the cursor has caught up with what was written.
        def _stop(signum: int, frame: object) -> None:
            stopping.set()

        previous = signal.signal(signal.SIGTERM, _stop)
    try:
        with _open(args) as ledger:
            if not getattr(ledger.store, "journal", True):
                _out(
                    f"{PROG}: warning: this store's journal is off; nothing new will appear",
                    sys.stderr,
                )
            export_journal(
                ledger,
                args.cursor,
                sys.stdout,
                batch=args.batch,
                follow=args.follow,
                poll=args.poll,
                stop=stopping.is_set,
                sleep=stopping.wait,
            )
    except KeyboardInterrupt:
        if not args.follow:
            raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _cmd_grant(args: argparse.Namespace) -> int:
    # A grant may create the store: loading balances is how one starts.
    with _open(args, must_exist=False) as ledger:
        _out(str(ledger.grant(args.account, args.amount, grant_id=args.grant_id)))
    return 0


def _cmd_balance(args: argparse.Namespace) -> int:
    # balances=True only so that balance() reports the stored figure; this
    # ledger charges nothing.
    with _open(args, balances=True) as ledger:
        _out(str(ledger.balance(args.account)))
    return 0


def _cmd_cursors(args: argparse.Namespace) -> int:
    with _open(args) as ledger:
        if args.delete:
            for name in args.delete:
                if not ledger.cursor_exists(name):
                    raise CliError(f"no journal cursor named {name!r}")
                ledger.delete_cursor(name)
                _out(f"deleted {name}")
            return 0
        cursors = ledger.cursors()
    if args.json:
        _out(dumps(cursors, sort_keys=True))
    elif not cursors:
        _out("no journal cursors")
    else:
        for line in _table(("cursor", "position"), sorted(cursors.items())):
            _out(line)
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    # Only stores with a server-side schema have anything to migrate; the
    # others create their tables themselves (SQLite) or keep none (memory).
    url = _url(args)
    try:
        scheme = urllib.parse.urlsplit(url).scheme.lower() if "://" in url else ""
    except ValueError as exc:  # e.g. "Invalid IPv6 URL"
        raise CliError(f"store URL {redact_url(url)!r} cannot be parsed ({exc})") from None
    if scheme in ("memory", "sqlite", "redis", "rediss", "redis+unix"):
        _out(f"nothing to migrate: {scheme}:// stores need no schema migration")
        return 0
    if scheme not in ("postgresql", "postgres"):
        from_url(url)  # not a store URL: from_url raises the error that says so
    from .stores import PostgresStore

    store = PostgresStore.from_url(url, auto_migrate=False)
    try:
        version = store.migrate()
    finally:
        store.close()
    _out(f"schema {store.schema!r} is at version {version}")
    return 0


# -- the demo ------------------------------------------------------------------------------

#: Every demo job belongs to this scope, as one "summarize" action of the
#: original relay took a "transcribe" call and an "analyze" call.
DEMO_SCOPE = "summarize"
#: The demo accounts and the credits each is granted; the last two run out.
DEMO_ACCOUNTS = {"demo:ada": 30, "demo:bob": 15, "demo:cy": 6, "demo:dee": 3}
STEP = 150.0  # seconds of simulated time between two jobs
TAIL = 600.0  # seconds simulated after the last job starts
FAIL_RATE = 0.12  # chance an upstream backend call fails
DUPLICATE_RATE = 0.1  # chance a first call is sent twice at once
LATE_RATE = 0.25  # chance a client comes back for the second call an hour later
CHARGE_KEY = "jobcredits.demo.charge"
DURING_KEY = "jobcredits.demo.during"


class UpstreamError(Exception):
    """The backend behind the app failed; the job's charge must go back."""


class _Tally:
    """A plugin counting the demo's own events per account.

    It counts only the jobs the demo opened: on a shared store, a prune may
    also settle other jobs, and those are not the demo's to report.
    """

    def __init__(self) -> None:
        self.jobs: set[str] = set()
        self.counts: dict[str, Counter[str]] = {}

    def _add(self, kind: str, record: JobRecord) -> None:
        if record.job_id in self.jobs:
            self.counts.setdefault(record.account, Counter())[kind] += 1

    @hookimpl
    def on_charge(self, record: JobRecord) -> None:
        self._add("charged", record)

    @hookimpl
    def on_reuse(self, record: JobRecord) -> None:
        self._add("reused", record)

    @hookimpl
    def on_refund(self, record: JobRecord) -> None:
        self._add("refunded", record)

    @hookimpl
    def on_expire(self, record: JobRecord) -> None:
        self._add("expired", record)


@attrs.define
class _Upstream:
    """The LLM backends the original relay fronted: slow, and sometimes failing."""

    rng: random.Random

    def __call__(self, environ: Environ, step: str) -> dict[str, str]:
        during = environ.get(DURING_KEY)
        if during is not None:
            during()  # another request arrives while this one is running
        if self.rng.random() < FAIL_RATE:
            raise UpstreamError(f"the {step} backend timed out")
        return {"step": step, "result": "ok"}


def _problem(
    status: int, doc: dict[str, Any], headers: dict[str, str]
) -> tuple[str, Headers, bytes]:
    phrase = HTTPStatus(status).phrase
    hdrs = [("Content-Type", "application/problem+json"), *headers.items()]
    return f"{status} {phrase}", hdrs, json.dumps(doc).encode()


def build_app(ledger: Ledger, upstream: Callable[[Environ, str], dict[str, str]]) -> WSGIApp:
    """The demo's WSGI app: the relay's handler under ``charges_credit``, and a
    thin outer layer that renders errors as problem+json and tells the client
    what the call cost (``X-Job-Charge``).

    The outer layer is all a web adapter adds to the core decorator; the
    charging itself (charge, confirm on return, refund on an exception)
    happens in the decorator.
    """

    # The account comes from a header only because the clients here are this
    # process's own simulations; a real app takes it from the authenticated
    # identity (see the security guide).
    @charges_credit(
        ledger, account=header("X-Account"), job_id=header("X-Job-Id"), scope=DEMO_SCOPE
    )
    def handler(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        environ[CHARGE_KEY] = current_charge()
        step = environ.get("PATH_INFO", "/").strip("/") or "transcribe"
        body = upstream(environ, step)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    def charge_headers(charge: Charge | None, refunded: bool) -> Headers:
        if charge is None:
            return []
        outcome = "refunded" if refunded and charge.charged else charge.outcome
        hdrs: Headers = [("X-Job-Charge", outcome)]
        if charge.balance is not None:
            left = charge.balance + (charge.record.debited if outcome == "refunded" else 0)
            hdrs.append(("X-Credits-Remaining", str(left)))
        return hdrs

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        def start(status: str, hdrs: Headers, exc_info: Any = None) -> Any:
            extra = charge_headers(environ.get(CHARGE_KEY), refunded=False)
            return start_response(status, [*hdrs, *extra], exc_info)

        try:
            return handler(environ, start)
        except JobCreditsError as err:
            status, hdrs, body = _problem(
                err.status, err.to_problem(instance=environ.get("PATH_INFO")), err.headers()
            )
        except UpstreamError as err:
            doc = {
                "type": "about:blank",
                "title": "Bad Gateway",
                "status": 502,
                "detail": str(err),
                "code": "upstream",
            }
            status, hdrs, body = _problem(502, doc, {})
            hdrs += charge_headers(environ.get(CHARGE_KEY), refunded=True)
        start_response(status, hdrs)
        return [body]

    return app


@attrs.frozen
class Response:
    """An answer as the simulated client sees it: status, headers, JSON body."""

    status: int
    headers: dict[str, str]
    body: dict[str, Any]


def call(app: WSGIApp, path: str, account: str, job_id: str, **extra: Any) -> Response:
    """One HTTP call, made in-process: the environ a server would build."""
    # Imported here, not at the top: the Flask and Django adapters import this
    # module for its report lines, and an app should not load wsgiref for them.
    from wsgiref.util import setup_testing_defaults

    environ: Environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "HTTP_X_ACCOUNT": account,
        "HTTP_X_JOB_ID": job_id,
        **extra,
    }
    setup_testing_defaults(environ)
    seen: list[Any] = []

    def start_response(status: str, hdrs: Headers, exc_info: Any = None) -> Callable[[bytes], None]:
        seen[:] = [status, hdrs]
        return lambda data: None

    body = b"".join(app(environ, start_response))
    return Response(int(seen[0].split()[0]), dict(seen[1]), json.loads(body))


@attrs.define
class _Client:
    """A client app: runs summarize jobs, retries failed calls with the same
    job id, sometimes double-sends a call, sometimes comes back late."""

    account: str
    app: WSGIApp
    rng: random.Random
    tally: _Tally
    calls: Counter[str] = attrs.Factory(Counter)
    rejected: Counter[str] = attrs.Factory(Counter)

    def _record(self, r: Response) -> None:
        code = r.body.get("code", "ok")
        self.calls[f"{r.status} {code}"] += 1
        if r.status in (402, 409):
            self.rejected[code] += 1

    def send(self, step: str, job_id: str, *, duplicate: bool = False) -> Response:
        """Make one call, retrying up to twice when the backend fails; returns
        the last answer."""
        for _ in range(3):
            extra: dict[str, Any] = {}
            if duplicate:  # the duplicate arrives while the first call runs
                extra[DURING_KEY] = lambda: self._record(
                    call(self.app, "/" + step, self.account, job_id)
                )
                duplicate = False
            r = call(self.app, "/" + step, self.account, job_id, **extra)
            self._record(r)
            if r.status != 502:
                break
        return r

    def start_job(self) -> str | None:
        """Run a job's first call; return its id if the second call is left
        for later, None when the job is done or given up."""
        job_id = str(uuid.uuid4())  # fresh ids: a rerun on a file never meets old jobs
        self.tally.jobs.add(job_id)
        first = self.send("transcribe", job_id, duplicate=self.rng.random() < DUPLICATE_RATE)
        if first.status != 200:
            return None
        if self.rng.random() < LATE_RATE:
            return job_id
        self.send("analyze", job_id)
        return None


@attrs.frozen
class DemoResult:
    """What the demo counted: per account, and as the totals it checks."""

    rows: list[dict[str, int]]
    accounts: list[str]
    calls: Counter[str]
    late_calls: Counter[str]
    span: float

    def total(self, column: str) -> int:
        return sum(row[column] for row in self.rows)


DEMO_COLUMNS = (
    "granted",
    "charged",
    "reused",
    "refunded",
    "expired",
    "live",
    "insufficient_credits",
    "job_in_progress",
    "balance",
)


def run_demo(url: str, *, seed: int, jobs: int) -> DemoResult:
    """Simulate ``jobs`` jobs of four clients against the demo app.

    The fake clock starts ``span`` seconds in the past so that the simulation
    ends at the real present: a prune at the end never expires a job early,
    even on a store that serves real traffic, and the jobs still in their
    window show up in a later ``jobcredits snapshot`` of the same file.
    """
    # Imported here, not at the top: the test helpers are for ``jobcredits
    # demo`` only, and the web adapters import this module for its report lines.
    from .testing import FakeClock

    rng = random.Random(seed)
    span = jobs * STEP + TAIL
    clock = FakeClock(time.time() - span)
    start = clock.now
    tally = _Tally()
    ledger = Ledger.from_url(url, clock=clock, balances=True, plugins=[tally])
    with ledger:
        for account, credits in DEMO_ACCOUNTS.items():
            # Set, not add: a rerun on the same file starts from the same figures.
            ledger.grant(account, credits - (ledger.balance(account) or 0))
        app = build_app(ledger, _Upstream(rng))
        clients = [_Client(a, app, rng, tally) for a in DEMO_ACCOUNTS]
        late: list[tuple[float, _Client, str]] = []  # (when, client, job id)
        late_calls: Counter[str] = Counter()  # how the late second calls went

        def come_back(until: float) -> None:
            while late and late[0][0] <= until:
                when, client, job_id = late.pop(0)
                clock.set(when)
                r = client.send("analyze", job_id)
                late_calls[r.headers.get("X-Job-Charge") or r.body.get("code", "")] += 1

        for i in range(jobs):
            when = start + i * STEP + rng.uniform(0, STEP * 0.8)
            come_back(when)
            clock.set(when)
            client = rng.choice(clients)
            job_id = client.start_job()
            if job_id is not None:
                late.append((when + rng.uniform(3660, 4200), client, job_id))
                late.sort(key=lambda item: item[0])
        come_back(start + span)  # the ones due after the end never come back
        clock.set(start + span)
        ledger.prune()
        live = Counter(r.account for r in ledger.snapshot() if r.job_id in tally.jobs)
        rows = []
        for client in clients:
            counts = tally.counts.get(client.account, Counter())
            row = {c: counts[c] for c in ("charged", "reused", "refunded", "expired")}
            row["granted"] = DEMO_ACCOUNTS[client.account]
            row["live"] = live[client.account]
            row["insufficient_credits"] = client.rejected["insufficient_credits"]
            row["job_in_progress"] = client.rejected["job_in_progress"]
            row["balance"] = ledger.balance(client.account) or 0
            rows.append(row)
    calls: Counter[str] = Counter()
    for client in clients:
        calls.update(client.calls)
    return DemoResult(rows, list(DEMO_ACCOUNTS), calls, late_calls, span)


def render_demo(result: DemoResult, *, url: str, seed: int, jobs: int) -> tuple[list[str], bool]:
    """The demo's report, and whether its two bookkeeping checks hold."""
    minutes = int(result.span // 60)
    lines = [
        f"jobcredits demo: {jobs} summarize jobs (transcribe + analyze), seed {seed}, "
        f"store {redact_url(url)}",
        f"simulated {minutes // 60}h {minutes % 60:02d}m on a fake clock; "
        "window 1h; 1 credit per job",
        "",
    ]
    headers = (
        "account",
        "granted",
        "charged",
        "reused",
        "refunded",
        "expired",
        "live",
        "402 no credit",
        "409 in progress",
        "balance",
    )
    rows: list[list[object]] = [
        [account, *(row[c] for c in DEMO_COLUMNS)]
        for account, row in zip(result.accounts, result.rows, strict=True)
    ]
    rows.append(["total", *(result.total(c) for c in DEMO_COLUMNS)])
    table = _table(headers, rows)
    lines += [*table[:-1], "-" * len(table[0]), table[-1], ""]
    calls = ", ".join(f"{k} {v}" for k, v in sorted(result.calls.items()))
    lines.append(f"calls: {sum(result.calls.values())} ({calls})")
    late = ", ".join(f"{k} {v}" for k, v in sorted(result.late_calls.items()))
    lines.append(
        f"second calls after the 1h window: {sum(result.late_calls.values())} ({late or 'none'})"
    )
    granted, balance = result.total("granted"), result.total("balance")
    charged, refunded = result.total("charged"), result.total("refunded")
    expired, live = result.total("expired"), result.total("live")
    spent_ok = granted - balance == charged - refunded
    settled_ok = charged == refunded + expired + live
    lines.append(
        f"check: granted {granted} - balance {balance} = charged {charged} - refunded "
        f"{refunded} = {charged - refunded} credits spent: {'ok' if spent_ok else 'MISMATCH'}"
    )
    lines.append(
        f"check: charged {charged} = refunded {refunded} + expired {expired} + live {live}: "
        f"{'ok' if settled_ok else 'MISMATCH'}"
    )
    return lines, spent_ok and settled_ok


def _cmd_demo(args: argparse.Namespace) -> int:
    result = run_demo(args.store, seed=args.seed, jobs=args.jobs)
    lines, ok = render_demo(result, url=args.store, seed=args.seed, jobs=args.jobs)
    for line in lines:
        _out(line)
    return 0 if ok else 1


# -- the command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; public so docs and tests can print it."""
    parser = _Parser(
        prog=PROG,
        description="Per-job credits: run the demo, or inspect and settle a store.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    traceback_help = f"on an error, print its traceback too (or set {TRACEBACK_ENV}=1)"
    parser.add_argument("--traceback", action="store_true", help=traceback_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="simulate clients against a small WSGI app and print what was charged",
        description="Run simulated clients against an in-process WSGI app on a fake clock "
        "and print what each account was charged, reused, refunded and rejected.",
    )
    demo.add_argument(
        "--store",
        default="memory://",
        metavar="URL",
        help="store URL (default: memory://); e.g. sqlite:///demo.db",
    )
    demo.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    demo.add_argument(
        "--jobs",
        type=_positive,
        default=40,
        metavar="N",
        help=f"jobs to run, 1 to {DEMO_JOBS_MAX} (default: 40)",
    )
    demo.set_defaults(func=_cmd_demo)

    url_help = f"store URL, e.g. sqlite:///jobs.db (default: ${URL_ENV})"

    snap = sub.add_parser("snapshot", help="list the live jobs", description="List the live jobs.")
    snap.add_argument("--url", help=url_help)
    snap.add_argument("--json", action="store_true", help="print all of them as a JSON array")
    snap.add_argument(
        "--limit",
        type=non_negative,
        default=50,
        metavar="N",
        help="rows of the table (default: 50)",
    )
    snap.set_defaults(func=_cmd_snapshot)

    stats = sub.add_parser(
        "stats",
        help="count the live jobs by state and scope",
        description="Count the live jobs by state and scope, the credits they hold and "
        "the oldest one. Reads the whole store: an operator's command.",
    )
    stats.add_argument("--url", help=url_help)
    stats.add_argument("--json", action="store_true", help="print the figures as a JSON object")
    stats.set_defaults(func=_cmd_stats)

    prune = sub.add_parser(
        "prune",
        help="remove expired jobs, refund stale first calls",
        description="Remove expired jobs and refund first calls whose lease ran out.",
    )
    prune.add_argument("--url", help=url_help)
    prune.set_defaults(func=_cmd_prune)

    export = sub.add_parser(
        "export",
        help="print the journal as JSON lines, for billing",
        description="Print the journal entries after a named cursor as JSON lines (one "
        "entry a line, with its idempotency_key) and advance the cursor once they are "
        "written. Entries are never skipped; after a crash at most one batch is printed "
        "again, so receivers must deduplicate on idempotency_key.",
    )
    export.add_argument("--url", help=url_help)
    export.add_argument(
        "--cursor",
        required=True,
        metavar="NAME",
        help="the cursor to read from and advance, stored in the store (created at the "
        "start of the journal if new)",
    )
    export.add_argument(
        "--follow",
        action="store_true",
        help="keep waiting for new entries (until interrupted or SIGTERM)",
    )
    export.add_argument(
        "--batch",
        type=_batch,
        default=500,
        metavar="N",
        help="entries per read, 1 to 10000 (default: 500)",
    )
    export.add_argument(
        "--poll",
        type=_positive_seconds,
        default=1.0,
        metavar="SECONDS",
        help="with --follow, how long to wait when there is nothing new (0.05 to 3600, default: 1)",
    )
    export.set_defaults(func=_cmd_export)

    cursors = sub.add_parser(
        "cursors",
        help="list or delete the journal's named cursors",
        description="List the journal cursors stored in the store and their positions "
        "(the last seq each exporter finished with), or delete the cursor of a retired "
        "exporter: a cursor holds back the trimming of every entry it has not read.",
    )
    cursors.add_argument("--url", help=url_help)
    cursors.add_argument("--json", action="store_true", help="print them as a JSON object")
    cursors.add_argument(
        "--delete", action="append", metavar="NAME", help="delete this cursor (repeatable)"
    )
    cursors.set_defaults(func=_cmd_cursors)

    grant = sub.add_parser(
        "grant",
        help="add credits to an account",
        description="Add credits to an account (negative to take some away) and print "
        "the new balance. With --id, safe to retry: the same ID for the same account is "
        "applied once (for at least 7 days), and a repeat prints the balance the first "
        "one printed.",
    )
    grant.add_argument("--url", help=url_help)
    grant.add_argument(
        "--id",
        dest="grant_id",
        metavar="ID",
        help="the grant's idempotency key (1-128 characters of A-Z a-z 0-9 . _ : -): "
        "rerunning the command with the same ID grants nothing more",
    )
    grant.add_argument("account", metavar="ACCOUNT", help="the account, as the app names it")
    grant.add_argument("amount", metavar="N", type=int, help="credits to add (negative: take)")
    grant.set_defaults(func=_cmd_grant)

    balance = sub.add_parser(
        "balance", help="print an account's balance", description="Print an account's balance."
    )
    balance.add_argument("--url", help=url_help)
    balance.add_argument("account", metavar="ACCOUNT", help="the account, as the app names it")
    balance.set_defaults(func=_cmd_balance)

    migrate = sub.add_parser(
        "migrate",
        help="create or update a store's schema (PostgreSQL)",
        description="Create or update the store's schema and print its version. "
        "Safe to run again and from several hosts at once.",
    )
    migrate.add_argument("--url", help=url_help)
    migrate.set_defaults(func=_cmd_migrate)
    for command in sub.choices.values():
        # Also after the command's name; SUPPRESS keeps a --traceback given
        # before it from being reset.
        command.add_argument(
            "--traceback", action="store_true", default=argparse.SUPPRESS, help=traceback_help
        )
    return parser


def describe_error(exc: BaseException) -> tuple[str, int]:
    """The one line to print for an error that ended a command, and the exit
    status: the mapping every command shares.

    - the command line argparse rejects (``CliError`` with status 2): 2;
    - what the operator asked for is wrong, or the store cannot be reached
      (``CliError``, every :class:`~jobcredits_plugin.JobCreditsError`:
      ``InvalidArgument``, ``ConfigurationError``, ``StoreUnavailable``...; an
      ``ImportError`` naming the extra a URL needs; an ``OSError`` of the
      machine): 1, with the error's own message;
    - Ctrl-C: 130;
    - anything else is a bug, in this package or in a store driver: 70
      (``EX_SOFTWARE``), as ``internal error: <type>: <message>`` and how to
      get the traceback for a report.
    """
    if isinstance(exc, CliError):
        return str(exc), exc.status
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    if isinstance(exc, (JobCreditsError, ImportError, OSError)):
        return str(exc) or type(exc).__name__, EXIT_ERROR
    text = str(exc)
    name = type(exc).__name__
    return (f"internal error: {name}: {text} " if text else f"internal error: {name} ") + (
        # (No NAME=value here: the line goes through the redactor, which
        # masks the value of any name containing "cred", as JOBCREDITS_ does.)
        "(a bug in jobcredits-plugin or a store driver; for the traceback, run again "
        f"with --traceback or with {TRACEBACK_ENV} set to 1, and report it)"
    ), EXIT_SOFTWARE


def _redact(text: str, args: argparse.Namespace | None) -> str:
    """``text`` with every secret masked (the one redactor,
    :func:`~jobcredits_plugin.stores._urls.redact_text`): any URL in it, any
    ``password=...`` pair, and the secrets of the store URLs the command was
    given, wherever a driver echoes them."""
    urls = {os.environ.get(URL_ENV)}
    if args is not None:
        urls |= {getattr(args, "url", None), getattr(args, "store", None)}
    return redact_text(text, *sorted(u for u in urls if isinstance(u, str) and u))


def _want_traceback(args: argparse.Namespace | None) -> bool:
    if args is not None and getattr(args, "traceback", False):
        return True
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def main(argv: list[str] | None = None) -> int:
    """Run the ``jobcredits`` command; returns the exit status instead of
    exiting, so tests and other tools can call it."""
    parser = build_parser()
    args: argparse.Namespace | None = None
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help and --version
            return exc.code if isinstance(exc.code, int) else 0
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (``| head``) went away: stop quietly, and keep Python
        # from complaining again when it flushes stdout at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - every error ends as one line, never a traceback
        message, status = describe_error(exc)
        if _want_traceback(args) and not isinstance(exc, CliError):
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            sys.stderr.write(_redact(text, args))
        _error(_redact(message, args))
        return status


def _error(message: str) -> None:
    # One line, whatever the message held, and no secret (callers pass the
    # message through _redact, which knows the command's URLs; this catches
    # any URL or password=... pair a message quotes).
    text = redact_text(" ".join(message.split()))
    _out(f"{PROG}: error: {text}", sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
