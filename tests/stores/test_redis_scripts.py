"""Every Lua script of RedisStore, called directly with hostile arguments and
over corrupt stored data (issue 12, item 5): it must refuse before its first
write, because Redis does not roll a script back when a command fails half-way.

Once, ``ttl=1e16`` made the claim script run HSET, ZADD and DECRBY and then
fail at PEXPIRE: the caller saw 503 ("nothing charged") while the balance had
gone 5 -> 4 with a pending record and no journal entry. The store bounds its
options now (tests/stores/test_option_bounds.py); these tests hold the scripts
themselves to "check everything, then write" whatever reaches them. Each case
asserts an error reply *and* that no key under the store's prefix changed:
balances, records, due-sets, markers, the journal, the cursors.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from jobcredits_plugin import Ledger
from jobcredits_plugin.stores import ClaimRequest
from jobcredits_plugin.testing import DEFAULT_START, FakeClock
from tests.stores.conftest import REDIS_DEFAULT, REDIS_URL_ENV, _redis_cleanup, _server_url

redis = pytest.importorskip("redis", reason="the redis extra is not installed")
from jobcredits_plugin.stores import RedisStore  # noqa: E402

ResponseError = redis.exceptions.ResponseError

#: Spellings of a time that Lua's tonumber would take but that are not a
#: finite decimal number Redis itself parses the same way.
BAD_TIMES = ["nan", "inf", "-inf", "1e999", "0x10", " 5", "5 ", "abc", ""]
#: Spellings of an integer Redis's INCRBY/PEXPIRE would refuse, or out of range.
BAD_INTS = ["nan", "inf", "-1", "1.5", "1e3", "0x10", "007", " 5", "abc", "", "9007199254740992"]
BAD_FLAGS = ["2x", "x", "", "11", "-1"]


@pytest.fixture
def store() -> Iterator[RedisStore]:
    url = _server_url(REDIS_URL_ENV, REDIS_DEFAULT, "Redis")
    made = RedisStore.from_url(url, prefix=f"jctest:{uuid.uuid4().hex[:12]}")
    yield made
    made.close()
    _redis_cleanup(made)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(store: RedisStore, clock: FakeClock) -> Ledger:
    """Some books to protect: a balance of 5 after one charge, a pending job,
    a charged job, a grant marker, journal entries and a cursor."""
    led = Ledger(store, clock=clock, balances=True)
    led.grant("acct", 6)
    led.charge("acct", "job-charged")
    led.confirm("acct", "job-charged")
    clock.advance(1)
    led.charge("acct", "job-pending", cost=0)
    led.cursor("export").advance(1)
    return led


def _state(store: RedisStore) -> dict[str, Any]:
    """Every key under the store's prefix, with its value and whether it expires."""
    client = store._client
    out: dict[str, Any] = {}
    pattern = store.prefix.replace("*", "\\*") + ":*"
    for key in sorted(client.scan_iter(match=pattern, count=1000)):
        kind = client.type(key)
        if kind == "string":
            value: Any = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(key)
        else:  # pragma: no cover - the store makes no other kind
            value = kind
        out[key] = (kind, value, client.pttl(key) > 0)
    return out


def _refused(store: RedisStore, name: str, keys: list[str], args: list[str]) -> None:
    before = _state(store)
    with pytest.raises(ResponseError):
        store._scripts[name](keys=keys, args=args)
    assert _state(store) == before, f"{name} wrote before it failed ({args!r})"


def _claim_req(job_id: str, now: float, cost: int = 1) -> ClaimRequest:
    return ClaimRequest(
        account="acct",
        scope="default",
        job_id=job_id,
        charge_id=uuid.uuid4().hex,
        cost=cost,
        tier=None,
        backend=None,
        now=now,
        ttl=3600.0,
        lease=60.0,
        max_uses=None,
        balances=True,
    )


