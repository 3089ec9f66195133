"""Hostile input at every public entry point: a clear error, never a raw one,
and nothing recorded.

Issue 12's "done when": arbitrary text (lone surrogates, NUL, control
characters, very long), integers (negative, 2**53, 2**63, 2**64, far beyond),
floats (NaN, infinities, -0.0, 1e16), bools and wrong types (None, bytes,
lists, dicts) are fed into the ledger's methods and their async twins, the
decorator's options, the adapters' settings, the CLI's arguments and the store
URLs. Every call must end in success or a :class:`JobCreditsError`:
:class:`InvalidArgument` (400) for what a client sent, :class:`ConfigurationError`
for the app's own setup mistake; never a TypeError, OverflowError,
UnicodeEncodeError, a driver's exception or a 503 (the store was reachable all
along). When a call raises, the store must be as it was: no job record, no
journal entry, no balance change, no hook.

Two drivers: a deterministic sweep (every value of ``HOSTILE`` in every
argument position, on every store) and a hypothesis property test (random
mixes of sane and hostile arguments, the stores compared against each other:
the same call must end the same way on every store). The Django settings
live in ``tests/integrations/django/test_hostile_settings.py``.

Each test collects every misbehaving case before it asserts, so that a run
lists them all (entry point, input, store, exception) instead of the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import io
import math
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobcredits_plugin import (
    ConfigurationError,
    InsufficientCredits,
    InvalidAccount,
    InvalidArgument,
    InvalidJobId,
    JobCreditsError,
    Ledger,
    NotAuthenticated,
    StoreUnavailable,
    charges_credit,
    header,
    hookimpl,
)
from jobcredits_plugin._validation import MAX_CREDITS, MAX_SECONDS
from jobcredits_plugin.stores import BaseStore
from jobcredits_plugin.stores import from_url as store_from_url
from jobcredits_plugin.testing import FakeClock, RecordingPlugin
from tests.stores.conftest import (
    CLEANUP,
    POSTGRES_DEFAULT,
    POSTGRES_URL_ENV,
    REDIS_DEFAULT,
    REDIS_URL_ENV,
    STORES,
    _server_url,
)

# -- the hostile values ----------------------------------------------------------------

SECRET = "s3cr3t-Pa55"

TEXTS: list[Any] = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "gold\udc80",
    "\udfff\ud800",
    "\n",
    "a\r\nb",
    "\t",
    "\x1b[31m",
    "\x7f",
    "\x85",
    "\u2028",
    "\ufeff",
    "é",
    "💥",
    "*",
    "a|b",
    "{a}",
    "%s%n",
    "'; DROP TABLE jobs; --",
    "$fn$",
    "../../etc/passwd",
    "x" * 65,
    "x" * 129,
    "x" * 257,
    "x" * 100_000,
    "nan",
    "inf",
    "-1",
    "1e16",
    "9223372036854775808",
    "٣",
]
INTS: list[Any] = [
    0,
    1,
    -1,
    2**31,
    MAX_CREDITS,
    2**53,
    2**63 - 1,
    2**63,
    -(2**63),
    2**64,
    -(2**64),
    10**30,
    10**400,
]
FLOATS: list[Any] = [
    math.nan,
    math.inf,
    -math.inf,
    -0.0,
    0.0,
    1e-320,
    0.5,
    1.0,
    1e16,
    1e300,
    MAX_SECONDS + 1,
]
OTHERS: list[Any] = [
    None,
    True,
    False,
    b"abc",
    b"\xff\x00",
    [],
    ["a"],
    {},
    {"a": 1},
    (1,),
    object(),
]
HOSTILE: list[Any] = TEXTS + INTS + FLOATS + OTHERS

#: The raw errors that must never escape (names, so no driver must be imported).
RAW_NAMES = ("TypeError", "OverflowError", "UnicodeEncodeError", "UnicodeDecodeError")


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(exc: BaseException) -> str:
    kind = type(exc)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    message = " ".join(str(exc).split())
    return f"{name}: {message[:160]}"


class Failures:
    """Misbehaving cases, grouped for the report: one line per entry point
    and kind of problem, with an example message and the values that hit it."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], tuple[str, list[str]]] = {}

    def add(self, where: str, value: Any, problem: str) -> None:
        kind = problem.split(":", 1)[0]
        _example, values = self.groups.setdefault((where, kind), (problem, []))
        values.append(show(value))

    def __bool__(self) -> bool:
        return bool(self.groups)

    def __str__(self) -> str:
        lines = [f"{sum(len(v) for _, v in self.groups.values())} bad outcomes:"]
        for (where, _), (example, values) in sorted(self.groups.items()):
            lines.append(f"  {where}: {example[:200]}")
            lines.append(f"      for {len(values)} value(s): {', '.join(values[:12])}")
        return "\n".join(lines)


def hostile_strategy() -> st.SearchStrategy[Any]:
    """Anything a caller can pass: text with every code point (surrogates
    included), integers of any size, every float, and the wrong types."""
    return st.one_of(
        st.sampled_from(HOSTILE),
        st.text(st.characters(exclude_categories=()), max_size=40),
        st.text(st.characters(exclude_categories=()), min_size=120, max_size=300),
        st.integers(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.sampled_from(INTS),
        st.floats(),
        st.sampled_from(FLOATS),
        st.booleans(),
        st.none(),
        st.binary(max_size=8),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
    )


# -- stores and ledgers ----------------------------------------------------------------

#: The shared stores need their drivers: an environment without them (tox's
#: ``noframework``) runs the in-process stores only.
KINDS = ("memory", "sqlite", "redis", "postgres")
KIND_PARAMS = tuple(
    pytest.param(
        kind,
        marks=pytest.mark.skipif(
            importlib.util.find_spec(driver) is None, reason=f"needs the {driver} driver"
        ),
    )
    if driver
    else kind
    for kind, driver in (
        ("memory", ""),
        ("sqlite", ""),
        ("redis", "redis"),
        ("postgres", "psycopg"),
    )
)
#: Accounts the ledger is fed sane values for (their balances are watched).
ACCOUNTS = ("acct", "acct-2")
JOBS = ("job-1", "job-2", "job-3")


class RejectionLog:
    """An ``on_reject`` plugin: every refused charge reports what it could,
    so the rejection path (which re-checks each hostile value) runs too. A
    reported value is either None or one that passed validation."""

    def __init__(self) -> None:
        self.bad: list[str] = []

    @hookimpl
    def on_reject(
        self, error: JobCreditsError, account: Any, scope: Any, job_id: Any, cost: Any
    ) -> None:
        for name, value in (("account", account), ("scope", scope), ("job_id", job_id)):
            if value is not None and MUST_REFUSE[name](value):
                self.bad.append(f"on_reject reported an invalid {name} {show(value)}")
        if cost is not None and MUST_REFUSE["cost"](cost):
            self.bad.append(f"on_reject reported an invalid cost {show(cost)}")


class Rig:
    """One store kind's ledger, with what is needed to tell whether a call
    recorded anything: the hooks seen, the journal's last seq, the live
    records and the watched balances."""

    def __init__(self, kind: str, store: BaseStore, loop: asyncio.AbstractEventLoop) -> None:
        self.kind = kind
        self.store = store
        self.loop = loop
        self.clock = FakeClock()
        self.events = RecordingPlugin()
        self.rejections = RejectionLog()
        self.ledger = Ledger(
            store, balances=True, clock=self.clock, plugins=[self.events, self.rejections]
        )
        for account in ACCOUNTS:
            self.ledger.grant(account, 1_000_000)

        self.seq = 0
        #: The state as last read, while no call may have changed it.
        self.known: tuple[Any, ...] | None = None

    def last_seq(self) -> int:
        """The journal's newest seq (read from the last one seen, so a long
        run does not reread the whole journal on every call)."""
        while True:
            entries = self.ledger.journal(after=self.seq, limit=10_000)
            if not entries:
                return self.seq
            self.seq = entries[-1].seq

    def state(self) -> tuple[Any, ...]:
        """Everything a call may change, as one comparable value."""
        records = sorted(
            (r.account, r.scope, r.job_id, r.charge_id, r.state, r.uses, r.cost)
            for r in self.ledger.snapshot()
        )
        balances = tuple(self.ledger.balance(a) for a in ACCOUNTS)
        return (len(self.events.events), self.last_seq(), records, balances)

    def run(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        method = getattr(self.ledger, name)
        if name.startswith("a") and inspect.iscoroutinefunction(method):
            return self.loop.run_until_complete(method(*args, **kwargs))
        return method(*args, **kwargs)


@contextlib.contextmanager
def rigs_for(kinds: tuple[str, ...], tmp: Path) -> Iterator[dict[str, Rig]]:
    """A Rig per store kind (those whose server is missing are skipped off CI,
    as the store suite does), closed and cleaned up afterwards."""
    loop = asyncio.new_event_loop()
    made: dict[str, Rig] = {}
    try:
        for kind in kinds:
            directory = tmp / f"{kind}-{uuid.uuid4().hex[:8]}"
            directory.mkdir()
            try:
                store = STORES[kind](directory)
            except pytest.skip.Exception:
                continue
            made[kind] = Rig(kind, store, loop)
        if not made:
            pytest.skip("no store available")
        yield made
    finally:
        for rig in made.values():
            with contextlib.suppress(Exception):
                loop.run_until_complete(rig.ledger.aclose())
            with contextlib.suppress(Exception):
                rig.ledger.close()
            cleanup = CLEANUP.get(rig.kind)
            if cleanup is not None:
                with contextlib.suppress(Exception):
                    cleanup(rig.store)
        loop.close()


@pytest.fixture(scope="module")
def rigs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Rig]]:
    with rigs_for(KINDS, tmp_path_factory.mktemp("hostile")) as made:
        yield made


