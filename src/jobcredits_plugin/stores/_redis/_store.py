"""The Redis store's class: its options, and the store protocol, sync and async.

Each operation builds its script call (:mod:`._wire`), runs it on the sync
client or this event loop's async client (:mod:`._clients`), and turns the
answer into the protocol's results (:mod:`._wire` again); on a cluster the
journal is read and trimmed through the merge of its slot streams
(:mod:`._merge`).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar, cast

from ..._errors import ConfigurationError, InvalidArgument
from ..._records import JobRecord, JournalEntry
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
from .._base import BaseStore
from .._rules import ClaimRequest, ClaimResult, Event, Key
from .._urls import (
    JOURNAL_OPTIONS,
    check_url_text,
    parse_bool,
    parse_optional_seconds,
    parse_options,
    redact_text,
    redact_url,
)
from ._clients import Clients
from ._merge import ClusterJournal
from ._replies import cursor_map, entries, grant_result, s
from ._wire import Failed, Steps, Wire, resume

__all__ = ["MAX_RETRIES", "RedisStore"]

_T = TypeVar("_T")

#: The most retries a store may make of one command after a connection error.
MAX_RETRIES = 100

#: The options a URL's query may set, and how each is read.
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


# Its parts: ClusterJournal merges a cluster's journal, Clients holds the
# clients and runs the driver calls, Wire (with Keys) builds each script's call
# and reads its answer; this class adds the options and the store protocol.
class RedisStore(ClusterJournal, Clients, Wire, BaseStore):
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
        self._journal_at(prefix, cluster)
        self._connect(client, async_client, socket_timeout, socket_connect_timeout, retries)

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

    def __repr__(self) -> str:
        return f"RedisStore({self._label[len('Redis store ') :]!r}, prefix={self.prefix!r})"

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
        return sorted({s(k) for k in found})

    def prune(self, now: float, limit: int | None = None) -> list[Event]:
        return self._drive("prune", self._prune_steps(self._due_keys(), now, limit))

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
        return grant_result(reply, amount)

    def balance(self, account: str) -> int:
        value = self._run(self._client.get, self.balance_key(account))
        return 0 if value is None else int(s(value))

    # -- the journal ---------------------------------------------------------------------

    def read_journal(self, after: int, limit: int) -> list[JournalEntry]:
        if limit < 1:
            return []
        got = self._xrange(after, int(limit))
        return self._read_merging(got, after, limit) if self.cluster else got

    def trim_journal(self, through: int | None, cutoff: float | None) -> int:
        if through is None and cutoff is None:
            return 0
        if self.cluster:
            self._merge_backlog()
        return self._drive("trim", self._trim_steps(through, cutoff))

    def get_cursor(self, name: str) -> int | None:
        value = self._run(self._client.hget, self.cursors_key, name)
        return None if value is None else int(s(value))

    def set_cursor(self, name: str, position: int, force: bool = False) -> int:
        args = self._set_cursor_args(name, position, force)
        return int(s(self._run(self._scripts["set_cursor"], keys=[self.cursors_key], args=args)))

    def delete_cursor(self, name: str) -> bool:
        return bool(self._run(self._client.hdel, self.cursors_key, name))

    def cursors(self) -> dict[str, int]:
        return cursor_map(self._run(self._client.hgetall, self.cursors_key))

    # -- loops of script calls -----------------------------------------------------------

    def _drive(self, name: str, steps: Steps[_T]) -> _T:
        """Run the loop ``steps`` (see Wire._prune_steps) on the sync client:
        each call it yields is one run of script ``name`` (its slot stream
        registered first, see _register), whose answer, or error, the loop
        gets back."""
        outcome: Any = None
        try:
            while True:
                keys, args = resume(steps, outcome)
                try:
                    self._register(keys)
                    outcome = self._run(self._scripts[name], keys=keys, args=args)
                except BaseException as exc:  # noqa: BLE001 - the loop gets it, and re-raises it
                    outcome = Failed(exc)
        except StopIteration as done:
            return cast(_T, done.value)

    async def _adrive(self, got: tuple[Any, dict[str, Any]], name: str, steps: Steps[_T]) -> _T:
        """The same on this event loop's async client and scripts (``got``)."""
        client, scripts = got
        outcome: Any = None
        try:
            while True:
                keys, args = resume(steps, outcome)
                try:
                    await self._aregister(client, keys)
                    outcome = await self._arun(scripts[name](keys=keys, args=args))
                except BaseException as exc:  # noqa: BLE001 - the loop gets it, and re-raises it
                    outcome = Failed(exc)
        except StopIteration as done:
            return cast(_T, done.value)

    # -- the async twins: on this event loop's async client, or (without one) the
    # -- sync operation in a worker thread -----------------------------------------------

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
            return [s(k) async for k in client.scan_iter(match=self._due_pattern(), count=1000)]

        return sorted(set(await self._arun(scan())))

    async def aprune(self, now: float, limit: int | None = None) -> list[Event]:
        got = await self._aclient()
        if got is None:
            return await super().aprune(now, limit)
        dues = await self._adue_keys(got[0])
        return await self._adrive(got, "prune", self._prune_steps(dues, now, limit))

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
        return grant_result(reply, amount)

    async def abalance(self, account: str) -> int:
        got = await self._aclient()
        if got is None:
            return await super().abalance(account)
        value = await self._arun(got[0].get(self.balance_key(account)))
        return 0 if value is None else int(s(value))

    async def aread_journal(self, after: int, limit: int) -> list[JournalEntry]:
        got = await self._aclient()
        if got is None or self.cluster:
            # A cluster's reads merge (several pipelines): the sync path, in a thread.
            return await super().aread_journal(after, limit)
        if limit < 1:
            return []
        low, high = self._xrange_args(after)
        return entries(
            await self._arun(got[0].xrange(self.journal_key, low, high, count=int(limit)))
        )

    async def atrim_journal(self, through: int | None, cutoff: float | None) -> int:
        got = await self._aclient()
        if got is None or self.cluster:
            return await super().atrim_journal(through, cutoff)
        if through is None and cutoff is None:
            return 0
        return await self._adrive(got, "trim", self._trim_steps(through, cutoff))

    async def aget_cursor(self, name: str) -> int | None:
        got = await self._aclient()
        if got is None:
            return await super().aget_cursor(name)
        value = await self._arun(got[0].hget(self.cursors_key, name))
        return None if value is None else int(s(value))

    async def aset_cursor(self, name: str, position: int, force: bool = False) -> int:
        got = await self._aclient()
        if got is None:
            return await super().aset_cursor(name, position, force)
        args = self._set_cursor_args(name, position, force)
        return int(s(await self._arun(got[1]["set_cursor"](keys=[self.cursors_key], args=args))))

    async def adelete_cursor(self, name: str) -> bool:
        got = await self._aclient()
        if got is None:
            return await super().adelete_cursor(name)
        return bool(await self._arun(got[0].hdel(self.cursors_key, name)))

    async def acursors(self) -> dict[str, int]:
        got = await self._aclient()
        if got is None:
            return await super().acursors()
        return cursor_map(await self._arun(got[0].hgetall(self.cursors_key)))