def _with_field(control: str, index: int, value: str) -> str:
    fields = control.split("\x1f")
    fields[index] = value
    return "\x1f".join(fields)


# -- the script files -------------------------------------------------------------------


def test_every_lua_file_is_a_script_the_store_loads(store: RedisStore) -> None:
    """The scripts ship as package files (``stores/_redis/lua/*.lua``): each one
    but the shared prelude is a script the store registers (no file is left
    over, none is missing), each starts with the prelude, and each compiles
    on a real server (SCRIPT LOAD) to the SHA the store calls it by."""
    from jobcredits_plugin.stores._redis._scripts import NAMES, SCRIPTS, lua_files

    assert lua_files() == sorted([*NAMES, "prelude"])
    assert set(store._scripts) == set(NAMES) == set(SCRIPTS)
    prelude = SCRIPTS["claim"][: SCRIPTS["claim"].index("-- claim:")]
    assert "local function jc_int(" in prelude
    for name, script in store._scripts.items():
        assert script.script == SCRIPTS[name]
        assert SCRIPTS[name].startswith(prelude)
        assert store._client.script_load(SCRIPTS[name]) == script.sha


# -- claim ------------------------------------------------------------------------------

#: The claim's packed control fields: index -> the bad spellings to try there.
CLAIM_FIELDS = {
    0: BAD_TIMES,  # now
    2: BAD_INTS,  # cost
    3: BAD_INTS,  # max_uses
    4: BAD_FLAGS,  # balances
    5: BAD_TIMES,  # expires_at
    6: BAD_TIMES,  # lease_until
    7: [*BAD_INTS, "10000000000000000", "1e16", "9223372036854775808"],  # safety expiry ms
    8: [*BAD_FLAGS, "3"],  # journal
    9: [*BAD_INTS, "0", "10000000000000000", "1e16"],  # retry marker life ms
}


@pytest.mark.parametrize(
    ("index", "value"), [(i, v) for i, values in CLAIM_FIELDS.items() for v in values]
)
@pytest.mark.parametrize("job_id", ["job-new", "job-charged"])
def test_claim_refuses_a_bad_argument_before_writing(
    ledger: Ledger, store: RedisStore, index: int, value: str, job_id: str
) -> None:
    keys, args = store._claim_call(_claim_req(job_id, DEFAULT_START + 2))
    _refused(store, "claim", keys, [_with_field(args[0], index, value), *args[1:]])


def test_claim_with_a_huge_safety_expiry_leaves_the_books_alone(
    ledger: Ledger, store: RedisStore
) -> None:
    """The issue's case: ttl=1e16 made PEXPIRE fail after the debit."""
    keys, args = store._claim_call(_claim_req("job-new", DEFAULT_START + 2))
    _refused(store, "claim", keys, [_with_field(args[0], 7, str(10**19)), *args[1:]])
    assert ledger.balance("acct") == 5
    assert ledger.lookup("acct", "job-new") is None


def test_claim_refuses_missing_arguments_and_keys(ledger: Ledger, store: RedisStore) -> None:
    keys, args = store._claim_call(_claim_req("job-new", DEFAULT_START + 2))
    _refused(store, "claim", keys, args[:2])  # no x field: HSET would fail after DECRBY
    _refused(store, "claim", keys[:3], args)  # journal on, no stream: XADD would fail
    _refused(store, "claim", keys, ["\x1f".join(args[0].split("\x1f")[:8]), *args[1:]])


@pytest.mark.parametrize(
    ("field", "value"),
    [("lu", "nan"), ("lu", "abc"), ("d", "x"), ("d", "1.5"), ("d", "-3"), ("x", None)],
)
def test_claim_over_a_corrupt_stale_record_writes_nothing(
    ledger: Ledger, store: RedisStore, clock: FakeClock, field: str, value: str | None
) -> None:
    """A takeover refunds the stale charge, journals it, then charges: a bad
    stored field must stop it before the refund's write."""
    job = store.job_key(("acct", "default", "job-pending"))
    if value is None:
        store._client.hdel(job, field)
    else:
        store._client.hset(job, field, value)
    keys, args = store._claim_call(_claim_req("job-pending", DEFAULT_START + 1000))
    _refused(store, "claim", keys, args)