@pytest.fixture(scope="module")
def prop_rigs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Rig]]:
    """Rigs of their own for the property test, which compares the stores'
    balances: the sweep leaves them apart wherever it found a bug."""
    with rigs_for(KINDS, tmp_path_factory.mktemp("hostile-prop")) as made:
        yield made


# -- the ledger's methods --------------------------------------------------------------

#: Each public ledger method with sane arguments: (positional, keyword).
SANE: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "charge": (("acct", "job-1"), {"scope": "default", "cost": 1, "tier": None, "backend": None}),
    "confirm": (("acct", "job-1"), {"scope": "default", "charge_id": None}),
    "refund": (("acct", "job-1"), {"scope": "default", "charge_id": None}),
    "lookup": (("acct", "job-1"), {"scope": "default"}),
    "grant": (("acct", 1), {"grant_id": None}),
    "balance": (("acct",), {}),
    "prune": ((), {"limit": 10}),
    "snapshot": ((), {}),
    "journal": ((), {"after": 0, "limit": 10}),
    "trim_journal": ((0,), {"max_age": 3600.0}),
    "cursor": (("reader",), {}),
    "cursor_exists": (("reader",), {}),
    "delete_cursor": (("reader",), {}),
    "cursors": ((), {}),
}
ASYNC_TWINS = {
    "charge": "acharge",
    "confirm": "aconfirm",
    "refund": "arefund",
    "lookup": "alookup",
    "grant": "agrant",
    "balance": "abalance",
    "prune": "aprune",
    "snapshot": "asnapshot",
    "journal": "ajournal",
    "trim_journal": "atrim_journal",
    "cursor": "acursor",
    "cursors": "acursors",
}


