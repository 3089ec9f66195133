"""The Redis store's clients: the sync one, one ``redis.asyncio`` client per
event loop, and every driver call made through :meth:`Clients._run` (or
``_arun``), which turns driver errors into the store's errors."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.cluster
import redis.utils
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript, Script
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from ..._errors import ConfigurationError, InvalidArgument, StoreUnavailable
from .._urls import redact_text, redact_url
from ._faults import DRIVER_ERRORS, fault
from ._scripts import SCRIPTS

__all__ = ["Clients"]


class Clients:
    """Builds the clients and runs the driver calls of a :class:`.RedisStore`
    (whose constructor sets these attributes)."""

    url: str | None
    cluster: bool
    #: "Redis store <redacted URL>": how errors name the store.
    _label: str
    _closed: bool
    #: The settings every client is built with (see RedisStore.__init__).
    _client_kwargs: dict[str, Any]
    _client: Any
    #: The sync client's scripts, by name.
    _scripts: dict[str, Any]
    #: What lends the store's own sync client's connections to its scripts
    #: (None for a client you gave, or a cluster).
    _lender: _Lender | None
    #: The async client given to the constructor, if any.
    _given_async: Any
    #: id(loop) -> (loop, the closer of its client, its client, its scripts).
    _aclients: dict[int, tuple[asyncio.AbstractEventLoop, Any, Any, dict[str, Any]]]

    def _connect(
        self,
        client: Any,
        async_client: Any,
        socket_timeout: float,
        socket_connect_timeout: float,
        retries: int,
    ) -> None:
        """Keep the given clients, or build the sync one from ``self.url``
        (async ones are built per event loop, on first use)."""
        self._label = "Redis store " + (
            redact_url(self.url) if self.url is not None else type(client).__name__
        )
        self._client_kwargs = {
            "socket_timeout": float(socket_timeout),
            "socket_connect_timeout": float(socket_connect_timeout),
            "decode_responses": True,
            "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), int(retries)),
        }
        # A client the store builds itself is its own to drive: its scripts
        # go over its pooled connections straight (see _PooledScript). A
        # client you pass is used only through its public execute_command,
        # so that what you wrapped around it (instrumentation, a single
        # connection) sees every call.
        own = client is None and not self.cluster
        if client is None:
            assert self.url is not None
            client = self._sync_from_url(self.url)
        self._client = client
        # One lender for all the scripts: a connection one script used is
        # the next one's, whichever it is.
        self._lender = _Lender(client.connection_pool) if own else None
        self._scripts = {
            name: _direct(client.register_script(src), lender=self._lender)
            for name, src in SCRIPTS.items()
        }
        self._given_async = async_client
        # One redis.asyncio client per event loop: its connections belong to
        # the loop that opened them.
        self._aclients = {}
        self._closed = False

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
        except DRIVER_ERRORS as exc:  # the cluster client reads the topology at once
            error = fault(exc, self._label, self.url)
            if error is exc:
                # Not "could not reach it": the driver refused the URL's
                # options (cluster=true with a db other than 0, say).
                raise ConfigurationError(
                    f"bad Redis URL {redact_url(url)!r}: {redact_text(str(exc), url)}"
                ) from exc
            raise error from exc

    def _cluster_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self._client_kwargs)
        kwargs["require_full_coverage"] = True
        return kwargs

    def _async_from_url(self, url: str) -> Any:
        kwargs = self._cluster_kwargs() if self.cluster else dict(self._client_kwargs)
        # the same retry policy, in redis.asyncio's own class
        kwargs["retry"] = redis.asyncio.retry.Retry(
            ExponentialBackoff(cap=0.2, base=0.02), kwargs["retry"].get_retries()
        )
        if self.cluster:
            return redis.asyncio.cluster.RedisCluster.from_url(_driver_url(url), **kwargs)
        return redis.asyncio.Redis.from_url(_driver_url(url), **kwargs)

    def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, a call of the sync client, with its
        driver errors turned into the store's (see _faults.fault)."""
        if self._closed:
            raise StoreUnavailable(f"{self._label} is closed")
        try:
            return fn(*args, **kwargs)
        except DRIVER_ERRORS as exc:
            error = fault(exc, self._label, self.url)
            if error is exc:
                raise
            raise error from exc

    async def _arun(self, coro: Any) -> Any:
        """``await coro``, a call of an async client, likewise."""
        try:
            return await coro
        except DRIVER_ERRORS as exc:
            error = fault(exc, self._label, self.url)
            if error is exc:
                raise
            raise error from exc

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
        # The store's own async client sends its scripts as the sync one does
        # (see _PooledScript); a client you gave keeps the public path.
        own = client is not self._given_async
        lender = _ALender(client.connection_pool) if own else None
        scripts = {
            name: _adirect(client.register_script(src), lender=lender)
            for name, src in SCRIPTS.items()
        }
        # An async generator started on this loop is closed by the loop's
        # shutdown_asyncgens() (asyncio.run does that), which lets us close the
        # client's connections while their loop still runs.
        closer = _closer(client, lender) if client is not self._given_async else None
        if closer is not None:
            await closer.__anext__()
        self._aclients[id(loop)] = (loop, closer, client, scripts)
        return client, scripts

    def close(self) -> None:
        """Close the sync client's connections; async clients close with their
        event loop (or :meth:`aclose`)."""
        if self._closed:
            return
        self._closed = True
        if self._lender is not None:
            self._lender.close()
        with contextlib.suppress(RedisError, OSError):
            self._client.close()
        self._aclients.clear()

    async def aclose(self) -> None:
        """Close this loop's async client now, then the sync client."""
        loop = asyncio.get_running_loop()
        entry = self._aclients.pop(id(loop), None)
        if entry is not None and entry[0] is loop and entry[1] is not None:
            with contextlib.suppress(RedisError, OSError):
                await entry[1].aclose()
        self.close()