@pytest.mark.parametrize("value", ["abc", "1.5", "1e3", "99999999999999999999"])
def test_claim_over_a_corrupt_balance_writes_nothing(
    ledger: Ledger, store: RedisStore, value: str
) -> None:
    store._client.set(store.balance_key("acct"), value)
    keys, args = store._claim_call(_claim_req("job-new", DEFAULT_START + 2))
    _refused(store, "claim", keys, args)


def test_reuse_over_a_corrupt_uses_count_writes_nothing(ledger: Ledger, store: RedisStore) -> None:
    store._client.hset(store.job_key(("acct", "default", "job-charged")), "u", "many")
    keys, args = store._claim_call(_claim_req("job-charged", DEFAULT_START + 2))
    _refused(store, "claim", keys, args)


# -- confirm ----------------------------------------------------------------------------


@pytest.mark.parametrize("flag", BAD_FLAGS)
def test_confirm_refuses_a_bad_flag(ledger: Ledger, store: RedisStore, flag: str) -> None:
    key = ("acct", "default", "job-pending")
    _refused(store, "confirm", [store.job_key(key), store.due_key("acct")], ["", flag])


@pytest.mark.parametrize("value", ["nan", "abc", "inf"])
def test_confirm_over_a_corrupt_expiry_writes_nothing(
    ledger: Ledger, store: RedisStore, value: str
) -> None:
    """Once it marked the record charged, then failed at ZADD with the score."""
    key = ("acct", "default", "job-pending")
    store._client.hset(store.job_key(key), "ea", value)
    _refused(store, "confirm", [store.job_key(key), store.due_key("acct")], ["", "0"])


# -- refund -----------------------------------------------------------------------------

#: Refund arguments: index -> bad values (charge id flag, now, token, retry
#: marker life in ms, journal flag).
REFUND_ARGS = {
    1: BAD_FLAGS,
    2: BAD_TIMES,
    3: [""],
    4: [*BAD_INTS, "0", "10000000000000000", "1e16"],
    5: BAD_FLAGS,
}


@pytest.mark.parametrize(
    ("index", "value"), [(i, v) for i, values in REFUND_ARGS.items() for v in values]
)
def test_refund_refuses_a_bad_argument_before_writing(
    ledger: Ledger, store: RedisStore, index: int, value: str
) -> None:
    keys, args = store._refund_call(("acct", "default", "job-charged"), None, DEFAULT_START + 2)
    args[index] = value
    _refused(store, "refund", keys, args)


@pytest.mark.parametrize(("field", "value"), [("d", "x"), ("d", "-1"), ("ea", "nan"), ("x", None)])
def test_refund_over_a_corrupt_record_writes_nothing(
    ledger: Ledger, store: RedisStore, field: str, value: str | None
) -> None:
    key = ("acct", "default", "job-charged")
    if value is None:
        store._client.hdel(store.job_key(key), field)
    else:
        store._client.hset(store.job_key(key), field, value)
    keys, args = store._refund_call(key, None, DEFAULT_START + 2)
    _refused(store, "refund", keys, args)


def test_refund_that_would_overflow_the_balance_writes_nothing(
    ledger: Ledger, store: RedisStore
) -> None:
    store._client.set(store.balance_key("acct"), str(2**63 - 1))
    keys, args = store._refund_call(("acct", "default", "job-charged"), None, DEFAULT_START + 2)
    _refused(store, "refund", keys, args)


