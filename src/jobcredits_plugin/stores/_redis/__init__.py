"""A store on Redis (or Redis Cluster), shared by every process on every host.

Atomicity comes from Lua: each ledger operation is one ``EVALSHA`` of a script
that reads the job's record (and the account's balance), decides, writes and
answers in one step on the server, so no other client's command can run in
between, and the whole operation costs one round trip.

The scripts mirror the pure ``plan_*`` rules of :mod:`._base` and hand back
the *pre-image* (the record and balance as they were before the script ran).
The Python side then runs the very same ``plan_*`` function on that pre-image
to build the :class:`ClaimResult` / :class:`Event` objects, so the results are
exactly those of the other stores, and a drift between the Lua and the Python
rules is caught as an error instead of a silently different answer.

Key layout (``P`` is the prefix, ``T`` 16 hex digits of a BLAKE2b digest of the
account, ``lp(x)`` is ``<utf-8 byte length>:<x>``)::

    P:{T}:j:lp(account)lp(scope)lp(job_id)   hash   one job record
    P:{T}:b:lp(account)                      string the account's balance
    P:{T}:due                                zset   job keys by deadline()
    P:{T}:g:lp(account)lp(grant_id)          string a grant id's marker, for 7 days
    P:{T}:c:lp(account)lp(charge_id)         string a claim's retry marker, for 60 s
    P:{T}:r:lp(account)lp(scope)lp(job_id)lp(token)
                                             string a refund's retry marker, for 60 s
    P:{T}:p:<token>                          string a prune batch's retry marker, for 60 s
    P:journal                                stream the journal (standalone)
    P:journal:cursors                        hash   cursor name -> position (standalone)

    On Redis Cluster (``S``: 5 characters of ``@A-O`` chosen to hash to the
    slot of ``{T}``; see _slot_tag)::

    P:{S}:journal                            stream the entries of the slot's accounts,
                                                    until a reader merges them
    P:{journal}                              stream the journal readers read (merged)
    P:{journal}:cursors                      hash   cursor name -> position
    P:{journal}:streams                      set    every slot stream written to
    P:{journal}:marks                        hash   slot stream -> last seq merged

Retry markers: redis-py re-sends a script whose answer was lost (the server
ran it, the connection died before the reply came). The claim, refund, prune
and grant scripts keep their answer in a marker named by something only that call sends (the
claim's charge id, a token drawn per refund or prune batch), in the same
atomic step; a retry finds it and answers the original's answer again, so the
Python side rebuilds the same result and events and the ledger fires each
hook once, while nothing is written (or journaled) twice.

The ``{T}`` hash tag puts an account's jobs, balance, due-set and markers in one cluster
slot, so every script touches one slot; the digest keeps an account that
contains ``{``, ``}``, ``:`` or ``|`` from choosing its own tag. Length
prefixes make the job key injective in ``(account, scope, job_id)``.

The journal is one stream for the whole store, passed as a key to every script
that changes the books, which appends the change's entry (``XADD P:journal
0-*``: the entry's id is ``0-<seq>``) in the same atomic step. A script on
Redis Cluster may only touch keys of one slot, so there the script appends to
the stream of the account's own slot instead, and readers merge the slot
streams into one numbered stream (``lua/merge.lua``, ``RedisStore._merge_pass``): the
entry still commits with its change, and the seq, the one public position, is
given once, by whichever reader merges the entry first. The account keys are
where they always were: turning the journal on changes no key of a running
cluster.

Clock: by default every time comparison uses the ``now`` the ledger passes
in, and every float is passed and stored as Python's ``repr``, which Lua's
``tonumber`` and Redis's sorted-set scores parse back to the same double, so
times round-trip to the bit and compare exactly as in Python. With
``server_clock=True`` the scripts read the server's ``TIME`` instead, inside
the same atomic step, and answer the ``now`` they used (exact microseconds);
the times they compute from it are written with 17 significant digits, so
Python, replaying the rules with that ``now``, builds the very records the
server stored.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import functools
import hashlib
import heapq
import json
import math
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, cast

import attrs

from ..._errors import ConfigurationError, InvalidArgument, StoreUnavailable
from ..._records import REFUNDED, JobRecord, JobState, JournalEntry, JournalKind
from ..._validation import (
    MAX_BATCH,
    MAX_WAIT_SECONDS,
    check_flag,
    check_int_option,
    check_optional_seconds,
    check_positive_seconds,
    check_text,
    configuring,
)
from .._base import (
    GRANT_ID_RETENTION,
    BaseStore,
    ClaimRequest,
    ClaimResult,
    Event,
    Key,
    balance_cap_error,
    claim_from_server,
    grant_conflict_error,
    plan_confirm,
    plan_refund,
    plan_settle,
    with_settled,
)
from .._urls import (
    JOURNAL_OPTIONS,
    check_url_text,
    parse_bool,
    parse_optional_seconds,
    parse_options,
    redact_text,
    redact_url,
)
from ._scripts import SCRIPTS

try:
    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.cluster
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import RedisError
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        'RedisStore needs the redis driver: pip install "jobcredits-plugin[redis]"'
    ) from exc

__all__ = ["RedisStore", "is_unavailable"]


def _exception_types(*names: str) -> tuple[type[BaseException], ...]:
    """The named redis-py exception classes this version of redis-py has."""
    found = (getattr(redis.exceptions, name, None) for name in names)
    return tuple(t for t in found if isinstance(t, type) and issubclass(t, BaseException))


#: Driver errors that mean "could not reach the server, or it cannot serve
#: right now": only these become StoreUnavailable, the 503 that fail_open may
#: let through. Connection failures (refused, reset, auth, too many clients),
#: timeouts, a server still loading its data, a replica that became read-only
#: in a failover, a cluster that is down, resharding or unreachable, a server
#: out of memory, and a garbled reply from a dying connection.
_UNAVAILABLE_TYPES: tuple[type[BaseException], ...] = (
    OSError,
    *_exception_types(
        "ConnectionError",  # also BusyLoadingError, AuthenticationError, MaxConnectionsError
        "TimeoutError",
        "BusyLoadingError",
        "ReadOnlyError",
        "TryAgainError",
        "ClusterError",  # ClusterDownError, MasterDownError, "TTL exhausted"
        "ClusterDownError",
        "MasterDownError",
        "SlotNotCoveredError",
        "RedisClusterUnreachableError",
        "OutOfMemoryError",
        "InvalidResponse",
    ),
)
#: Error replies that say the same, for the ones redis-py has no class for
#: (a script running past its time limit answers BUSY to everyone else).
_UNAVAILABLE_REPLIES = (
    "BUSY ",
    "LOADING ",
    "MASTERDOWN ",
    "READONLY ",
    "TRYAGAIN ",
    "CLUSTERDOWN ",
    "NOREPLICAS ",
    "OOM ",
)
#: Every error the driver raises (the cluster client's own are no RedisError).
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    RedisError,
    OSError,
    *_exception_types("RedisClusterException"),
)


#: What the scripts answer when the server is too old for the journal.
_OLD_SERVER = "the jobcredits journal needs Redis 7.0 or newer"


def is_unavailable(exc: BaseException) -> bool:
    """Whether a driver error means the server could not be reached or cannot
    serve right now (StoreUnavailable), rather than a bug: a script's error
    reply, a DataError, a wrong type (raised as they are, and never passed by
    fail_open)."""
    if isinstance(exc, _UNAVAILABLE_TYPES):
        return True
    if isinstance(exc, redis.exceptions.ResponseError):
        return str(exc).startswith(_UNAVAILABLE_REPLIES)
    return False


#: The most retries a store may make of one command after a connection error.
MAX_RETRIES = 100

#: How long a retry marker lives (a claim's, a refund's, a prune batch's; see
#: lua/claim.lua, refund.lua, prune.lua): far longer than a driver's retry takes, short
#: enough not to matter for memory.
_TOMBSTONE_MS = "60000"

#: How long a grant's marker lives: GRANT_ID_RETENTION, in milliseconds.
_GRANT_MARKER_MS = str(int(GRANT_ID_RETENTION * 1000))

#: Journal entries one trim script deletes at most (the caller loops).
_TRIM_BATCH = 10_000

#: Entries one merge pass fetches about (a cluster's journal; see lua/merge.lua).
_MERGE_BATCH = 1_000

#: Merge passes a trim runs at most before it trims.
_MERGE_PASSES = 1_000

_OPTIONS: dict[str, Callable[[str], Any]] = {
    "prefix": str,
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "cluster": parse_bool,
    "retries": int,
    "safety_expiry": parse_optional_seconds,
    "prune_batch": int,
    "db": int,
    "server_clock": parse_bool,
    **JOURNAL_OPTIONS,
}


def _s(value: Any) -> str:
    """A reply element as str, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _lp(part: str) -> str:
    return f"{len(part.encode())}:{part}"