class _DirectScript:
    """A sync client's script, run as the very EVALSHA ``Script.__call__``
    sends, without that method's work around it on every call (two imports
    and two isinstance tests against pipeline classes, the keys and
    arguments copied into one tuple, two more frames): a tenth of the
    client-side Python of a follow-up. It reloads a script the server has
    lost as redis-py does, and hands a call on another client (a
    pipeline) to redis-py's own ``Script``."""

    __slots__ = ("_execute", "_script")

    def __init__(self, script: Script) -> None:
        self._script = script
        client: Any = script.registered_client
        self._execute: Callable[..., Any] = client.execute_command

    @property
    def sha(self) -> str:
        return str(self._script.sha)

    @property
    def script(self) -> Any:
        return self._script.script

    def __call__(self, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        if client is not None:
            return self._script(keys=keys, args=args, client=client)
        keys = keys or ()
        args = args or ()
        script = self._script
        try:
            return self._send(("EVALSHA", script.sha, len(keys), *keys, *args))
        except NoScriptError:
            # The server lost its scripts (a restart, SCRIPT FLUSH): load it
            # and run it again, as Script.__call__ does.
            owner: Any = script.registered_client
            script.sha = owner.script_load(script.script)
            return self._send(("EVALSHA", script.sha, len(keys), *keys, *args))

    def _send(self, command: tuple[Any, ...]) -> Any:
        """One EVALSHA, through the client's public ``execute_command``."""
        return self._execute(*command)


#: How long a connection may wait in a :class:`_Lender` and still be lent
#: without the pool's checks. Below a second, the granularity of Redis's
#: own ``timeout``: a connection the server closed for idling never
#: qualifies.
_FRESH = 0.5

#: The most connections a :class:`_Lender` keeps waiting (and at most a
#: quarter of its pool's ``max_connections``): the rest go back to the pool,
#: where the client's other commands can use them.
_KEEP = 16


class _Lending:
    """Lends the connections of the pool of one of the store's own clients
    to its script calls, keeping the idle ones in a list of its own: what
    :class:`_Lender` (the sync client's) and :class:`_ALender` (a
    ``redis.asyncio`` client's, one per event loop) share.

    Why: redis-py's pool takes a lock, tests the socket for unread data
    (a ``poll``), and reports to its observability hooks on every checkout
    and every return: 5.7 µs per call in a hot loop, about 12 µs per
    follow-up in a benchmark's loop (docs/performance.md), where the
    whole of the ledger's and the store's own Python is about 12 µs. What
    the pool's checkout guarantees is kept, each its own way:

    - **one caller per connection**: the list's ``pop`` and ``append`` are
      atomic, so two threads never get the same connection;
    - **no answer left unread**: a call that raised anything (a timeout, an
      interrupt or a cancellation between the send and the read)
      disconnects its connection before it is lent again; the next call
      reconnects. A call that returned read its one reply whole;
    - **not closed by the server**: a connection that waited longer than
      ``_FRESH`` goes back through the pool's own checkout and its checks.
      One closed sooner (a restart, a failover) fails its send or its read,
      which the client's ``Retry`` disconnects and sends again, as redis-py
      does for a call whose connection dies under it;
    - **fork-safe**: a child process drops its parent's list (those sockets
      are the parent's) and starts from the pool, which resets itself;
    - **bounded**: at most ``_KEEP`` connections (and a quarter of the
      pool's ``max_connections``) wait here, the rest are handed back.
    """

    __slots__ = ("_closed", "_idle", "_keep", "_pid", "_pool", "_pool_args")

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._pool_args = _pool_args(pool)
        #: (connection, when it was handed back): the last one first.
        self._idle: list[tuple[Any, float]] = []
        self._pid = os.getpid()
        limit = getattr(pool, "max_connections", None)
        self._keep = _KEEP if not isinstance(limit, int) else max(0, min(_KEEP, limit // 4))
        self._closed = False

    def _waiting(self) -> tuple[Any, Any]:
        """(a fresh waiting connection or None, a stale one for the pool or None)."""
        if self._pid != os.getpid():
            self._idle = []  # the parent's sockets: never this process's to use
            self._pid = os.getpid()
            return None, None
        try:
            conn, since = self._idle.pop()
        except IndexError:
            return None, None
        if time.monotonic() - since < _FRESH:
            return conn, None
        return None, conn

    def _must_disconnect(self, conn: Any, clean: bool) -> bool:
        """Whether ``conn`` is disconnected before anyone uses it again: its
        call failed, or the server asked it to reconnect (redis-py 7+)."""
        reconnect = getattr(conn, "should_reconnect", None)
        return not clean or (reconnect is not None and bool(reconnect()))

    def _kept(self, conn: Any) -> bool:
        """Keep ``conn`` waiting for the next call, if there is room."""
        if not self._closed and self._pid == os.getpid() and len(self._idle) < self._keep:
            self._idle.append((conn, time.monotonic()))
            return True
        return False

    def _drained(self) -> list[Any]:
        """Close: the waiting connections, to hand back to the pool (the
        client's ``close`` then disconnects them with the rest)."""
        self._closed = True
        idle, self._idle = self._idle, []
        return [conn for conn, _since in idle] if self._pid == os.getpid() else []


class _Lender(_Lending):
    """:class:`_Lending` for the sync client."""

    __slots__ = ()

    def take(self) -> Any:
        """A connection for one call: the one last handed back, if it is
        fresh, else one from the pool (which checks it)."""
        conn, stale = self._waiting()
        if conn is not None:
            return conn
        if stale is not None:
            self._pool.release(stale)  # and taken again below, checked
        return self._pool.get_connection(*self._pool_args)

    def give(self, conn: Any, *, clean: bool) -> None:
        """Take back ``conn`` after a call; ``clean``: the call returned
        (its reply was read whole)."""
        try:
            if self._must_disconnect(conn, clean):
                conn.disconnect()
        finally:
            if not self._kept(conn):
                self._pool.release(conn)

    def close(self) -> None:
        """Hand every waiting connection back to the pool."""
        for conn in self._drained():
            self._pool.release(conn)


class _ALender(_Lending):
    """:class:`_Lending` for a ``redis.asyncio`` client, whose pool and
    connections are awaited (one event loop uses it: no two tasks take the
    same connection, as the list changes only between awaits)."""

    __slots__ = ()

    async def take(self) -> Any:
        conn, stale = self._waiting()
        if conn is not None:
            return conn
        if stale is not None:
            await self._pool.release(stale)
        return await self._pool.get_connection(*self._pool_args)

    async def give(self, conn: Any, *, clean: bool) -> None:
        try:
            if self._must_disconnect(conn, clean):
                await conn.disconnect()
        finally:
            if not self._kept(conn):
                await self._pool.release(conn)

    async def close(self) -> None:
        for conn in self._drained():
            await self._pool.release(conn)


class _PooledScript(_DirectScript):
    """A script of the store's own standalone client, sent over a connection
    of the client's pool (lent by a :class:`_Lender`) under the client's
    retry policy, without the generic command layer of ``execute_command``.

    Why: in redis-py 8 that layer is most of the client-side work of a call
    (callgrind, a follow-up: 345k instructions per call through it, 234k
    this way; docs/performance.md): every argument is type-tested and
    encoded in Python, and each call also passes the checks for HIMPORT's
    per-connection state, the deprecated-argument wrappers of the pool and
    the observability hooks. What a call needs of it is kept, with
    redis-py's own pieces: a connection of the pool, the client's ``Retry``
    with a connection error disconnecting the connection before the same
    packed command is sent again (which is how a retried claim finds its
    own marker), the reply parser and its errors (``NoScriptError`` reloads
    the script as before), the connection's reconnect request honoured, and
    the connection handed back.

    What is not kept: redis-py's per-command instrumentation (its own
    metrics, its debug log of failures, and wrappers patched onto
    ``execute_command`` such as OpenTelemetry's redis instrumentation) does
    not see these calls. The store reports each call itself (the
    ``on_store_call`` hook; the Prometheus and OpenTelemetry plugins time
    it). A client passed to the store keeps the public path.
    """

    __slots__ = ("_lender", "_pack")

    def __init__(self, script: Script, lender: _Lender | None = None) -> None:
        super().__init__(script)
        client: Any = script.registered_client
        self._lender = _Lender(client.connection_pool) if lender is None else lender
        self._pack: Callable[[tuple[Any, ...]], Any] | None = _hiredis_pack()

    def _send(self, command: tuple[Any, ...]) -> Any:
        """One EVALSHA, over a lent connection (see the class docstring)."""
        pack = self._pack
        # Packed before a connection is taken: a packing error leaks none.
        packed = None if pack is None else [pack(command)]
        lender = self._lender
        conn = lender.take()
        if packed is None:  # no hiredis: the connection's own packer

            def exchange() -> Any:
                conn.send_command(*command)
                return conn.read_response()

        else:

            def exchange() -> Any:
                conn.send_packed_command(packed)
                return conn.read_response()

        clean = False
        try:
            reply = conn.retry.call_with_retry(exchange, lambda _error: conn.disconnect())
            clean = True
            return reply
        finally:
            lender.give(conn, clean=clean)


class _APooledScript:
    """The async twin of :class:`_PooledScript`, for the store's own
    ``redis.asyncio`` client (one per event loop): a connection lent by the
    client's :class:`_ALender`, the command packed once, the client's async
    ``Retry`` with a connection error disconnecting before the same command
    is sent again, the connection's parser, the connection handed back. A
    call that raised, a cancellation included, disconnects its connection
    before it is lent again, so no answer is left for a later call to read
    as its own; the ledger also shields a store call from its caller's
    cancellation."""

    __slots__ = ("_lender", "_pack", "_script")

    def __init__(self, script: Any, lender: _ALender | None = None) -> None:
        self._script = script
        client: Any = script.registered_client
        self._lender = _ALender(client.connection_pool) if lender is None else lender
        self._pack = _hiredis_pack()

    @property
    def sha(self) -> str:
        return str(self._script.sha)

    def __call__(self, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        if client is not None:
            return self._script(keys=keys, args=args, client=client)
        return self._evalsha(tuple(keys or ()), tuple(args or ()))

    async def _evalsha(self, keys: tuple[Any, ...], args: tuple[Any, ...]) -> Any:
        script = self._script
        try:
            return await self._send(("EVALSHA", script.sha, len(keys), *keys, *args))
        except NoScriptError:
            owner: Any = script.registered_client
            script.sha = await owner.script_load(script.script)
            return await self._send(("EVALSHA", script.sha, len(keys), *keys, *args))

    async def _send(self, command: tuple[Any, ...]) -> Any:
        pack = self._pack
        packed = None if pack is None else [pack(command)]  # before a connection is taken
        lender = self._lender
        conn = await lender.take()
        if packed is None:  # no hiredis: the connection's own packer

            async def exchange() -> Any:
                await conn.send_command(*command)
                return await conn.read_response()

        else:

            async def exchange() -> Any:
                await conn.send_packed_command(packed)
                return await conn.read_response()

        async def fail(_error: BaseException) -> None:
            await conn.disconnect()

        clean = False
        try:
            reply = await conn.retry.call_with_retry(exchange, fail)
            clean = True
            return reply
        finally:
            await lender.give(conn, clean=clean)


def _pool_args(pool: Any) -> tuple[str, ...]:
    """What ``pool.get_connection`` is given: redis-py 5 requires a command
    name there, later releases deprecate it."""
    parameter = inspect.signature(pool.get_connection).parameters.get("command_name")
    needs_name = parameter is not None and parameter.default is inspect.Parameter.empty
    return ("EVALSHA",) if needs_name else ()


def _hiredis_pack() -> Callable[[tuple[Any, ...]], Any] | None:
    """hiredis' C packer of a command's arguments, when redis-py uses
    hiredis (installed, in a version redis-py accepts). It encodes a str as
    UTF-8, as the store's clients do (their default encoding, strict)."""
    if not getattr(redis.utils, "HIREDIS_AVAILABLE", False):
        return None
    try:
        import hiredis
    except ImportError:
        return None
    pack: Callable[[tuple[Any, ...]], Any] | None = getattr(hiredis, "pack_command", None)
    return pack


def _adirect(script: Any, *, lender: _ALender | None) -> Any:
    """An async client's ``script``: an :class:`_APooledScript` lent
    connections by ``lender`` (the store's own client), else redis-py's own."""
    if lender is not None and isinstance(script, AsyncScript):
        return _APooledScript(script, lender)
    return script


def _direct(script: Any, *, lender: _Lender | None = None) -> Any:
    """``script`` as a :class:`_PooledScript` lent connections by ``lender``
    (the store's own standalone client) or, without one, a
    :class:`_DirectScript` when it is redis-py's own (a test's stand-in
    client may hand out anything else, kept as it is)."""
    if not isinstance(script, Script):
        return script
    return _DirectScript(script) if lender is None else _PooledScript(script, lender)


async def _closer(client: Any, lender: _ALender | None) -> AsyncIterator[None]:
    """Closes ``client`` (its lender's waiting connections handed back to
    its pool first) when its event loop shuts its async generators down."""
    try:
        yield
    finally:
        with contextlib.suppress(RedisError, OSError):
            if lender is not None:
                await lender.close()
            await client.aclose()


def _driver_url(url: str) -> str:
    """redis-py spells a socket URL ``unix://``; we accept ``redis+unix://``."""
    if url.lower().startswith("redis+unix://"):
        return "unix://" + url[len("redis+unix://") :]
    return url