def _sane(name: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    args, kwargs = SANE[name]
    return args, dict(kwargs)


def positions(name: str) -> list[tuple[int | str, tuple[Any, ...], dict[str, Any]]]:
    """Every argument slot of a method, as (slot, sane args, sane kwargs)."""
    args, kwargs = _sane(name)
    return [(i, args, kwargs) for i in range(len(args))] + [(k, args, kwargs) for k in kwargs]


def substitute(
    args: tuple[Any, ...], kwargs: dict[str, Any], slot: int | str, value: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(slot, int):
        new = list(args)
        new[slot] = value
        return tuple(new), kwargs
    return args, {**kwargs, slot: value}


_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ID = re.compile(r"[A-Za-z0-9._:-]+")


def _bad_text(value: Any, longest: int, pattern: re.Pattern[str] | None = None) -> bool:
    if not isinstance(value, str) or not value or len(value) > longest:
        return True
    if _SURROGATE.search(value) or _CONTROL.search(value):
        return True
    return pattern is not None and pattern.fullmatch(value) is None


def _not_int(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def _bad_seconds(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    return not 0 < value <= MAX_SECONDS


#: What each argument must refuse with a 400 (InvalidArgument), whatever the
#: store: the documented checks (docs/security.md). Values the table does not
#: flag may succeed or be refused.
MUST_REFUSE: dict[str, Callable[[Any], bool]] = {
    "account": lambda v: _bad_text(v, 256),
    "job_id": lambda v: _bad_text(v, 128, _ID),
    "scope": lambda v: _bad_text(v, 64, _ID),
    "name": lambda v: _bad_text(v, 64, _ID),
    "cost": lambda v: _not_int(v) or not 0 <= v <= MAX_CREDITS,
    "amount": lambda v: _not_int(v) or not -MAX_CREDITS <= v <= MAX_CREDITS,
    "tier": lambda v: v is not None and _bad_text(v, 64),
    "backend": lambda v: v is not None and _bad_text(v, 64),
    "charge_id": lambda v: v is not None and _bad_text(v, 64),
    "grant_id": lambda v: v is not None and _bad_text(v, 128, _ID),
    "limit": lambda v: v is not None and (_not_int(v) or v < 1),
    "after": lambda v: _not_int(v) or v < 0,
    "before": lambda v: v is not None and (_not_int(v) or v < 0),
    "max_age": lambda v: v is not None and _bad_seconds(v),
}


def slot_name(name: str, slot: int | str) -> str:
    if isinstance(slot, str):
        return slot
    sync = next((s for s, a in ASYNC_TWINS.items() if a == name), name)
    params = [p for p in inspect.signature(getattr(Ledger, sync)).parameters if p != "self"]
    return params[slot]


def must_refuse(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
    """The arguments of this call that the documented checks refuse."""
    sync = next((s for s, a in ASYNC_TWINS.items() if a == name), name)
    params = [p for p in inspect.signature(getattr(Ledger, sync)).parameters if p != "self"]
    named = {**dict(zip(params, args, strict=False)), **kwargs}
    if sync == "journal" and "limit" in named:
        limit = named.pop("limit")
        if _not_int(limit) or not 1 <= limit <= 10_000:
            return ["limit"]
    return [k for k, v in named.items() if k in MUST_REFUSE and MUST_REFUSE[k](v)]


def judge_call(rig: Rig, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """Call, and say what went wrong (None: nothing did). A client's input
    may succeed or raise a JobCreditsError that is not a 5xx, and must raise
    InvalidArgument where the documented checks say so; when it raises, the
    store must be as it was."""
    refuse = must_refuse(name, args, kwargs)
    # The state after the last refused call is still the state (or that is
    # the failure this reports): reading it once per call halves the time.
    before = rig.known if rig.known is not None else rig.state()
    rig.known = None
    try:
        rig.run(name, args, kwargs)
    except JobCreditsError as exc:
        after = rig.known = rig.state()
        if exc.status >= 500:
            return f"answered {exc.status} ({describe(exc)})"
        if refuse and not isinstance(exc, InvalidArgument):
            return f"bad {refuse} answered {describe(exc)}, not InvalidArgument"
        if after != before:
            return f"raised {describe(exc)} but recorded something: {before} -> {after}"
        return None
    except Exception as exc:
        after = rig.known = rig.state()
        changed = " (and recorded something)" if after != before else ""
        return f"raw {describe(exc)}{changed}"
    if refuse:
        return f"accepted bad {', '.join(refuse)}"
    return None


def call_label(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    shown = [show(a) for a in args] + [f"{k}={show(v)}" for k, v in kwargs.items()]
    return f"ledger.{name}({', '.join(shown)})"


@pytest.mark.parametrize("kind", KINDS)
def test_every_ledger_method_takes_every_hostile_value(rigs: dict[str, Rig], kind: str) -> None:
    """Each value of HOSTILE in each argument of each ledger method (sync,
    and the async twin for every third value), on each store."""
    rig = rigs.get(kind)
    if rig is None:
        pytest.skip(f"no {kind} store")
    rig.known = None
    failures = Failures()
    for name in SANE:
        for slot, args, kwargs in positions(name):
            for index, value in enumerate(HOSTILE):
                a, k = substitute(args, kwargs, slot, value)
                if name in ("charge", "confirm", "refund", "lookup") and slot != 1:
                    # A fresh job each time, so no call meets a record an
                    # earlier one left.
                    a = (a[0], f"job-{uuid.uuid4().hex[:12]}", *a[2:])
                twin = ASYNC_TWINS.get(name)
                use = twin if twin and index % 3 == 0 else name
                problem = judge_call(rig, use, a, k)
                if problem:
                    where = f"[{kind}] ledger.{use}({slot_name(use, slot)}=...)"
                    failures.add(where, value, problem)
                elif name == "charge":
                    # Settle what the call charged, so the live records stay few.
                    with contextlib.suppress(JobCreditsError):
                        rig.ledger.refund(*a[:2], scope=k["scope"])
    for problem in rig.rejections.bad:
        failures.add(f"[{kind}] on_reject", None, problem)
    assert not failures, str(failures)


@pytest.mark.parametrize("kind", KINDS)
def test_a_permissive_job_id_pattern_on_every_store(rigs: dict[str, Rig], kind: str) -> None:
    """With job_id_pattern=r"(?s).+" every text up to 128 characters is a job
    id, except control characters and lone surrogates (refused whatever the
    pattern admits): each store takes the rest (a NUL once reached PostgreSQL
    as a raw DataError)."""
    rig = rigs.get(kind)
    if rig is None:
        pytest.skip(f"no {kind} store")
    ledger = Ledger(rig.store, balances=True, clock=rig.clock, job_id_pattern=r"(?s).+")
    failures = Failures()
    rig.known = None
    for value in TEXTS:
        refuse = (
            not value
            or len(value) > 128
            or bool(_SURROGATE.search(value) or _CONTROL.search(value))
        )
        where = f"[{kind}] ledger(job_id_pattern='(?s).+').charge(job_id=...)"
        before = rig.state()
        try:
            ledger.charge("acct", value)
        except InvalidJobId:
            if not refuse:
                failures.add(where, value, "refused")
            elif rig.state() != before:
                failures.add(where, value, "refused but recorded something")
        except Exception as exc:
            failures.add(where, value, f"raw {describe(exc)}")
        else:
            if refuse:
                failures.add(where, value, "accepted")
            with contextlib.suppress(JobCreditsError):
                ledger.refund("acct", value)
    assert not failures, str(failures)


# -- the property test -----------------------------------------------------------------

SANE_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "account": st.sampled_from(ACCOUNTS),
    "job_id": st.sampled_from(JOBS),
    "scope": st.sampled_from(("default", "summarize")),
    "cost": st.integers(0, 3),
    "tier": st.sampled_from((None, "gold")),
    "backend": st.sampled_from((None, "gpu")),
    "charge_id": st.none(),
    "grant_id": st.sampled_from((None, "pay-1", "pay-2")),
    "amount": st.integers(-3, 3),
    "limit": st.sampled_from((None, 1, 10)),
    "after": st.integers(0, 3),
    "before": st.integers(0, 3),
    "max_age": st.sampled_from((None, 60.0)),
    "name": st.sampled_from(("reader", "other")),
}


@st.composite
def ledger_calls(draw: st.DrawFn) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """A ledger method and its arguments, each of them sane or hostile."""
    name = draw(st.sampled_from(sorted(SANE)))
    if name in ASYNC_TWINS and draw(st.booleans()):
        name = ASYNC_TWINS[name]
    sync_name = next((s for s, a in ASYNC_TWINS.items() if a == name), name)
    params = inspect.signature(getattr(Ledger, sync_name)).parameters
    sane_args, sane_kwargs = _sane(sync_name)
    names = [p for p in params if p != "self"]
    args = []
    for i in range(len(sane_args)):
        param = names[i]
        args.append(draw(st.one_of(SANE_VALUES[param], hostile_strategy())))
    kwargs = {}
    for key in sane_kwargs:
        if draw(st.booleans()):
            kwargs[key] = draw(st.one_of(SANE_VALUES[key], hostile_strategy()))
    return name, tuple(args), kwargs


def outcome(rig: Rig, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """How the call ended: "ok", the JobCreditsError's class name, or "raw ..."."""
    refuse = must_refuse(name, args, kwargs)
    try:
        rig.run(name, args, kwargs)
    except JobCreditsError as exc:
        if refuse and not isinstance(exc, InvalidArgument):
            return f"bad {refuse} answered {describe(exc)}, not InvalidArgument"
        return type(exc).__name__
    except Exception as exc:
        return "raw " + describe(exc)
    return f"accepted bad {refuse}" if refuse else "ok"


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(call=ledger_calls())
def test_property_every_store_answers_hostile_calls_alike(
    prop_rigs: dict[str, Rig], call: tuple[str, tuple[Any, ...], dict[str, Any]]
) -> None:
    """Random calls mixing sane and hostile arguments: on each store the call
    succeeds or raises a JobCreditsError below 500, records nothing when it
    raises, and ends the same way as on the memory store (the reference)."""
    rigs = prop_rigs
    name, args, kwargs = call
    label = call_label(name, args, kwargs)
    outcomes: dict[str, str] = {}
    for kind, rig in rigs.items():
        before = rig.state()
        result = outcome(rig, name, args, kwargs)
        outcomes[kind] = result
        assert not result.startswith(("raw ", "bad ", "accepted ")), f"[{kind}] {label}: {result}"
        assert result not in ("StoreUnavailable", "ConfigurationError"), (
            f"[{kind}] {label}: {result}"
        )
        if result != "ok":
            assert rig.state() == before, f"[{kind}] {label}: {result} but recorded something"
    assert len(set(outcomes.values())) == 1, f"{label}: stores disagree: {outcomes}"
    states = {kind: rig.state()[3] for kind, rig in rigs.items()}
    assert len(set(states.values())) == 1, f"{label}: balances differ: {states}"


# -- setup: the app's own options ------------------------------------------------------


def judge_setup(build: Callable[[], Any], *, refuse: bool = False) -> str | None:
    """Build something from the app's options: success, or ConfigurationError
    (the app's mistake; never the client's 400, never a raw error). With
    ``refuse``, the options are documented as bad and must not be accepted."""
    try:
        with warnings_ignored():
            built = build()
    except ConfigurationError:
        return None
    except JobCreditsError as exc:
        return f"not ConfigurationError: {describe(exc)}"
    except Exception as exc:
        return f"raw {describe(exc)}"
    close = getattr(built, "close", None)
    if callable(close) and not inspect.iscoroutinefunction(close):
        with contextlib.suppress(Exception):
            close()
    if refuse:
        return "accepted"
    return None


@contextlib.contextmanager
def warnings_ignored() -> Iterator[None]:
    """The in-process-store warning (and the like) are not what is judged here."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _bad_flag(value: Any) -> bool:
    return not isinstance(value, bool)


def _bad_count(value: Any) -> bool:
    return value is not None and (_not_int(value) or not 1 <= value <= MAX_CREDITS)


#: Ledger options and what the documented checks refuse.
LEDGER_REFUSES: dict[str, Callable[[Any], bool]] = {
    "ttl": _bad_seconds,
    "lease": lambda v: _bad_seconds(v) or (v > 3600.0),
    "max_uses": _bad_count,
    "balances": _bad_flag,
    "entry_points": _bad_flag,
    "clock": lambda v: not callable(v),
    "job_id_pattern": lambda v: v is not None and not isinstance(v, (str, re.Pattern)),
    "store": lambda v: v is not None,
    "plugins": lambda v: False,
}


def ledger_options() -> list[str]:
    """Every keyword option of Ledger (new ones join the sweep by themselves)."""
    params = inspect.signature(Ledger).parameters
    return [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def test_ledger_options_take_every_hostile_value() -> None:
    """Ledger(option=hostile): built, or ConfigurationError; documented bad
    values are refused."""
    failures = Failures()
    for option in ledger_options():
        for value in HOSTILE:
            refuse = LEDGER_REFUSES.get(option, lambda v: False)(value)
            problem = judge_setup(lambda o=option, v=value: Ledger(**{o: v}), refuse=refuse)
            if problem:
                failures.add(f"Ledger({option}=...)", value, problem)
    assert not failures, str(failures)


def test_job_id_patterns_that_cannot_work_are_refused() -> None:
    """Patterns that compile badly (a repeat beyond re's limit, a bytes
    pattern) are configuration errors, not a raw error at construction or at
    every charge."""
    failures = Failures()
    for pattern in ["x{99999999999}", "a{5,3}", "[", "(?P<", re.compile(b"x"), "\ud800+"]:
        problem = judge_setup(lambda p=pattern: Ledger(job_id_pattern=p))
        if problem:
            failures.add("Ledger(job_id_pattern=...)", pattern, problem)
    assert not failures, str(failures)


CLOCK_READINGS: list[Any] = [
    v
    for v in [*HOSTILE, 2**33, 1700000000000.0, -1.0, -(2**63)]
    if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 2**33)
]
CLOCK_OPS: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "charge": (("acct", "job-clock"), {}),
    "confirm": (("acct", "job-1"), {}),
    "refund": (("acct", "job-1"), {}),
    "lookup": (("acct", "job-1"), {}),
    "grant": (("acct", 1), {}),
    "prune": ((), {}),
    "snapshot": ((), {}),
    "trim_journal": ((), {"max_age": 60.0}),
    "acharge": (("acct", "job-clock"), {}),
    "agrant": (("acct", 1), {}),
}


@pytest.mark.parametrize("kind", KINDS)
def test_a_broken_clock_is_a_configuration_error_with_nothing_recorded(
    rigs: dict[str, Rig], kind: str
) -> None:
    """A clock that returns None, NaN, infinity, a negative, a millisecond
    reading or a wrong type is the app's bug: ConfigurationError before the
    store is touched, on every operation that reads it."""
    rig = rigs.get(kind)
    if rig is None:
        pytest.skip(f"no {kind} store")
    reading: list[Any] = [None]
    broken = Ledger(rig.store, balances=True, clock=lambda: reading[0], plugins=[rig.events])
    failures = Failures()
    for value in CLOCK_READINGS:
        reading[0] = value
        before = rig.state()
        where = f"[{kind}] clock returning hostile"
        for name, (args, kwargs) in CLOCK_OPS.items():
            try:
                method = getattr(broken, name)
                if inspect.iscoroutinefunction(method):
                    rig.loop.run_until_complete(method(*args, **kwargs))
                else:
                    method(*args, **kwargs)
            except ConfigurationError:
                pass
            except JobCreditsError as exc:
                failures.add(
                    f"{where}, ledger.{name}", value, f"not ConfigurationError: {describe(exc)}"
                )
            except Exception as exc:
                failures.add(f"{where}, ledger.{name}", value, f"raw {describe(exc)}")
            else:
                failures.add(f"{where}, ledger.{name}", value, "accepted")
        if rig.state() != before:
            failures.add(where, value, "recorded something")
    assert not failures, str(failures)


# -- the core decorator ----------------------------------------------------------------

DECORATOR_REFUSES: dict[str, Callable[[Any], bool]] = {
    "scope": lambda v: _bad_text(v, 64, _ID),
    "cost": lambda v: not callable(v) and MUST_REFUSE["cost"](v),
    "tier": lambda v: not callable(v) and MUST_REFUSE["tier"](v),
    "backend": lambda v: not callable(v) and MUST_REFUSE["backend"](v),
    "on_missing": lambda v: v not in ("charge", "reject"),
    "fail_open": _bad_flag,
    "account": lambda v: not callable(v),
    "job_id": lambda v: not callable(v),
}


def _account_of(request: dict[str, Any]) -> Any:
    return request["account"]


def _job_of(request: dict[str, Any]) -> Any:
    return request["job"]


def test_charges_credit_fixed_options_take_every_hostile_value() -> None:
    """charges_credit(option=hostile): decorated, or ConfigurationError at
    decoration (never a 400 later, at every call)."""
    ledger = Ledger(clock=FakeClock())
    failures = Failures()
    for option, refuses in DECORATOR_REFUSES.items():
        for value in HOSTILE:
            options: dict[str, Any] = {"account": _account_of, "job_id": _job_of, option: value}
            problem = judge_setup(
                lambda o=options: charges_credit(ledger, **o)(lambda request: "ok"),
                refuse=refuses(value),
            )
            if problem:
                failures.add(f"charges_credit({option}=...)", value, problem)
    for value in HOSTILE:
        problem = judge_setup(
            lambda v=value: charges_credit(v, account=_account_of, job_id=_job_of), refuse=True
        )
        if problem:
            failures.add("charges_credit(ledger=...)", value, problem)
    assert not failures, str(failures)


def _expected_for_callable(field: str, value: Any) -> type[JobCreditsError] | None:
    """What a call must raise when ``field`` comes back as ``value`` (None:
    it must succeed). The app's own callables (account, cost, tier) returning
    what they must not is the app's bug: ConfigurationError (500, issue 12
    item 7). An account read from a client's header by ``header()`` is the
    client's: a bad one is a 400. A job id is the client's."""
    if field == "account":  # the app's callable
        if value is None:
            return NotAuthenticated
        return ConfigurationError if MUST_REFUSE["account"](value) else None
    if field == "client_account":  # header("X-Account"): what the client sent
        text = str(value).strip()
        if not text:
            return NotAuthenticated
        return InvalidAccount if MUST_REFUSE["account"](text) else None
    if field in ("job", "tier"):
        # A callable's text may come from the client (a header it sent): its
        # type is the app's to get right, its text is checked as the client's.
        if value is None or (value == "" and field == "job"):
            return None  # no job id: charged as a job of its own
        if not isinstance(value, str):
            return ConfigurationError
        name = "job_id" if field == "job" else field
        return (
            (InvalidJobId if field == "job" else InvalidArgument)
            if MUST_REFUSE[name](value)
            else None
        )
    return ConfigurationError if MUST_REFUSE[field](value) else None


@pytest.mark.parametrize("kind", KINDS)
def test_charges_credit_callables_returning_hostile_values(rigs: dict[str, Rig], kind: str) -> None:
    """What the app's callables return for one call: a client's bad text is a
    400; a non-string account is the app's bug (ConfigurationError, 500);
    nothing is recorded and the function does not run."""
    rig = rigs.get(kind)
    if rig is None:
        pytest.skip(f"no {kind} store")
    ran: list[Any] = []

    def handler(request: dict[str, Any]) -> str:
        ran.append(request)
        return "ok"

    options: dict[str, Any] = {
        "job_id": _job_of,
        "cost": lambda request: request["cost"],
        "tier": lambda request: request["tier"],
    }
    by_app = charges_credit(rig.ledger, account=_account_of, **options)(handler)
    by_client = charges_credit(rig.ledger, account=header("X-Account"), **options)(handler)
    failures = Failures()
    rig.known = None
    # Every value on the in-process stores; the shared ones get every other
    # value (the checks before the store are the same code for all four).
    values = HOSTILE if kind in ("memory", "sqlite") else HOSTILE[::2]
    for field in ("account", "client_account", "job", "cost", "tier"):
        for value in values:
            if field == "client_account" and not isinstance(value, str):
                continue  # a header is text
            job = f"job-{uuid.uuid4().hex[:12]}"
            request = {"account": "acct", "job": job, "cost": 1, "tier": None, field: value}
            # header() reads a WSGI environ: the client's header is HTTP_X_ACCOUNT.
            request["HTTP_X_ACCOUNT"] = value if field == "client_account" else "acct"
            wrapped = by_client if field == "client_account" else by_app
            where = f"[{kind}] core charges_credit, {field} callable returns ..."
            expected = _expected_for_callable(field, value)
            before = rig.known if rig.known is not None else rig.state()
            rig.known = None
            del ran[:]
            try:
                wrapped(request)
            except JobCreditsError as exc:
                rig.known = rig.state()
                if expected is None and not isinstance(exc, InsufficientCredits):
                    # A valid new account has no credits: 402 is its answer.
                    failures.add(where, value, f"refused: {describe(exc)}")
                elif expected is not None and not isinstance(exc, expected):
                    failures.add(where, value, f"not {expected.__name__}: {describe(exc)}")
                if rig.known != before or ran:
                    failures.add(where, value, f"recorded or ran: {describe(exc)}")
            except Exception as exc:
                failures.add(where, value, f"raw {describe(exc)}")
            else:
                if expected is not None:
                    failures.add(where, value, "accepted")
                with contextlib.suppress(JobCreditsError):
                    rig.ledger.refund("acct", job)
    assert not failures, str(failures)


# -- store URLs ------------------------------------------------------------------------

#: Values for a URL's query options, as text (the URL is text): numbers out of
#: every range, non-numbers, NUL, a lone surrogate raw and percent-encoded,
#: long text.
URL_VALUES = [
    "",
    "nan",
    "inf",
    "-inf",
    "-1",
    "0",
    "0.5",
    "1e16",
    "1e309",
    "1e-320",
    "99999999999999999999",
    "-99999999999999999999",
    "1_0",
    " 1",
    "0x10",
    "٣",
    "abc",
    "true",
    "none",
    "\x00",
    "%00",
    "\udc80",
    "%ED%B2%80",
    "%ff",
    "é",
    "x" * 300,
]
#: Each scheme's options (a new option must be added here to be swept).
URL_OPTIONS: dict[str, list[str]] = {
    "memory": ["settle_batch", "journal_limit", "journal", "journal_reuses", "journal_max_age"],
    "sqlite": ["timeout", "synchronous", "prune_batch", "journal", "journal_max_age"],
    "redis": [
        "prefix",
        "socket_timeout",
        "socket_connect_timeout",
        "cluster",
        "retries",
        "safety_expiry",
        "prune_batch",
        "db",
        "journal",
        "journal_max_age",
    ],
    "postgres": [
        "schema",
        "min_size",
        "max_size",
        "connect_timeout",
        "timeout",
        "statement_timeout",
        "prune_batch",
        "auto_migrate",
        "journal",
        "journal_max_age",
        "application_name",
        "sslmode",
        "no_such_option",
    ],
}
#: Options that are durations: a value that reads as a number outside
#: (0, MAX_SECONDS] must be refused (none/off/empty mean "no limit" where the
#: option allows it).
SECONDS_OPTIONS = {
    "timeout",
    "socket_timeout",
    "socket_connect_timeout",
    "connect_timeout",
    "statement_timeout",
    "safety_expiry",
    "journal_max_age",
}


def _seconds_out_of_range(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return not 0 < value <= MAX_SECONDS


def base_url(kind: str, tmp: Path, secret: bool) -> str:
    """A URL of the kind that names a fresh place (a new file, key prefix or
    schema); with ``secret``, a password the messages must never show."""
    tag = uuid.uuid4().hex[:10]
    if kind == "memory":
        return "memory://?"
    if kind == "sqlite":
        return f"sqlite:///{tmp}/u-{tag}.db?"
    if kind == "redis":
        url = _server_url(REDIS_URL_ENV, REDIS_DEFAULT, "Redis")
        if secret:
            url = url.replace("redis://", f"redis://:{SECRET}@", 1)
        return f"{url}?prefix=jchostile:{tag}&"
    url = _server_url(POSTGRES_URL_ENV, POSTGRES_DEFAULT, "PostgreSQL")
    if secret:
        url = url.replace("postgres@", f"postgres:{SECRET}@", 1)
    return f"{url}?schema=jchostile_{tag}&"


def _clean_up(store: BaseStore) -> None:
    """Leave nothing on a shared server: drop a PostgreSQL schema, delete a
    Redis prefix's keys."""
    drop = getattr(store, "drop", None)
    if drop is not None:
        with contextlib.suppress(Exception):
            drop()
    if getattr(store, "prefix", None):
        with contextlib.suppress(Exception):
            CLEANUP["redis"](store)


def smoke(store: BaseStore) -> str | None:
    """Use a store a URL built: every operation succeeds or raises a
    JobCreditsError (an option that passed must not break it later)."""
    ledger = Ledger(store, balances=True, clock=FakeClock())
    try:
        ledger.grant("acct", 3)
        ledger.charge("acct", "job-1")
        ledger.confirm("acct", "job-1")
        ledger.snapshot()
        ledger.prune()
        ledger.journal()
        ledger.trim_journal(max_age=60.0)
    except JobCreditsError:
        return None
    except Exception as exc:
        return f"raw {describe(exc)} when used"
    return None


def judge_url(url: str, *, refuse: bool, use: bool, unavailable: bool = False) -> str | None:
    """from_url(url): a store, or ConfigurationError; never a raw error, and
    never the secret in a message or a repr."""
    store: BaseStore | None = None
    try:
        with warnings_ignored():
            store = store_from_url(url)
    except ConfigurationError as exc:
        if SECRET in str(exc) or SECRET in repr(exc):
            return "the message shows the password"
        return None
    except StoreUnavailable as exc:
        if unavailable:
            return None
        return f"not ConfigurationError: {describe(exc)}"
    except JobCreditsError as exc:
        return f"not ConfigurationError: {describe(exc)}"
    except Exception as exc:
        return f"raw {describe(exc)}"
    try:
        if SECRET in repr(store):
            return "repr(store) shows the password"
        if refuse:
            return "accepted"
        return smoke(store) if use else None
    finally:
        with contextlib.suppress(Exception):
            store.close()
        if use:
            _clean_up(store)


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_store_url_options_take_every_hostile_value(kind: str, tmp_path: Path) -> None:
    """Each option of each store's URL with each hostile value: a store that
    works, or ConfigurationError naming no password; a SQLite URL that is
    refused leaves no file behind."""
    failures = Failures()
    # Shared stores are used (schema migrated, keys written) only where a
    # value was accepted, and on PostgreSQL only for the numeric options.
    for option in URL_OPTIONS[kind]:
        for value in URL_VALUES:
            for secret in (False, True) if kind in ("redis", "postgres") else (False,):
                url = base_url(kind, tmp_path, secret) + f"{option}={value}"
                refuse = option in SECONDS_OPTIONS and _seconds_out_of_range(value)
                files = set(tmp_path.iterdir())
                # Not used: a store whose key prefix or schema the value itself
                # names (it would write outside this test's own place).
                use = (
                    not secret
                    and option not in ("prefix", "schema")
                    and (kind != "postgres" or option.endswith(("size", "batch")))
                )
                problem = judge_url(url, refuse=refuse, use=use)
                if problem:
                    failures.add(f"[{kind}] from_url(...?{option}=...)", value, problem)
                elif kind == "sqlite" and set(tmp_path.iterdir()) - files and refuse:
                    failures.add(f"[{kind}] from_url(...?{option}=...)", value, "left a file")
    assert not failures, str(failures)


def _hostile_urls(kind: str, tmp: Path) -> list[str]:
    if kind == "memory":
        return ["memory://host", "memory:///path", "memory://\x00", "memory://\udc80"]
    if kind == "sqlite":
        return [
            f"sqlite:///{tmp}/a\x00b.db",
            f"sqlite:///{tmp}/\udc80.db",
            f"sqlite:///{tmp}/%00.db",
            f"sqlite:///{tmp}/%ED%B2%80.db",
            f"sqlite:///{tmp}/{'x' * 5000}.db",
            f"sqlite:///{tmp}",
            "sqlite://host/x.db",
            f"sqlite:///{tmp}/no/such/dir/x.db",
        ]
    if kind == "redis":
        return [
            "redis://127.0.0.1:99999/6",
            "redis://127.0.0.1:-1/6",
            "redis://127.0.0.1:abc/6",
            "redis://127.0.0.1:6379/99999999999999999999",
            "redis://127.0.0.1:6379/-1",
            "redis://127.0.0.1:6379/x",
            f"redis://:{SECRET}@[::1/6",
            f"redis://u:{SECRET}@\udc80:6379/6",
            "redis://\x00:6379/6",
            "redis+unix:///tmp/\udc80.sock",
        ]
    return [
        "postgresql://postgres@127.0.0.1:99999/x",
        "postgresql://postgres@127.0.0.1:abc/x",
        f"postgresql://postgres:{SECRET}@[::1/x",
        f"postgresql://postgres:{SECRET}@127.0.0.1/x?x=\udc80",
        f"postgresql://postgres:{SECRET}@127.0.0.1/x?application_name=\udc80",
        f"postgresql://postgres:{SECRET}@127.0.0.1/\udc80",
        f"postgresql://postgres:{SECRET}@127.0.0.1/x?password=\x00",
        f"postgresql://postgres@127.0.0.1/x?password={SECRET}&sslmode=bogus",
        f"postgresql://postgres@127.0.0.1/x?sslpassword={SECRET}&schema=a$fn$b",
        f"postgresql://postgres@127.0.0.1/x?schema={'s' * 64}&password={SECRET}",
        "postgresql://postgres@127.0.0.1/x?schema=\x00",
    ]


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_hostile_store_urls(kind: str, tmp_path: Path) -> None:
    """Hostile hosts, ports, paths and databases: a store or ConfigurationError
    with no password in it, never a raw error (a lone surrogate once raised
    UnicodeEncodeError from PostgreSQL's URL parser)."""
    failures = Failures()
    for url in _hostile_urls(kind, tmp_path):
        # A SQLite file that cannot be opened (a directory, a missing
        # directory, a name too long) is "cannot open": StoreUnavailable.
        problem = judge_url(url, refuse=False, use=False, unavailable=kind == "sqlite")
        if problem:
            failures.add(f"[{kind}] from_url(...)", url, problem)
    for value in [u for u in HOSTILE if not isinstance(u, str)]:
        for build in (store_from_url, Ledger.from_url):
            problem = judge_setup(lambda b=build, v=value: b(v), refuse=True)
            if problem:
                failures.add(f"{build.__qualname__}(...)", value, problem)
    assert not failures, str(failures)


# -- adapter settings ------------------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _bad_header(value: Any) -> bool:
    return not isinstance(value, str) or _TOKEN.fullmatch(value) is None


def _bad_type_base(value: Any) -> bool:
    if value is None or value in ("", "about:blank"):
        return False
    return not isinstance(value, str) or not all("!" <= c <= "~" for c in value)


def _bad_retry_after_max(value: Any) -> bool:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("none", "off"):
            return False
        if text.isascii() and text.isdigit():
            value = int(text)
    return value is not None and (_not_int(value) or not 1 <= value <= MAX_SECONDS)


#: Options of a decorator or dependency (None: the app's setting).
ROUTE_REFUSES: dict[str, Callable[[Any], bool]] = {
    "cost": DECORATOR_REFUSES["cost"],
    "scope": DECORATOR_REFUSES["scope"],
    "tier": DECORATOR_REFUSES["tier"],
    "backend": DECORATOR_REFUSES["backend"],
    "on_missing": lambda v: v is not None and v not in ("charge", "reject"),
    "fail_open": lambda v: v is not None and _bad_flag(v),
    "header": lambda v: v is not None and _bad_header(v),
    "account": lambda v: v is not None and not callable(v),
    "ledger": lambda v: v is not None and not isinstance(v, Ledger),
}
#: Keyword options of an adapter object (FastAPI's JobCredits, the middleware).
APP_REFUSES: dict[str, Callable[[Any], bool]] = {
    "job_header": _bad_header,
    "on_missing": lambda v: v not in ("charge", "reject"),
    "fail_open": _bad_flag,
    "entry_points": _bad_flag,
    "account": lambda v: not callable(v),  # FastAPI's JobCredits also takes None
    "problem_type_base": _bad_type_base,
    "retry_after_max": lambda v: not isinstance(v, str) and _bad_retry_after_max(v),
}


def keyword_options(fn: Callable[..., Any], skip: tuple[str, ...] = ()) -> list[str]:
    params = inspect.signature(fn).parameters
    return [
        n
        for n, p in params.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in skip
    ]


def sweep_setup(
    failures: Failures,
    where: str,
    options: list[str],
    build: Callable[[str, Any], Any],
    refuses: dict[str, Callable[[Any], bool]],
) -> None:
    """``build(option, value)`` for each option and each hostile value, judged
    by :func:`judge_setup`; ``refuses`` says which values must be refused."""
    for option in options:
        for value in HOSTILE:
            problem = judge_setup(
                lambda o=option, v=value: build(o, v),
                refuse=option in refuses and refuses[option](value),
            )
            if problem:
                failures.add(f"{where}({option}=...)", value, problem)


def _ok_view(*args: Any, **kwargs: Any) -> str:
    return "ok"


FLASK_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")


def _flask_refuses(key: str, value: Any) -> bool:
    """What a Flask config value must not be accepted as (strings from the
    environment are read as numbers and flags)."""
    name = key.removeprefix("JOBCREDITS_")
    if name in ("TTL", "LEASE"):
        if isinstance(value, str):
            if FLASK_NUMBER.fullmatch(value) is None:
                return True
            value = float(value)
        return LEDGER_REFUSES[name.lower()](value)
    if name == "MAX_USES":
        if isinstance(value, str):
            if value.strip().lower() in ("", "none"):
                return False
            if not value.strip().lstrip("-+").isdigit():
                return True
            value = int(value)
        return _bad_count(value)
    if name in ("BALANCES", "FAIL_OPEN", "ENTRY_POINTS"):
        if isinstance(value, str):
            return value.strip().lower() not in {
                "1",
                "true",
                "yes",
                "on",
                "0",
                "false",
                "no",
                "off",
                "",
            }
        return not isinstance(value, bool) and value not in (0, 1)
    if name == "JOB_HEADER":
        return _bad_header(value)
    if name == "ON_MISSING":
        return value not in ("charge", "reject")
    if name == "URL":
        return not isinstance(value, str) or "://" not in value
    if name == "ACCOUNT":
        return value is not None and not callable(value)
    if name == "PROBLEM_TYPE_BASE":
        return _bad_type_base(value)
    if name == "RETRY_AFTER_MAX":
        return _bad_retry_after_max(value)
    return False


def test_flask_config_takes_every_hostile_value() -> None:
    """Every JOBCREDITS_* key of app.config: init_app sets the app up, or
    raises ConfigurationError; the view decorator's options likewise."""
    flask = pytest.importorskip("flask")
    from jobcredits_plugin import flask as jc_flask

    failures = Failures()
    keys = [*jc_flask.DEFAULTS, "JOBCREDITS_ACCOUNT"]
    for key in dict.fromkeys(keys):
        for value in HOSTILE:

            def build(k: str = key, v: Any = value) -> Any:
                app = flask.Flask("hostile")
                app.config["JOBCREDITS_ACCOUNT"] = _ok_view
                app.config[k] = v
                return jc_flask.JobCredits(app)

            problem = judge_setup(build, refuse=_flask_refuses(key, value))
            if problem:
                failures.add(f"Flask app.config[{key!r}]", value, problem)
    sweep_setup(
        failures,
        "flask.charges_credit",
        keyword_options(jc_flask.charges_credit),
        lambda o, v: jc_flask.charges_credit(**{o: v})(_ok_view),
        ROUTE_REFUSES,
    )
    assert not failures, str(failures)


def test_fastapi_settings_take_every_hostile_value() -> None:
    """JobCredits(ledger, option=...), charge_credit(option=...) and
    charges_credit(option=...): built, or ConfigurationError."""
    pytest.importorskip("fastapi")
    from jobcredits_plugin import fastapi as jc_fastapi

    failures = Failures()
    sweep_setup(
        failures,
        "fastapi.JobCredits",
        keyword_options(jc_fastapi.JobCredits, skip=("ledger",)),
        lambda o, v: jc_fastapi.JobCredits(Ledger(clock=FakeClock()), **{o: v}),
        {**APP_REFUSES, "account": ROUTE_REFUSES["account"]},
    )
    for value in HOSTILE:
        problem = judge_setup(lambda v=value: jc_fastapi.JobCredits(v), refuse=True)
        if problem:
            failures.add("fastapi.JobCredits(ledger=...)", value, problem)
    for name in ("charge_credit", "charges_credit"):
        factory = getattr(jc_fastapi, name)

        def build(o: str, v: Any, f: Any = factory, n: str = name) -> Any:
            made = f(**{o: v})
            return made(_ok_view) if n == "charges_credit" else made

        sweep_setup(failures, f"fastapi.{name}", keyword_options(factory), build, ROUTE_REFUSES)
    assert not failures, str(failures)


def _key(value: Any) -> Any:
    """A dict key standing for ``value`` (a list cannot be one: its tuple)."""
    return (
        tuple(value) if isinstance(value, list) else value if not isinstance(value, dict) else None
    )


@pytest.mark.parametrize("module", ["wsgi", "asgi"])
def test_middleware_options_take_every_hostile_value(module: str) -> None:
    """JobCreditsMiddleware(app, ledger, routes, option=...) and each route
    option: built, or ConfigurationError."""
    import importlib

    middleware = importlib.import_module(f"jobcredits_plugin.{module}").JobCreditsMiddleware
    ledger = Ledger(clock=FakeClock())
    good: dict[str, Any] = {"account": _ok_view}
    failures = Failures()
    sweep_setup(
        failures,
        f"{module}.JobCreditsMiddleware",
        keyword_options(middleware, skip=("app", "ledger", "routes")),
        lambda o, v: middleware(_ok_view, ledger, {"/x": 1}, **{**good, o: v}),
        APP_REFUSES,
    )
    for value in HOSTILE:
        for where, build in (
            ("ledger", lambda v=value: middleware(_ok_view, v, {"/x": 1}, **good)),
            ("routes", lambda v=value: middleware(_ok_view, ledger, v, **good)),
            (
                "routes={key: ...}",
                lambda v=value: middleware(_ok_view, ledger, {_key(v): 1}, **good),
            ),
            ("routes={'/x': ...}", lambda v=value: middleware(_ok_view, ledger, {"/x": v}, **good)),
        ):
            refuse = where == "ledger" or (
                where == "routes={key: ...}"
                and not (isinstance(value, str) and value.startswith("/"))
            )
            problem = judge_setup(build, refuse=refuse)
            if problem:
                failures.add(f"{module}.JobCreditsMiddleware({where})", value, problem)
    route_options = {
        k: v for k, v in ROUTE_REFUSES.items() if k not in ("account", "ledger", "fail_open")
    }
    route_options["on_missing"] = ROUTE_REFUSES["on_missing"]
    sweep_setup(
        failures,
        f"{module}.JobCreditsMiddleware(routes={{'/x': {{...}}}})",
        list(route_options),
        lambda o, v: middleware(_ok_view, ledger, {"/x": {o: v}}, **good),
        route_options,
    )
    assert not failures, str(failures)


# -- the CLI ---------------------------------------------------------------------------

CLI_VALUES: list[str] = [v for v in TEXTS if isinstance(v, str)] + [str(v) for v in INTS + FLOATS]


def run_cli(argv: list[str]) -> tuple[Any, str, str]:
    """main(argv) in this process: (exit status or the exception, stdout, stderr)."""
    from jobcredits_plugin.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings_ignored():
        try:
            code: Any = main(argv)
        except BaseException as exc:
            code = exc
    return code, out.getvalue(), err.getvalue()


def judge_cli(argv: list[str]) -> str | None:
    """Exit 0, or 1/2 with exactly one line on stderr, never a traceback and
    never an exception out of main()."""
    code, _, err = run_cli(argv)
    if isinstance(code, BaseException):
        return f"raised {describe(code)}"
    if code == 0:
        return None
    if code not in (1, 2):
        return f"exit {code}: {' '.join(err.split())[:160]}"
    lines = err.splitlines()
    if len(lines) != 1 or "Traceback" in err:
        return f"exit {code} with {len(lines)} stderr lines: {err[:160]!r}"
    if SECRET in err:
        return "stderr shows the password"
    return None


def cli_url(kind: str, tmp: Path) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        url = f"sqlite:///{tmp}/cli.db"
        Ledger.from_url(url).close()
        return url
    return base_url(kind, tmp, secret=False).rstrip("?&")


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_cli_arguments_take_every_hostile_value(kind: str, tmp_path: Path) -> None:
    """jobcredits grant/balance/snapshot/export/cursors with hostile
    arguments: exit 0, or 1/2 with one line on stderr; a refused grant
    changes no balance. The shared stores get a sample of the values."""
    url = cli_url(kind, tmp_path)
    values = CLI_VALUES[::2] if kind in ("memory", "sqlite") else CLI_VALUES[::6]
    ledger = Ledger.from_url(url, balances=True)
    failures = Failures()
    try:
        for value in values:
            before = ledger.balance("acct")
            for where, argv in (
                ("grant ACCOUNT", ["grant", "--url", url, value, "1"]),
                ("grant N", ["grant", "--url", url, "acct", value]),
                ("grant --id", ["grant", "--url", url, "--id", value, "acct", "1"]),
                ("balance ACCOUNT", ["balance", "--url", url, value]),
                ("snapshot --limit", ["snapshot", "--url", url, "--limit", value]),
                ("export --cursor", ["export", "--url", url, "--cursor", value, "--batch", "5"]),
                ("export --batch", ["export", "--url", url, "--cursor", "c", "--batch", value]),
                ("cursors --delete", ["cursors", "--url", url, "--delete", value]),
            ):
                problem = judge_cli(argv)
                if problem:
                    failures.add(f"[{kind}] jobcredits {where}", value, problem)
            after = ledger.balance("acct")
            if after is not None and before is not None and not 0 <= after <= MAX_CREDITS:
                failures.add(f"[{kind}] jobcredits grant", value, f"balance now {after}")
        if kind == "memory":
            for value in CLI_VALUES:
                for where, argv in (
                    ("demo --jobs", ["demo", "--jobs", value]),
                    ("demo --seed", ["demo", "--jobs", "1", "--seed", value]),
                    ("demo --store", ["demo", "--jobs", "1", "--store", value]),
                ):
                    problem = judge_cli(argv)
                    if problem:
                        failures.add(f"jobcredits {where}", value, problem)
        if kind == "sqlite":
            for value in CLI_VALUES[::3]:
                for command in ("snapshot", "stats", "prune", "migrate"):
                    problem = judge_cli([command, "--url", value])
                    if problem:
                        failures.add(f"jobcredits {command} --url", value, problem)
    finally:
        ledger.close()
        _clean_up(ledger.store)
    assert not failures, str(failures)


# -- HTTP requests through the middleware ----------------------------------------------

#: Header values a client can send: text that survives latin-1 (what WSGI and
#: ASGI carry), control characters included.
HEADER_VALUES = [v for v in TEXTS if (isinstance(v, str) and v.isascii()) or v in ("é", "\x85")]


def _expected_status(field: str, value: str) -> set[int]:
    """The answers a request may get when ``field`` is this header value."""
    text = value.strip()
    if field == "account":
        if not text:
            return {401}
        return {400} if MUST_REFUSE["account"](text) else {200, 402}
    if not text:
        return {200}  # no job id: charged as a job of its own
    return {400} if MUST_REFUSE["job_id"](text) else {200}


def _wsgi_call(app: Any, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    from wsgiref.util import setup_testing_defaults

    environ: dict[str, Any] = {"REQUEST_METHOD": "POST", "PATH_INFO": "/run"}
    setup_testing_defaults(environ)
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    got: dict[str, Any] = {}

    def start_response(
        status: str, response_headers: list[tuple[str, str]], exc: Any = None
    ) -> Any:
        got["status"], got["headers"] = int(status.split()[0]), dict(response_headers)
        return lambda data: None

    body = b"".join(app(environ, start_response))
    return got["status"], got["headers"], body


def _asgi_call(
    app: Any, headers: dict[str, str], loop: asyncio.AbstractEventLoop
) -> tuple[int, dict[str, str], bytes]:
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": "/run",
        "raw_path": b"/run",
        "root_path": "",
        "scheme": "http",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    loop.run_until_complete(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    out = {k.decode("latin-1"): v.decode("latin-1") for k, v in start.get("headers", [])}
    return start["status"], out, body


def _inner_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


async def _inner_asgi(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_headers_through_the_middleware(rigs: dict[str, Rig], kind: str) -> None:
    """A client's job id and account headers (control characters, long,
    blank, non-ASCII latin-1) through the WSGI and ASGI middleware: 200, or
    the documented 4xx as problem+json with nothing recorded; never a 5xx."""
    from jobcredits_plugin import asgi, wsgi

    rig = rigs.get(kind)
    if rig is None:
        pytest.skip(f"no {kind} store")
    with warnings_ignored():
        apps = {
            "wsgi": wsgi.JobCreditsMiddleware(
                _inner_wsgi, rig.ledger, {"POST /run": 1}, account=header("X-Account")
            ),
            "asgi": asgi.JobCreditsMiddleware(
                _inner_asgi, rig.ledger, {"POST /run": 1}, account=header("X-Account")
            ),
        }
    failures = Failures()
    rig.known = None
    for value in HEADER_VALUES:
        for field in ("job", "account"):
            headers = {"X-Job-Id": f"job-{uuid.uuid4().hex[:12]}", "X-Account": "acct"}
            headers["X-Job-Id" if field == "job" else "X-Account"] = value
            expected = _expected_status(field, value)
            for name, app in apps.items():
                where = f"[{kind}] {name} middleware, {field} header"
                before = rig.state()
                try:
                    if name == "wsgi":
                        status, response_headers, body = _wsgi_call(app, headers)
                    else:
                        status, response_headers, body = _asgi_call(app, headers, rig.loop)
                except Exception as exc:
                    failures.add(where, value, f"raw {describe(exc)}")
                    continue
                if status not in expected:
                    failures.add(
                        where, value, f"answered {status}, not {sorted(expected)}: {body[:120]!r}"
                    )
                elif status >= 400:
                    ctype = {k.lower(): v for k, v in response_headers.items()}.get("content-type")
                    if ctype != "application/problem+json":
                        failures.add(where, value, f"{status} as {ctype}")
                    if rig.state() != before:
                        failures.add(where, value, f"{status} but recorded something")
                else:  # settle what it charged, so the live records stay few
                    job = {k.lower(): v for k, v in response_headers.items()}.get("x-job-id")
                    with contextlib.suppress(JobCreditsError):
                        rig.ledger.refund(headers["X-Account"].strip(), job or "-")
    assert not failures, str(failures)


def _flask_app(ledger: Ledger) -> Any:
    flask = pytest.importorskip("flask")
    from jobcredits_plugin import flask as jc_flask

    app = flask.Flask("hostile-requests")
    with warnings_ignored():
        jc_flask.JobCredits(app, ledger, account=header("X-Account"))

    @app.post("/run")
    @jc_flask.charges_credit()
    def run() -> str:
        return "ok"

    return app


def _fastapi_app(ledger: Ledger) -> Any:
    fastapi = pytest.importorskip("fastapi")
    from jobcredits_plugin import fastapi as jc_fastapi

    app = fastapi.FastAPI()
    with warnings_ignored():
        jc_fastapi.JobCredits(ledger, account=header("X-Account")).install(app)

    @app.post("/run", dependencies=[fastapi.Depends(jc_fastapi.charge_credit())])
    async def run() -> str:
        return "ok"

    return app


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_headers_through_flask_and_fastapi(rigs: dict[str, Rig], kind: str) -> None:
    """The same headers through a Flask view and a FastAPI dependency (each
    answering its own way): 200, or the documented 4xx as problem+json with
    nothing recorded; never a 5xx or an HTML error page."""
    rig = rigs.get(kind)
    if rig is None:
        pytest.skip(f"no {kind} store")
    apps: dict[str, tuple[str, Any]] = {
        "flask": ("wsgi", _flask_app(rig.ledger)),
        "fastapi": ("asgi", _fastapi_app(rig.ledger)),
    }
    values = HEADER_VALUES if kind in ("memory", "sqlite") else HEADER_VALUES[::2]
    failures = Failures()
    for value in values:
        for field in ("job", "account"):
            headers = {"X-Job-Id": f"job-{uuid.uuid4().hex[:12]}", "X-Account": "acct"}
            headers["X-Job-Id" if field == "job" else "X-Account"] = value
            expected = _expected_status(field, value)
            for name, (protocol, app) in apps.items():
                where = f"[{kind}] {name}, {field} header"
                before = rig.state()
                try:
                    if protocol == "wsgi":
                        status, response_headers, body = _wsgi_call(app, headers)
                    else:
                        status, response_headers, body = _asgi_call(app, headers, rig.loop)
                except Exception as exc:
                    failures.add(where, value, f"raw {describe(exc)}")
                    continue
                lowered = {k.lower(): v for k, v in response_headers.items()}
                if status not in expected:
                    failures.add(
                        where, value, f"answered {status}, not {sorted(expected)}: {body[:120]!r}"
                    )
                elif status >= 400:
                    if lowered.get("content-type") != "application/problem+json":
                        failures.add(where, value, f"{status} as {lowered.get('content-type')}")
                    if rig.state() != before:
                        failures.add(where, value, f"{status} but recorded something")
                else:
                    with contextlib.suppress(JobCreditsError):
                        rig.ledger.refund("acct", lowered.get("x-job-id") or "-")
    assert not failures, str(failures)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    query=st.one_of(
        st.text(st.characters(exclude_categories=()), max_size=60),
        st.lists(
            st.tuples(
                st.sampled_from([*URL_OPTIONS["memory"], *URL_OPTIONS["sqlite"], "x", ""]),
                st.one_of(st.sampled_from(URL_VALUES), st.text(max_size=12)),
            ),
            max_size=4,
        ).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)),
    ),
    scheme=st.sampled_from(["memory://", "sqlite:///:memory:", "sqlite://"]),
)
def test_property_any_query_string_is_a_store_or_a_configuration_error(
    query: str, scheme: str
) -> None:
    """Arbitrary query strings on the in-process stores' URLs (nothing is
    created): a store that works, or ConfigurationError; never a raw error."""
    problem = judge_url(f"{scheme}?{query}", refuse=False, use=True)
    assert problem is None, f"{scheme}?{query!r}: {problem}"