# -- prune ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "value"),
    [
        *[(0, v) for v in BAD_TIMES],
        *[(1, v) for v in [*BAD_INTS, "0", "10000001"]],
        *[(3, v) for v in BAD_FLAGS],
        *[(4, v) for v in [*BAD_INTS, "0", "10000000000000000"]],
    ],
)
def test_prune_refuses_a_bad_argument_before_writing(
    ledger: Ledger, store: RedisStore, index: int, value: str
) -> None:
    keys, args = store._prune_call(store.due_key("acct"), DEFAULT_START + 10_000, 10)
    args[index] = value
    _refused(store, "prune", keys, args)


@pytest.mark.parametrize(
    ("field", "value"), [("d", "x"), ("d", "1e3"), ("lu", "nan"), ("x", None), ("a", None)]
)
def test_prune_checks_its_whole_batch_before_settling_any(
    ledger: Ledger, store: RedisStore, clock: FakeClock, field: str, value: str | None
) -> None:
    """Two due records, the later one corrupt: once the first was settled (deleted,
    refunded, journaled) before the second failed; now neither is touched."""
    clock.advance(1)
    ledger.charge("acct", "job-later", cost=1)
    job = store.job_key(("acct", "default", "job-later"))
    if value is None:
        store._client.hdel(job, field)
    else:
        store._client.hset(job, field, value)
    keys, args = store._prune_call(store.due_key("acct"), DEFAULT_START + 10_000, 10)
    _refused(store, "prune", keys, args)


# -- grant ------------------------------------------------------------------------------


def _grant_call(store: RedisStore, amount: int = 1) -> tuple[list[str], list[str]]:
    return store._grant_call("acct", amount, DEFAULT_START + 2, uuid.uuid4().hex)


@pytest.mark.parametrize(
    ("index", "value"),
    [
        *[(0, v) for v in [*BAD_INTS, "-9007199254740992"] if v != "-1"],
        *[(1, v) for v in BAD_FLAGS],
        *[(2, v) for v in [*BAD_INTS, "0", "10000000000000000"] if v != ""],
        *[(6, v) for v in BAD_TIMES],
    ],
)
def test_grant_refuses_a_bad_argument_before_writing(
    ledger: Ledger, store: RedisStore, index: int, value: str
) -> None:
    keys, args = _grant_call(store)
    args[index] = value
    _refused(store, "grant", keys, args)


@pytest.mark.parametrize("value", ["abc", "1.5", "1e3"])
def test_grant_over_a_corrupt_balance_writes_nothing(
    ledger: Ledger, store: RedisStore, value: str
) -> None:
    """Once the grant's marker was set before INCRBY failed: a retry would then
    have been answered as if the grant had been made."""
    store._client.set(store.balance_key("acct"), value)
    keys, args = _grant_call(store)
    _refused(store, "grant", keys, args)


def test_grant_past_the_cap_answers_cap_and_writes_nothing(
    ledger: Ledger, store: RedisStore
) -> None:
    keys, args = _grant_call(store, 2**53 - 1)
    before = _state(store)
    reply = store._scripts["grant"](keys=keys, args=args)
    assert reply == ["cap", "5"]
    assert _state(store) == before


@pytest.mark.parametrize("memo", ["5 11 nan", "5 11 inf", "5 11 0x10", "5 11 1e999"])
def test_grant_over_a_corrupt_grant_marker_writes_nothing(
    ledger: Ledger, store: RedisStore, memo: str
) -> None:
    """The grant id's marker is read and checked before the first write."""
    keys, args = _grant_call(store)
    store._client.set(keys[1], memo)
    _refused(store, "grant", keys, args)


def test_grant_markers_answer_replays_and_conflicts_without_writing(
    ledger: Ledger, store: RedisStore
) -> None:
    """'amount balance at' answers the first balance (same amount) or the
    first amount (another one); an older version's '1' answers the current
    balance; none of them writes."""
    keys, args = _grant_call(store, 3)
    store._client.set(keys[1], f"3 42 {args[6]}")
    before = _state(store)
    assert store._scripts["grant"](keys=keys, args=args) == ["replay", "42"]
    args[0] = "4"
    assert store._scripts["grant"](keys=keys, args=args) == ["conflict", "3"]
    assert _state(store) == before
    store._client.set(keys[1], "1")
    before = _state(store)
    assert store._scripts["grant"](keys=keys, args=args) == ["replay", "5"]
    assert _state(store) == before