@functools.lru_cache(maxsize=4096)
def _tag(account: str) -> str:
    # A digest, not the account itself: an account may contain braces, which
    # would otherwise pick a different hash tag, and the digest spreads
    # accounts evenly over the cluster's slots.
    return hashlib.blake2b(account.encode(), digest_size=8).hexdigest()


#: A slot stream's hash tag is this many characters, each ``@`` to ``O``
#: (0x40 plus 4 free low bits), so every one of the cluster's 16,384 slots has
#: one (see _slot_tag).
_SLOT_TAG_CHARS = 5


def _slot_tag_bit(i: int) -> bytes:
    """The message with only free bit ``i`` set (bit i % 4 of character i // 4)."""
    message = bytearray(_SLOT_TAG_CHARS)
    message[i // 4] = 1 << (i % 4)
    return bytes(message)


@functools.cache
def _slot_tag_basis() -> dict[int, tuple[int, int]]:
    """A basis, over GF(2), of the slots the free bits reach: highest bit of
    the slot vector -> (slot vector, the free bits that make it).

    Redis's slot is CRC16-XMODEM of the hash tag, modulo 16,384, and that CRC
    (zero initial value, no final xor) is linear over equal-length messages:
    crc(a ^ b) == crc(a) ^ crc(b). So the slot of ``@@@@@`` with some free
    bits flipped is the slot of ``@@@@@`` xor the slots of the single bits,
    and a tag for any slot is found by solving a 14-bit linear system: no
    search, a few microseconds, and the same answer on every host."""
    basis: dict[int, tuple[int, int]] = {}
    for i in range(4 * _SLOT_TAG_CHARS):
        vec, combo = binascii.crc_hqx(_slot_tag_bit(i), 0) & 0x3FFF, 1 << i
        for pivot in sorted(basis, reverse=True):
            if vec >> pivot & 1:
                vec ^= basis[pivot][0]
                combo ^= basis[pivot][1]
        if vec:
            basis[vec.bit_length() - 1] = (vec, combo)
    if len(basis) != 14:  # pragma: no cover - a property of CRC16, checked by the tests
        raise RuntimeError("the slot tag bits do not reach every cluster slot")
    return basis


@functools.lru_cache(maxsize=16384)
def _slot_tag(slot: int) -> str:
    """A hash tag (5 characters of ``@A-O``) whose key slot is ``slot``: the
    slot stream of a cluster store's journal must share the slot of the
    accounts whose changes it records, and that slot is the digest tag's."""
    base = bytes([0x40] * _SLOT_TAG_CHARS)
    target = (slot & 0x3FFF) ^ (binascii.crc_hqx(base, 0) & 0x3FFF)
    combo = 0
    basis = _slot_tag_basis()
    for pivot in sorted(basis, reverse=True):
        if target >> pivot & 1:
            target ^= basis[pivot][0]
            combo ^= basis[pivot][1]
    tag = bytearray(base)
    for i in range(4 * _SLOT_TAG_CHARS):
        if combo >> i & 1:
            tag[i // 4] |= 1 << (i % 4)
    return tag.decode()


def _decode(raw: Sequence[Any] | dict[Any, Any] | None) -> JobRecord | None:
    """A record from a script's flat HGETALL list or the client's dict."""
    if not raw:
        return None
    if isinstance(raw, dict):
        f = {_s(k): _s(v) for k, v in raw.items()}
    else:
        items = [_s(v) for v in raw]
        f = dict(zip(items[::2], items[1::2], strict=False))
    scope, job_id, tier, backend, cost, charged_at = json.loads(f["x"])
    return JobRecord(
        account=f["a"],
        scope=scope,
        job_id=job_id,
        charge_id=f["c"],
        state=cast(JobState, f["st"]),
        cost=cost,
        tier=tier,
        backend=backend,
        charged_at=charged_at,
        expires_at=float(f["ea"]),
        uses=int(f["u"]),
        lease_until=float(f["lu"]),
        debited=int(f["d"]),
    )


def _entries(reply: Iterable[Any]) -> list[JournalEntry]:
    """Journal entries from an XRANGE answer: ``[(id, {field: value}), ...]``."""
    out = []
    for entry_id, fields in reply:
        f = {_s(k): _s(v) for k, v in fields.items()}
        scope, job_id, tier, backend, cost, _charged_at = json.loads(f["x"])
        out.append(
            JournalEntry(
                seq=int(_s(entry_id).rpartition("-")[2]),
                kind=cast(JournalKind, f["k"]),
                account=f["a"],
                scope=scope,
                job_id=job_id,
                charge_id=f["c"],
                cost=int(cost),
                tier=tier,
                backend=backend,
                delta=int(f["d"]),
                balance=int(f["b"]),
                at=float(f["t"]),
            )
        )
    return out


def _grant_result(reply: Sequence[Any], amount: int) -> int:
    """The balance the grant script answered, or the 400 for a grant it
    refused (having written nothing): the balance would pass the cap, or the
    grant id was used for another amount."""
    status, balance = _s(reply[0]), int(_s(reply[1]))
    if status == "cap":
        raise balance_cap_error(balance, amount)
    if status == "conflict":
        raise grant_conflict_error(balance, amount)
    return balance


def _cursor_map(raw: dict[Any, Any] | None) -> dict[str, int]:
    return {_s(k): int(_s(v)) for k, v in (raw or {}).items()}


def _escape_glob(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class RedisStore(BaseStore):
    """Jobs and balances in Redis: shared by every process on every host.

    :param client: an existing ``redis.Redis`` or ``redis.cluster.RedisCluster``
        for the sync operations (its connection settings are then yours; it
        should have ``decode_responses`` off or on, either works). When given
        without ``url``, the async twins run the sync client in a worker thread
        unless ``async_client`` is given too.
    :param url: ``redis://``, ``rediss://`` or ``redis+unix://`` URL to build
        the clients from (sync, and ``redis.asyncio`` per event loop).
    :param prefix: the first part of every key, to share one database among
        applications or tests. May not contain ``{`` or ``}``.
    :param socket_timeout: seconds to wait for an answer before the operation
        fails with :class:`~jobcredits_plugin.StoreUnavailable`.
    :param socket_connect_timeout: seconds to wait for a connection.
    :param cluster: use ``RedisCluster`` (the URL names any one node).
    :param retries: how often a command is retried after a connection error
        (a connection killed while idle is then invisible to callers). A
        retried charge whose first attempt did commit is recognised by its
        charge id and answered as that charge.
    :param safety_expiry: seconds after a record's expiry (or lease end) at
        which Redis deletes the record by itself, so that keys of a store that
        nobody prunes cannot pile up forever; ``None`` switches it off. Records
        deleted this way fire no hook: run ``prune`` well within this margin.
    :param prune_batch: records one prune script settles at most, so a large
        backlog never blocks the server for long.
    :param journal: write a :class:`~jobcredits_plugin.JournalEntry` for every
        charge, refund, expiry and grant into the stream ``<prefix>:journal``,
        inside the script that makes the change. ``None`` (the default) means
        on. With ``cluster=True`` each entry goes to the stream of its
        account's slot, ``<prefix>:{S}:journal``, and readers merge those into
        ``<prefix>:{journal}`` (see docs/journal.md: one account's entries are
        in commit order; across accounts the order is the merge's, the same
        for every reader). Needs Redis 7.0 or newer (entry ids are
        ``0-<seq>``, given by ``XADD key 0-*``).
    :param journal_reuses: journal reuses too (one job can have many).
    :param journal_max_age: seconds a journal entry is kept by
        :meth:`~jobcredits_plugin.Ledger.trim_journal` called without bounds
        (``jobcredits prune`` does), unless a cursor has not read it; ``None``
        keeps entries until they are trimmed explicitly.
    :param server_clock: take ``now`` from the Redis server (``TIME``, read
        inside each script) instead of the ledger's clock, so that hosts
        whose clocks differ still agree on every lease and window: the
        ledger's ``clock=`` then no longer moves this store's time (a fake
        clock in tests does not either). Off by default; see "Clocks" in the
        Redis docs. On a cluster each account's time is that of the master
        serving its slot.
    """

    schemes = ("redis", "rediss", "redis+unix")

    def __init__(
        self,
        client: Any = None,
        *,
        url: str | None = None,
        prefix: str = "jobcredits",
        socket_timeout: float = 2.0,
        socket_connect_timeout: float = 2.0,
        cluster: bool = False,
        retries: int = 1,
        safety_expiry: float | None = 86400.0,
        prune_batch: int = 500,
        async_client: Any = None,
        journal: bool | None = None,
        journal_reuses: bool = False,
        journal_max_age: float | None = 7 * 86400.0,
        server_clock: bool = False,
    ) -> None:
        if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
            raise InvalidArgument(f"prefix must be a string without braces, not {prefix!r}")
        with configuring("RedisStore"):
            check_text("prefix", prefix)
        # Every number is bounded here, so that no value the scripts get can
        # make a command fail after their first write (a safety expiry of
        # 1e16 s once made PEXPIRE fail after a claim had debited).
        socket_timeout = check_positive_seconds(
            "socket_timeout", socket_timeout, most=MAX_WAIT_SECONDS
        )
        socket_connect_timeout = check_positive_seconds(
            "socket_connect_timeout", socket_connect_timeout, most=MAX_WAIT_SECONDS
        )
        retries = check_int_option("retries", retries, 0, MAX_RETRIES)
        prune_batch = check_int_option("prune_batch", prune_batch, 1, MAX_BATCH)
        safety_expiry = check_optional_seconds("safety_expiry", safety_expiry)
        journal_max_age = check_optional_seconds("journal_max_age", journal_max_age)
        server_clock = check_flag("server_clock", server_clock)
        if journal is None:
            journal = True
        if client is None and url is None:
            url = "redis://127.0.0.1:6379/0"
        self.prefix = prefix
        self.url = url
        self.cluster = cluster
        self.safety_expiry = safety_expiry
        self.prune_batch = int(prune_batch)
        self.journal = bool(journal)
        self.journal_reuses = bool(journal_reuses)
        self.journal_max_age = None if journal_max_age is None else float(journal_max_age)
        self.server_clock = server_clock
        #: The journal stream readers read, and its cursors hash. On a cluster
        #: both share the ``{journal}`` tag (one slot), with the set of slot
        #: streams written to and each one's merge mark (see lua/merge.lua).
        if cluster:
            self.journal_key = f"{prefix}:{{journal}}"
            self.cursors_key = f"{prefix}:{{journal}}:cursors"
        else:
            self.journal_key = f"{prefix}:journal"
            self.cursors_key = f"{prefix}:journal:cursors"
        self._streams_key = f"{prefix}:{{journal}}:streams"
        self._marks_key = f"{prefix}:{{journal}}:marks"
        #: The slot streams this instance has registered in _streams_key.
        self._registered: set[str] = set()
        #: What this instance knows of the slot streams (see _merge_pass): the
        #: registered ones, and the last slot seq merged or read from each.
        self._known_streams: list[str] = []
        self._marks: dict[str, int] = {}
        self._label = "Redis store " + (
            redact_url(url) if url is not None else type(client).__name__
        )
        self._client_kwargs: dict[str, Any] = {
            "socket_timeout": float(socket_timeout),
            "socket_connect_timeout": float(socket_connect_timeout),
            "decode_responses": True,
            "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), int(retries)),
        }
        if client is None:
            assert url is not None
            client = self._sync_from_url(url)
        self._client = client
        self._scripts = {name: client.register_script(src) for name, src in SCRIPTS.items()}
        self._given_async = async_client
        # One redis.asyncio client per event loop: its connections belong to
        # the loop that opened them.
        self._aclients: dict[int, tuple[asyncio.AbstractEventLoop, Any, Any, dict[str, Any]]] = {}
        self._closed = False

    # -- construction --------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """Build a store from a URL; query options (``?prefix=x&cluster=true``)
        and keyword ``options`` (which win) become constructor arguments."""
        if isinstance(url, str):
            check_url_text(url)
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 - validates the port
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(
                f"bad Redis URL {redact_url(url)!r}: {redact_text(str(exc), url)}"
            ) from exc
        scheme = parts.scheme.lower()
        if scheme not in cls.schemes:
            raise InvalidArgument(
                "RedisStore takes redis://, rediss:// or redis+unix:// URLs, "
                f"not {redact_url(url)!r}"
            )
        parsed = parse_options(parts.query, _OPTIONS, url, what="Redis URL")
        if scheme != "redis+unix" and parts.path.strip("/") and not parts.path.strip("/").isdigit():
            raise InvalidArgument(
                f"the path of a Redis URL is the database number, not {parts.path!r} "
                f"in {redact_url(url)!r}"
            )
        db = parsed.pop("db", None)
        if db is not None and not 0 <= db < 2**31:
            raise ConfigurationError(
                f"db must be a database number from 0, not {db} in {redact_url(url)!r}"
            )
        parsed.update(options)
        query = urllib.parse.urlencode({"db": db}) if db is not None else ""
        # Rebuilt by hand: urlunsplit drops the empty host of redis+unix:///path.
        clean = url.split("#", 1)[0].split("?", 1)[0] + (f"?{query}" if query else "")
        return cls(url=clean, **parsed)

    def _sync_from_url(self, url: str) -> Any:
        driver_url = _driver_url(url)
        try:
            if self.cluster:
                return redis.cluster.RedisCluster.from_url(driver_url, **self._cluster_kwargs())
            return redis.Redis.from_url(driver_url, **self._client_kwargs)
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(
                f"bad Redis URL {redact_url(url)!r}: {redact_text(str(exc), url)}"
            ) from exc
        except _DRIVER_ERRORS as exc:  # the cluster client reads the topology at once
            fault = self._fault(exc)
            if fault is exc:
                # Not "could not reach it": the driver refused the URL's
                # options (cluster=true with a db other than 0, say).
                raise ConfigurationError(
                    f"bad Redis URL {redact_url(url)!r}: {redact_text(str(exc), url)}"
                ) from exc
            raise fault from exc

    def _cluster_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self._client_kwargs)
        kwargs["require_full_coverage"] = True
        return kwargs

    def _async_from_url(self, url: str) -> Any:
        driver_url = _driver_url(url)
        if self.cluster:
            kwargs = self._cluster_kwargs()
            kwargs["retry"] = redis.asyncio.retry.Retry(
                ExponentialBackoff(cap=0.2, base=0.02), kwargs["retry"].get_retries()
            )
            return redis.asyncio.cluster.RedisCluster.from_url(driver_url, **kwargs)
        kwargs = dict(self._client_kwargs)
        kwargs["retry"] = redis.asyncio.retry.Retry(
            ExponentialBackoff(cap=0.2, base=0.02), kwargs["retry"].get_retries()
        )
        return redis.asyncio.Redis.from_url(driver_url, **kwargs)

    def __repr__(self) -> str:
        return f"RedisStore({self._label[len('Redis store ') :]!r}, prefix={self.prefix!r})"

    # -- keys --------------------------------------------------------------------------

    def _base(self, account: str) -> str:
        return f"{self.prefix}:{{{_tag(account)}}}:"

    def job_key(self, key: Key) -> str:
        """The Redis key of one job (public for operators and tests)."""
        account, scope, job_id = key
        return f"{self._base(account)}j:{_lp(account)}{_lp(scope)}{_lp(job_id)}"

    def balance_key(self, account: str) -> str:
        """The Redis key of one account's balance."""
        return f"{self._base(account)}b:{_lp(account)}"

    def due_key(self, account: str) -> str:
        """The sorted set of the account slot's jobs by deadline."""
        return f"{self._base(account)}due"

    def _due_pattern(self) -> str:
        return f"{_escape_glob(self.prefix)}:{{{'?' * 16}}}:due"

    def journal_stream(self, account: str) -> str:
        """The stream the account's journal entries are written to: the
        journal itself on a standalone server; on a cluster the stream of the
        account's slot, ``<prefix>:{S}:journal`` (``S`` a tag in that slot),
        which readers merge into the journal (public for operators and tests)."""
        return self._stream_of_tag(_tag(account))

    def _stream_of_tag(self, tag: str) -> str:
        if not self.cluster:
            return self.journal_key
        slot = binascii.crc_hqx(tag.encode(), 0) & 0x3FFF
        return f"{self.prefix}:{{{_slot_tag(slot)}}}:journal"

    def _stream_of_due(self, due: str) -> str:
        # P:{T}:due, where P has no braces: T is between the first { and }.
        return self._stream_of_tag(due[due.index("{") + 1 : due.index("}")])

    # -- errors --------------------------------------------------------------------------

    def _fault(self, exc: BaseException) -> BaseException:
        """What to raise for a driver error: StoreUnavailable when the server
        could not be reached or cannot serve right now, the error itself when
        it is a bug (a script error, bad data), which fail_open never passes."""
        if is_unavailable(exc):
            return self._unavailable(exc)
        if isinstance(exc, redis.exceptions.ResponseError) and "DB index is out of range" in str(
            exc
        ):
            # SELECT of a database the server does not have: the URL's db
            # number is the app's mistake, on every call until it is fixed.
            return ConfigurationError(
                f"{self._label}: the server has no database by the URL's db number "
                f"({redact_text(str(exc), self.url)})"
            )
        if isinstance(exc, redis.exceptions.ResponseError) and _OLD_SERVER in str(exc):
            # A server too old for journal=true: the deployment does not fit
            # the settings, the app's to fix (or to set journal=false).
            return ConfigurationError(f"{self._label}: {exc}")
        return exc

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        # The driver's message may name the URL or echo a credential.
        text = redact_text(str(exc), self.url)
        if isinstance(exc, redis.exceptions.AuthenticationError) or "WRONGPASS" in str(exc):
            return StoreUnavailable(
                f"{self._label}: authentication failed (check the user and password): {text}"
            )
        return StoreUnavailable(f"{self._label}: {type(exc).__name__}: {text}")

    def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._closed:
            raise StoreUnavailable(f"{self._label} is closed")
        try:
            return fn(*args, **kwargs)
        except _DRIVER_ERRORS as exc:
            fault = self._fault(exc)
            if fault is exc:
                raise
            raise fault from exc

    async def _arun(self, coro: Any) -> Any:
        try:
            return await coro
        except _DRIVER_ERRORS as exc:
            fault = self._fault(exc)
            if fault is exc:
                raise
            raise fault from exc

    # -- arguments and answers, shared by the sync and async paths ---------------------

    def _claim_call(self, req: ClaimRequest) -> tuple[list[str], list[str]]:
        account = req.account
        base = self._base(account)
        lp_account = _lp(account)
        keys = [
            f"{base}j:{lp_account}{_lp(req.scope)}{_lp(req.job_id)}",
            f"{base}due",
            f"{base}b:{lp_account}",
            # the retry marker: this call's answer, kept by the script
            f"{base}c:{lp_account}{_lp(req.charge_id)}",
        ]
        now = float(req.now)
        if self.server_clock:
            # The script reads TIME and completes these (see lua/claim.lua): the
            # times as offsets, the x field without charged_at.
            times = ("T", repr(float(req.ttl)), repr(float(req.lease)))
            expiry = self._expiry_ms(max(req.ttl, req.lease)) or "0"
            packed = (
                json.dumps(
                    [req.scope, req.job_id, req.tier, req.backend, req.cost],
                    ensure_ascii=False,
                    separators=(",", ":"),
                )[:-1]
                + ","
            )
        else:
            expires_at, lease_until = now + req.ttl, now + req.lease
            times = (repr(now), repr(expires_at), repr(lease_until))
            expiry = self._expiry_ms(max(expires_at, lease_until) - now) or "0"
            packed = json.dumps(
                [req.scope, req.job_id, req.tier, req.backend, req.cost, now],
                ensure_ascii=False,
                separators=(",", ":"),
            )
        control = "\x1f".join(
            (
                times[0],
                req.charge_id,
                str(req.cost),
                "0" if req.max_uses is None else str(req.max_uses),
                "1" if req.balances else "0",
                times[1],
                times[2],
                expiry,
                self._journal_flag(),
                _TOMBSTONE_MS,
            )
        )
        if self.journal:
            keys.append(self.journal_stream(account))
        return keys, [control, account, packed]

    def _journal_flag(self) -> str:
        """The claim's journal control value: 0 off, 1 on, 2 on with reuses."""
        if not self.journal:
            return "0"
        return "2" if self.journal_reuses else "1"

    def _expiry_ms(self, seconds_ahead: float) -> str:
        if self.safety_expiry is None:
            return ""
        return str(max(1, math.ceil((seconds_ahead + self.safety_expiry) * 1000)))

    def _now_arg(self, now: float) -> str:
        """The ``now`` a script gets: the ledger's, or ``T`` for the server's."""
        return "T" if self.server_clock else repr(float(now))

    def _claim_result(self, req: ClaimRequest, reply: Sequence[Any]) -> ClaimResult:
        status = _s(reply[0])
        existing = _decode(reply[1])
        balance = int(_s(reply[2]))
        if self.server_clock:
            # The rules replay on the server's now: the record the Python
            # side builds is then the one the script stored, to the bit.
            req = attrs.evolve(req, now=float(_s(reply[3])))
        if status == "replay" and existing is not None:
            return ClaimResult(
                "charged",
                existing,
                balance if req.balances else None,
                (Event("charge", existing),),
            )
        # The script's committed decision is the truth, should the rules
        # disagree (see claim_from_server).
        return claim_from_server("Redis store", status, existing, balance, req)

    def _key_call(self, key: Key, charge_id: str | None) -> list[str]:
        return [charge_id or "", "0" if charge_id is None else "1"]

    def _refund_call(
        self, key: Key, charge_id: str | None, now: float
    ) -> tuple[list[str], list[str]]:
        # The token is drawn once per call: redis-py re-sends these very keys
        # and arguments when it retries, which is how the script finds its own
        # marker (keyed by the job and the token: a newer charge of the job
        # never touches it).
        token = secrets.token_hex(8)
        account, scope, job_id = key
        keys = [
            self.job_key(key),
            self.due_key(account),
            self.balance_key(account),
            f"{self._base(account)}r:{_lp(account)}{_lp(scope)}{_lp(job_id)}{_lp(token)}",
        ]
        args = [
            *self._key_call(key, charge_id),
            self._now_arg(now),
            token,
            _TOMBSTONE_MS,
            "1" if self.journal else "0",
        ]
        if self.journal:
            keys.append(self.journal_stream(account))
        return keys, args

    def _refund_event(
        self, reply: Sequence[Any], charge_id: str | None, now: float
    ) -> Event | None:
        if not reply:
            return None
        if self.server_clock:
            now = float(_s(reply[2]))
        # {'refunded', the record before the refund}: the same answer whether
        # this run refunded or a retry found the marker of the run that did.
        record = _decode(reply[1])
        assert record is not None
        # The server's committed refund is the truth, whatever the rules say.
        return plan_refund(record, charge_id, now) or Event("refund", record.with_state(REFUNDED))

    def _prune_size(self, limit: int | None, done: int) -> int:
        return self.prune_batch if limit is None else min(self.prune_batch, limit - done)

    def _prune_call(self, due: str, now: float, batch: int) -> tuple[list[str], list[str]]:
        base = due[: -len("due")]
        # The batch's retry marker, in the due-set's slot, named by a token
        # drawn once per call (a retry re-sends it).
        keys = [due, f"{base}p:{secrets.token_hex(8)}"]
        if self.journal:
            keys.append(self._stream_of_due(due))
        args = [self._now_arg(now), str(batch), base, "1" if self.journal else "0", _TOMBSTONE_MS]
        return keys, args

    def _grant_call(
        self, account: str, amount: int, now: float, grant_id: str
    ) -> tuple[list[str], list[str]]:
        keys = [self.balance_key(account), f"{self._base(account)}g:{_lp(account)}{_lp(grant_id)}"]
        args = [
            str(int(amount)),
            "1" if self.journal else "0",
            _GRANT_MARKER_MS if grant_id else "",
        ]
        if self.journal:
            keys.append(self.journal_stream(account))
        packed = json.dumps([None, None, None, None, int(amount), None], separators=(",", ":"))
        return keys, [*args, account, grant_id, packed, self._now_arg(now)]

    # -- the journal's keys and answers ----------------------------------------------

    def _journal_keys(self) -> tuple[str, str]:
        """The journal stream readers read and its cursors hash."""
        return self.journal_key, self.cursors_key

    def _stream_to_register(self, keys: list[str]) -> str | None:
        """The slot stream a cluster write script is about to append to (its
        last key), unless this instance has registered it already."""
        if not (self.cluster and self.journal) or not keys[-1].endswith("}:journal"):
            return None
        return None if keys[-1] in self._registered else keys[-1]

    def _register(self, keys: list[str]) -> None:
        """Add the script's slot stream to the set readers merge from, before
        the script runs: an entry is only ever written to a stream that
        readers already know, so none is left behind in a stream nobody reads
        (a process that dies in between leaves a registered, empty stream).
        Once per stream per store instance."""
        stream = self._stream_to_register(keys)
        if stream is not None:
            self._run(self._client.sadd, self._streams_key, stream)
            self._registered.add(stream)

    async def _aregister(self, client: Any, keys: list[str]) -> None:
        stream = self._stream_to_register(keys)
        if stream is not None:
            await self._arun(client.sadd(self._streams_key, stream))
            self._registered.add(stream)

    def _merge_pass(self, budget: int) -> tuple[int, int]:
        """Merge about ``budget`` entries from the slot streams into the
        journal (a cluster's; see lua/merge.lua); returns how many this pass read
        from the slot streams and how many of those it appended (the others
        another reader had merged first; the next pass starts past them).

        The order: each slot stream's entries in their own order (an
        account's entries are in commit order), interleaved across streams
        by their time ``t`` (ties by stream name), a k-way merge that never
        reorders one stream. The seq the merged stream gives them is final:
        every reader sees the same order, and a reader resuming after seq N
        gets exactly what was appended after N.

        One pipelined XRANGE per slot stream reads what it holds past this
        instance's idea of its mark (the merge script skips what another
        reader merged meanwhile and answers the true marks; merged entries
        are trimmed from the slot streams, so a stale mark costs little); the
        streams that filled their share are then read again for the rest of
        the budget, so one busy slot gets most of a pass when the others are
        quiet, and none is starved when they are not."""
        client = self._client
        streams = self._slot_streams()
        if not streams:
            return 0, 0
        share = max(1, budget // len(streams))
        fetched = dict(zip(streams, self._read_slot_streams(streams, share, {}), strict=True))
        full = [s for s in streams if len(fetched[s]) == share]
        left = budget - sum(len(run) for run in fetched.values())
        if full and left > 0:
            more = max(1, left // len(full))
            read = {s: int(fetched[s][-1][1]) for s in full}
            for stream, run in zip(full, self._read_slot_streams(full, more, read), strict=True):
                fetched[stream].extend(run)
        runs = [
            [(float(values[8]), index, values) for values in fetched[stream]]
            for index, stream in enumerate(streams)
        ]
        args = [a for _t, _i, values in heapq.merge(*runs, key=lambda e: e[:2]) for a in values]
        if not args:
            return 0, 0
        reply = self._run(
            self._scripts["merge"], keys=[self.journal_key, self._marks_key], args=args
        )
        marks = {_s(reply[i]): int(_s(reply[i + 1])) for i in range(1, len(reply), 2)}
        self._marks.update(marks)
        # What is merged lives on in the merged stream: drop it from the slot
        # streams (also what an earlier pass merged but did not get to trim).
        pipe = client.pipeline(transaction=False)
        for stream, mark in marks.items():
            pipe.xtrim(stream, minid=f"0-{mark + 1}")
        self._run(pipe.execute)
        return len(args) // 9, int(reply[0])

    def _slot_streams(self) -> list[str]:
        """Every registered slot stream, sorted. The set only grows, so the
        cached list is re-read only when its size (SCARD) has changed."""
        size = int(self._run(self._client.scard, self._streams_key))
        if size != len(self._known_streams):
            members = self._run(self._client.smembers, self._streams_key)
            self._known_streams = sorted({_s(m) for m in members})
        return self._known_streams

    def _read_slot_streams(
        self, streams: list[str], count: int, after: dict[str, int]
    ) -> list[list[list[str]]]:
        """Up to ``count`` entries of each slot stream past ``after`` (by
        default its known mark), each as the merge script's 9 values (stream,
        slot seq, k a c x d b t)."""
        pipe = self._client.pipeline(transaction=False)
        for stream in streams:
            start = after.get(stream, self._marks.get(stream, 0))
            pipe.xrange(stream, f"(0-{start}", "+", count=count)
        out = []
        for stream, reply in zip(streams, self._run(pipe.execute), strict=True):
            run = []
            for entry_id, fields in reply:
                f = {_s(k): _s(v) for k, v in fields.items()}
                seq = _s(entry_id).rpartition("-")[2]
                run.append([stream, seq, *(f.get(k, "") for k in "kacxdbt")])
            out.append(run)
        return out

    def _merge_backlog(self) -> None:
        """Merge what waits in the slot streams (trimming merges first, so a
        journal nobody reads is still bounded by its age), a bounded number
        of passes, so a trim under a constant stream of writes still ends."""
        for _ in range(_MERGE_PASSES):
            if self._merge_pass(_MERGE_BATCH)[0] < _MERGE_BATCH:
                return

    @staticmethod
    def _xrange_args(after: int) -> tuple[str, str]:
        return f"(0-{max(0, int(after))}", "+"

    @staticmethod
    def _trim_args(through: int | None, cutoff: float | None) -> list[str]:
        return [
            "" if through is None else str(int(through)),
            "" if cutoff is None else repr(float(cutoff)),
            str(_TRIM_BATCH),
        ]

    @staticmethod
    def _set_cursor_args(name: str, position: int, force: bool) -> list[str]:
        return [name, str(int(position)), "1" if force else "0"]

    def _prune_events(self, reply: Sequence[Any], now: float) -> tuple[int, list[Event]]:
        events = []
        raws = reply[1:]
        if self.server_clock:
            now, raws = float(_s(reply[1])), reply[2:]
        for raw in raws:
            record = _decode(raw)
            assert record is not None
            event = plan_settle(record, now)
            if event is not None:
                events.append(event)
        return int(reply[0]), events

    def _snapshot_args(self) -> list[str]:
        return ["T"] if self.server_clock else []

    def _snapshot_records(self, replies: Iterable[Sequence[Any]], now: float) -> list[JobRecord]:
        live: list[JobRecord] = []
        for reply in replies:
            raws = reply
            if self.server_clock:
                # each due-set's script read its own server's now (one node
                # of a cluster per slot)
                now, raws = float(_s(reply[0])), reply[1:]
            live.extend(r for r in map(_decode, raws) if r is not None and r.is_live(now))
        live.sort(key=lambda r: (r.charged_at, r.key))
        return live

    def _confirm_args(self, key: Key, charge_id: str | None) -> list[str]:
        args = self._key_call(key, charge_id)
        return [*args, "T"] if self.server_clock else args

    def _confirm_result(
        self, reply: Sequence[Any], charge_id: str | None, now: float
    ) -> JobRecord | None:
        if self.server_clock:
            now, reply = float(_s(reply[0])), reply[1]
        return plan_confirm(_decode(reply), charge_id, now)[0]

    def _lookup_result(self, reply: Any, now: float) -> JobRecord | None:
        if self.server_clock:
            now, reply = float(_s(reply[0])), reply[1]
        record = _decode(reply)
        return record if record is not None and record.is_live(now) else None

    # -- the store protocol --------------------------------------------------------------

    def claim(self, req: ClaimRequest) -> ClaimResult:
        keys, args = self._claim_call(req)
        self._register(keys)
        reply = self._run(self._scripts["claim"], keys=keys, args=args)
        return self._claim_result(req, reply)

    def confirm(self, key: Key, charge_id: str | None, now: float) -> JobRecord | None:
        keys = [self.job_key(key), self.due_key(key[0])]
        reply = self._run(
            self._scripts["confirm"], keys=keys, args=self._confirm_args(key, charge_id)
        )
        return self._confirm_result(reply, charge_id, now)

    def refund(self, key: Key, charge_id: str | None, now: float) -> Event | None:
        keys, args = self._refund_call(key, charge_id, now)
        self._register(keys)
        reply = self._run(self._scripts["refund"], keys=keys, args=args)
        return self._refund_event(reply, charge_id, now)

    def lookup(self, key: Key, now: float) -> JobRecord | None:
        if self.server_clock:
            reply = self._run(self._scripts["lookup"], keys=[self.job_key(key)])
        else:
            reply = self._run(self._client.hgetall, self.job_key(key))
        return self._lookup_result(reply, now)

    def _due_keys(self) -> list[str]:
        found = self._run(
            lambda: list(self._client.scan_iter(match=self._due_pattern(), count=1000))
        )
        return sorted({_s(k) for k in found})

    def prune(self, now: float, limit: int | None = None) -> list[Event]:
        events: list[Event] = []
        try:
            for due in self._due_keys():
                while limit is None or len(events) < limit:
                    batch = self._prune_size(limit, len(events))
                    keys, args = self._prune_call(due, now, batch)
                    self._register(keys)
                    reply = self._run(self._scripts["prune"], keys=keys, args=args)
                    examined, settled = self._prune_events(reply, now)
                    events.extend(settled)
                    if examined < batch:
                        break
                if limit is not None and len(events) >= limit:
                    break
        except BaseException as exc:
            # Each script committed its batch: the ledger still fires theirs.
            with_settled(exc, events)
            raise
        return events

    def snapshot(self, now: float) -> list[JobRecord]:
        args = self._snapshot_args()
        replies = [
            self._run(self._scripts["snapshot"], keys=[due], args=args) for due in self._due_keys()
        ]
        return self._snapshot_records(replies, now)

    def grant(self, account: str, amount: int, now: float = 0.0, grant_id: str = "") -> int:
        keys, args = self._grant_call(account, amount, now, grant_id)
        self._register(keys)
        reply = self._run(self._scripts["grant"], keys=keys, args=args)
        return _grant_result(reply, amount)

    def balance(self, account: str) -> int:
        value = self._run(self._client.get, self.balance_key(account))
        return 0 if value is None else int(_s(value))

    # -- the journal ---------------------------------------------------------------------

    def read_journal(self, after: int, limit: int) -> list[JournalEntry]:
        stream, _ = self._journal_keys()
        if limit < 1:
            return []
        low, high = self._xrange_args(after)
        entries = _entries(self._run(self._client.xrange, stream, low, high, count=int(limit)))
        if not self.cluster:
            return entries
        # A cluster: what the slot streams hold past the merged journal's end
        # is numbered now, by this reader (or by another one at the same time).
        while len(entries) < limit:
            read, _appended = self._merge_pass(max(limit - len(entries), _MERGE_BATCH))
            last = entries[-1].seq if entries else after
            low, high = self._xrange_args(last)
            count = int(limit) - len(entries)
            more = _entries(self._run(self._client.xrange, stream, low, high, count=count))
            entries.extend(more)
            if read == 0:  # nothing waits in the slot streams
                break
        return entries

    def trim_journal(self, through: int | None, cutoff: float | None) -> int:
        keys = list(self._journal_keys())
        if through is None and cutoff is None:
            return 0
        if self.cluster:
            self._merge_backlog()
        args = self._trim_args(through, cutoff)
        removed = 0
        while True:
            n = int(self._run(self._scripts["trim"], keys=keys, args=args))
            removed += n
            if n < _TRIM_BATCH:
                return removed

    def get_cursor(self, name: str) -> int | None:
        _, cursors = self._journal_keys()
        value = self._run(self._client.hget, cursors, name)
        return None if value is None else int(_s(value))

    def set_cursor(self, name: str, position: int, force: bool = False) -> int:
        _, cursors = self._journal_keys()
        args = self._set_cursor_args(name, position, force)
        return int(_s(self._run(self._scripts["set_cursor"], keys=[cursors], args=args)))

    def delete_cursor(self, name: str) -> bool:
        _, cursors = self._journal_keys()
        return bool(self._run(self._client.hdel, cursors, name))

    def cursors(self) -> dict[str, int]:
        _, cursors = self._journal_keys()
        return _cursor_map(self._run(self._client.hgetall, cursors))

    def close(self) -> None:
        """Close the sync client's connections; async clients close with their
        event loop (or :meth:`aclose`)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RedisError, OSError):
            self._client.close()
        self._aclients.clear()

    # -- the async twins ---------------------------------------------------------------

    async def _aclient(self) -> tuple[Any, dict[str, Any]] | None:
        """This event loop's async client and scripts, or None to run the
        sync client in a thread (a sync client given without a URL)."""
        if self._closed:
            raise StoreUnavailable(f"{self._label} is closed")
        loop = asyncio.get_running_loop()
        entry = self._aclients.get(id(loop))
        if entry is not None and entry[0] is loop:
            return entry[2], entry[3]
        for ident, (other, *_rest) in list(self._aclients.items()):
            if other.is_closed():
                del self._aclients[ident]
        if self._given_async is not None:
            client = self._given_async
        elif self.url is not None and not self.cluster:
            client = self._async_from_url(self.url)
        else:
            # No URL, or a cluster: the sync client runs in a worker thread.
            # redis-py's asyncio cluster client races when several coroutines
            # make its first connections at once (a connection's writer is
            # still None: AttributeError instead of a reply), which the store
            # suite's concurrent acharge test hit; a reply lost that way is a
            # charge whose caller never learns it won.
            return None
        scripts = {name: client.register_script(src) for name, src in SCRIPTS.items()}
        # An async generator started on this loop is closed by the loop's
        # shutdown_asyncgens() (asyncio.run does that), which lets us close the
        # client's connections while their loop still runs.
        closer = _closer(client) if client is not self._given_async else None
        if closer is not None:
            await closer.__anext__()
        self._aclients[id(loop)] = (loop, closer, client, scripts)
        return client, scripts

    async def aclaim(self, req: ClaimRequest) -> ClaimResult:
        got = await self._aclient()
        if got is None:
            return await super().aclaim(req)
        keys, args = self._claim_call(req)
        await self._aregister(got[0], keys)
        reply = await self._arun(got[1]["claim"](keys=keys, args=args))
        return self._claim_result(req, reply)

    async def aconfirm(self, key: Key, charge_id: str | None, now: float) -> JobRecord | None:
        got = await self._aclient()
        if got is None:
            return await super().aconfirm(key, charge_id, now)
        keys = [self.job_key(key), self.due_key(key[0])]
        args = self._confirm_args(key, charge_id)
        reply = await self._arun(got[1]["confirm"](keys=keys, args=args))
        return self._confirm_result(reply, charge_id, now)

    async def arefund(self, key: Key, charge_id: str | None, now: float) -> Event | None:
        got = await self._aclient()
        if got is None:
            return await super().arefund(key, charge_id, now)
        keys, args = self._refund_call(key, charge_id, now)
        await self._aregister(got[0], keys)
        reply = await self._arun(got[1]["refund"](keys=keys, args=args))
        return self._refund_event(reply, charge_id, now)

    async def alookup(self, key: Key, now: float) -> JobRecord | None:
        got = await self._aclient()
        if got is None:
            return await super().alookup(key, now)
        if self.server_clock:
            reply = await self._arun(got[1]["lookup"](keys=[self.job_key(key)]))
        else:
            reply = await self._arun(got[0].hgetall(self.job_key(key)))
        return self._lookup_result(reply, now)

    async def _adue_keys(self, client: Any) -> list[str]:
        async def scan() -> list[str]:
            return [_s(k) async for k in client.scan_iter(match=self._due_pattern(), count=1000)]

        return sorted(set(await self._arun(scan())))

    async def aprune(self, now: float, limit: int | None = None) -> list[Event]:
        got = await self._aclient()
        if got is None:
            return await super().aprune(now, limit)
        client, scripts = got
        events: list[Event] = []
        try:
            for due in await self._adue_keys(client):
                while limit is None or len(events) < limit:
                    batch = self._prune_size(limit, len(events))
                    keys, args = self._prune_call(due, now, batch)
                    await self._aregister(client, keys)
                    reply = await self._arun(scripts["prune"](keys=keys, args=args))
                    examined, settled = self._prune_events(reply, now)
                    events.extend(settled)
                    if examined < batch:
                        break
                if limit is not None and len(events) >= limit:
                    break
        except BaseException as exc:
            with_settled(exc, events)
            raise
        return events

    async def asnapshot(self, now: float) -> list[JobRecord]:
        got = await self._aclient()
        if got is None:
            return await super().asnapshot(now)
        client, scripts = got
        args = self._snapshot_args()
        replies = [
            await self._arun(scripts["snapshot"](keys=[due], args=args))
            for due in await self._adue_keys(client)
        ]
        return self._snapshot_records(replies, now)

    async def agrant(self, account: str, amount: int, now: float = 0.0, grant_id: str = "") -> int:
        got = await self._aclient()
        if got is None:
            return await super().agrant(account, amount, now, grant_id)
        keys, args = self._grant_call(account, amount, now, grant_id)
        await self._aregister(got[0], keys)
        reply = await self._arun(got[1]["grant"](keys=keys, args=args))
        return _grant_result(reply, amount)

    async def abalance(self, account: str) -> int:
        got = await self._aclient()
        if got is None:
            return await super().abalance(account)
        value = await self._arun(got[0].get(self.balance_key(account)))
        return 0 if value is None else int(_s(value))

    async def aread_journal(self, after: int, limit: int) -> list[JournalEntry]:
        stream, _ = self._journal_keys()
        got = await self._aclient()
        if got is None or self.cluster:
            # A cluster's reads merge (several pipelines): the sync path, in a thread.
            return await super().aread_journal(after, limit)
        if limit < 1:
            return []
        low, high = self._xrange_args(after)
        return _entries(await self._arun(got[0].xrange(stream, low, high, count=int(limit))))

    async def atrim_journal(self, through: int | None, cutoff: float | None) -> int:
        keys = list(self._journal_keys())
        got = await self._aclient()
        if got is None or self.cluster:
            return await super().atrim_journal(through, cutoff)
        if through is None and cutoff is None:
            return 0
        args = self._trim_args(through, cutoff)
        removed = 0
        while True:
            n = int(await self._arun(got[1]["trim"](keys=keys, args=args)))
            removed += n
            if n < _TRIM_BATCH:
                return removed

    async def aget_cursor(self, name: str) -> int | None:
        _, cursors = self._journal_keys()
        got = await self._aclient()
        if got is None:
            return await super().aget_cursor(name)
        value = await self._arun(got[0].hget(cursors, name))
        return None if value is None else int(_s(value))

    async def aset_cursor(self, name: str, position: int, force: bool = False) -> int:
        _, cursors = self._journal_keys()
        got = await self._aclient()
        if got is None:
            return await super().aset_cursor(name, position, force)
        args = self._set_cursor_args(name, position, force)
        return int(_s(await self._arun(got[1]["set_cursor"](keys=[cursors], args=args))))

    async def adelete_cursor(self, name: str) -> bool:
        _, cursors = self._journal_keys()
        got = await self._aclient()
        if got is None:
            return await super().adelete_cursor(name)
        return bool(await self._arun(got[0].hdel(cursors, name)))

    async def acursors(self) -> dict[str, int]:
        _, cursors = self._journal_keys()
        got = await self._aclient()
        if got is None:
            return await super().acursors()
        return _cursor_map(await self._arun(got[0].hgetall(cursors)))

    async def aclose(self) -> None:
        """Close this loop's async client now, then the sync client."""
        loop = asyncio.get_running_loop()
        entry = self._aclients.pop(id(loop), None)
        if entry is not None and entry[0] is loop and entry[1] is not None:
            with contextlib.suppress(RedisError, OSError):
                await entry[1].aclose()
        self.close()


async def _closer(client: Any) -> AsyncIterator[None]:
    """Closes ``client`` when its event loop shuts its async generators down."""
    try:
        yield
    finally:
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()


def _driver_url(url: str) -> str:
    """redis-py spells a socket URL ``unix://``; we accept ``redis+unix://``."""
    if url.lower().startswith("redis+unix://"):
        return "unix://" + url[len("redis+unix://") :]
    return url