# -- set_cursor and trim ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "value"), [*[(1, v) for v in BAD_INTS], *[(2, v) for v in BAD_FLAGS]]
)
def test_set_cursor_refuses_a_bad_argument(
    ledger: Ledger, store: RedisStore, index: int, value: str
) -> None:
    args = store._set_cursor_args("export", 3, False)
    args[index] = value
    _refused(store, "set_cursor", [store.cursors_key], args)


@pytest.mark.parametrize(
    ("index", "value"),
    [
        *[(0, v) for v in BAD_INTS if v != ""],
        *[(1, v) for v in BAD_TIMES if v != ""],
        *[(2, v) for v in [*BAD_INTS, "0", "10000001"]],
    ],
)
def test_trim_refuses_a_bad_argument(
    ledger: Ledger, store: RedisStore, index: int, value: str
) -> None:
    args = store._trim_args(10, DEFAULT_START + 10_000)
    args[index] = value
    _refused(store, "trim", [store.journal_key, store.cursors_key], args)


# -- retry markers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kept",
    [
        "not json",
        "[]",
        '{"a": 1}',
        '[1, "x"]',
        '[1, ["a"]]',
        '["charged", 5, []]',
        '["charged", "5", [1, 2]]',
        '[["a", 1]]',
    ],
)
@pytest.mark.parametrize("script", ["claim", "refund", "prune"])
def test_a_corrupt_retry_marker_is_refused_before_writing(
    ledger: Ledger, store: RedisStore, script: str, kept: str
) -> None:
    """A retry marker that is not what the script wrote (hand-edited, another
    program's key) is an error reply, with nothing written."""
    if script == "claim":
        keys, args = store._claim_call(_claim_req("job-charged", DEFAULT_START + 2))
    elif script == "refund":
        keys, args = store._refund_call(("acct", "default", "job-charged"), None, DEFAULT_START + 2)
    else:
        keys, args = store._prune_call(store.due_key("acct"), DEFAULT_START + 10_000, 10)
    mark = keys[3] if script != "prune" else keys[1]
    store._client.set(mark, kept)
    _refused(store, script, keys, args)


# -- merge (Redis Cluster's journal) ---------------------------------------------------


def _merge_args(stream: str, seq: str = "1", at: str = "5.0") -> list[str]:
    return [stream, seq, "charge", "acct", "c1", '["default","j",null,null,1,5.0]', "-1", "4", at]


@pytest.mark.parametrize(
    "args",
    [
        *[_merge_args("p:{A}:journal", seq=v) for v in [*BAD_INTS, "0"] if v != ""],
        *[_merge_args("p:{A}:journal", at=v) for v in BAD_TIMES],
        _merge_args("p:{A}:journal")[:8],
        [*_merge_args("p:{A}:journal"), *_merge_args("p:{A}:journal", seq="x")],
    ],
)
def test_merge_refuses_a_bad_argument(ledger: Ledger, store: RedisStore, args: list[str]) -> None:
    """The merge script (a cluster's readers run it; it runs as well on one
    server) checks every entry of its batch before it appends any: a bad one
    in the middle leaves the merged stream and the marks as they were."""
    marks = f"{store.prefix}:{{journal}}:marks"
    _refused(store, "merge", [store.journal_key, marks], args)


def test_merge_refuses_a_corrupt_mark(ledger: Ledger, store: RedisStore) -> None:
    marks = f"{store.prefix}:{{journal}}:marks"
    store._client.hset(marks, "p:{A}:journal", "not a number")
    _refused(store, "merge", [store.journal_key, marks], _merge_args("p:{A}:journal"))
