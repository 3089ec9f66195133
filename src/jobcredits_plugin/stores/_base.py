"""What a store class builds on: :class:`BaseStore`, which writes its async twins.

A store written against blocking I/O (a file, a driver without async support)
or none at all (memory) implements the sync operations of
:class:`~jobcredits_plugin.stores.Store` and gets each async twin
(``aclaim`` for ``claim``, ...) from :class:`BaseStore`, generated when the
class is created: the operation run in a worker thread, so the event loop never
waits on it, or called inline when the store says its operations never block.
A store with a native async driver writes its twins itself, and those are kept.

The rules the stores apply live in :mod:`._rules`, the journal's rows in
:mod:`._rows`, the protocols in :mod:`._protocol`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._validation import configuring
from ._protocol import JOURNAL_OPERATIONS, STORE_OPERATIONS, JournalStore, Store
from ._rules import ClaimRequest, ClaimResult, Event, Key

if TYPE_CHECKING:
    from .._records import JobRecord, JournalEntry

__all__ = ["BaseStore"]


def _configuring(fn: Callable[..., Any], what: str) -> Callable[..., Any]:
    """``fn``, raising the InvalidArgument of a failed check as ConfigurationError."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with configuring(what):
            return fn(*args, **kwargs)

    wrapper._configuring = True  # type: ignore[attr-defined]
    return wrapper


class _Source:
    """A default value shown in generated source by the name it is bound to."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def _async_twin(owner: type, name: str, like: Callable[..., Any], inline: bool) -> Any:
    """``a<name>`` for the sync operation ``<name>``, with the parameters of
    ``like`` (the operation as a store or the protocol declares it).

    The twin calls ``self.<name>(...)``, looked up on each call, so a subclass
    or a test that replaces the operation replaces what its twin runs too: in
    a worker thread through :func:`asyncio.to_thread`, or inline. It is
    generated from source, as attrs generates ``__init__``, so that it takes
    exactly the operation's parameters: a ``*args, **kwargs`` forwarder would
    cost each call of an inline twin (the memory store's, on every async
    charge) more than the twin's own work.
    """
    params = list(inspect.signature(like).parameters.values())
    namespace: dict[str, Any] = {"_to_thread": asyncio.to_thread}
    shown, passed = [], []
    for param in params[1:]:  # params[0] is self
        if param.default is not param.empty:
            namespace[f"_default_{param.name}"] = param.default
            param = param.replace(default=_Source(f"_default_{param.name}"))
        shown.append(param.replace(annotation=param.empty))
        if param.kind is param.VAR_POSITIONAL:
            passed.append(f"*{param.name}")
        elif param.kind is param.VAR_KEYWORD:
            passed.append(f"**{param.name}")
        elif param.kind is param.KEYWORD_ONLY:
            passed.append(f"{param.name}={param.name}")
        else:
            passed.append(param.name)
    signature = inspect.Signature([params[0].replace(annotation=params[0].empty), *shown])
    call = ", ".join([f"self.{name}", *passed])
    body = f"self.{name}({', '.join(passed)})" if inline else f"await _to_thread({call})"
    source = f"async def a{name}{signature}:\n    return {body}\n"
    # The source is built from the operation's own parameter names, nothing else.
    exec(source, namespace)  # noqa: S102
    twin = namespace[f"a{name}"]
    twin.__module__ = owner.__module__
    twin.__qualname__ = f"{owner.__qualname__}.a{name}"
    how = "inline (it never blocks)" if inline else "in a worker thread"
    twin.__doc__ = f"Async twin of :meth:`{name}`: runs it {how}."
    twin._twin_mode = "inline" if inline else "thread"
    return twin


#: Each store operation, and the protocol method that declares it.
_DECLARED = {
    name: getattr(protocol, name)
    for protocol, names in ((Store, STORE_OPERATIONS), (JournalStore, JOURNAL_OPERATIONS))
    for name in names
}


def _give_async_twins(cls: type, inline: bool) -> None:
    """Give ``cls`` the async twin of each store operation it has, in the way
    it asks for (``inline``), unless the class (or a base) wrote that twin
    itself; a twin it inherits in that way already is kept."""
    mode = "inline" if inline else "thread"
    for name in _DECLARED:
        current = getattr(cls, f"a{name}", None)
        generated = getattr(current, "_twin_mode", None)
        if current is not None and generated is None:
            continue  # the store's own, e.g. on a native async driver
        sync = getattr(cls, name, None)
        if not callable(sync):
            if current is not None:
                # No such operation, or blocked (set to None, as a store that
                # keeps no journal may do): no twin either.
                setattr(cls, f"a{name}", None)
        elif generated != mode:
            setattr(cls, f"a{name}", _async_twin(cls, name, sync, inline))


class BaseStore:
    """A base for store classes: writes the async twins, and reports a bad
    option to a store's constructor as the app's
    :class:`~jobcredits_plugin.ConfigurationError`.

    A subclass implements the sync operations of
    :class:`~jobcredits_plugin.stores.Store` (and those of
    :class:`~jobcredits_plugin.stores.JournalStore` if it keeps a journal).
    For each one it does not give an async twin of its own, one is generated:
    the operation run in a worker thread, or called inline when the class sets
    ``cancel_safe = True`` (its operations never block, so they have nothing
    to wait for in a thread, and nothing a cancellation could interrupt).
    """

    #: The URL scheme(s) of this store, for error messages and ``from_url``.
    schemes: Sequence[str] = ()
    #: True when the operations never block (no I/O, only short locks): the
    #: generated async twins then call them inline, never suspending, so a
    #: cancelled caller cannot leave a committed change behind unreported and
    #: the ledger awaits them directly instead of shielding them in a task.
    cancel_safe: bool = False
    #: Whether the store writes a journal entry with every change (see
    #: :class:`~jobcredits_plugin.JournalEntry`); stores take it as ``journal=``.
    journal: bool = True
    #: Whether reuses get journal entries too (off by default: one job can
    #: have many, and no balance moves).
    journal_reuses: bool = False
    #: Seconds a journal entry is kept by
    #: :meth:`~jobcredits_plugin.Ledger.trim_journal` when it is called with no
    #: bound (``jobcredits prune`` does), unless a cursor has not read it yet.
    journal_max_age: float | None = 7 * 86400.0
    #: Whether the store ignores the ``now`` it is passed and decides by its
    #: server's clock, read inside each atomic operation (the shared stores'
    #: ``server_clock=True``). Stores on the ledger's host have one clock
    #: only, the ledger's, and keep this False.
    server_clock: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Generate the subclass's async twins, and make its constructor and
        ``from_url`` report a bad option as the app's
        :class:`~jobcredits_plugin.ConfigurationError`, not as the 400 that
        describes a client's input: a store is only ever built by the app's
        own setup code. The stores reuse the input checks
        (:func:`~jobcredits_plugin._validation.configuring` does the rest)."""
        super().__init_subclass__(**kwargs)
        _give_async_twins(cls, inline=cls.cancel_safe)
        init = cls.__dict__.get("__init__")
        if callable(init) and not getattr(init, "_configuring", False):
            setattr(cls, "__init__", _configuring(init, cls.__name__))  # noqa: B010
        from_url = cls.__dict__.get("from_url")
        if isinstance(from_url, classmethod) and not getattr(
            from_url.__func__, "_configuring", False
        ):
            setattr(  # noqa: B010
                cls, "from_url", classmethod(_configuring(from_url.__func__, cls.__name__))
            )

    def close(self) -> None:
        """Release connections; the default has nothing to release."""

    if TYPE_CHECKING:
        # What the generated twins look like to a type checker (they exist
        # for each operation a subclass implements; see the class docstring).

        async def aclaim(self, req: ClaimRequest) -> ClaimResult: ...
        async def aconfirm(
            self, key: Key, charge_id: str | None, now: float
        ) -> JobRecord | None: ...
        async def arefund(self, key: Key, charge_id: str | None, now: float) -> Event | None: ...
        async def alookup(self, key: Key, now: float) -> JobRecord | None: ...
        async def aprune(self, now: float, limit: int | None = None) -> list[Event]: ...
        async def asnapshot(self, now: float) -> list[JobRecord]: ...
        async def agrant(
            self, account: str, amount: int, now: float = 0.0, grant_id: str = ""
        ) -> int: ...
        async def abalance(self, account: str) -> int: ...
        async def aclose(self) -> None: ...
        async def aread_journal(self, after: int, limit: int) -> list[JournalEntry]: ...
        async def atrim_journal(self, through: int | None, cutoff: float | None) -> int: ...
        async def aget_cursor(self, name: str) -> int | None: ...
        async def aset_cursor(self, name: str, position: int, force: bool = False) -> int: ...
        async def adelete_cursor(self, name: str) -> bool: ...
        async def acursors(self) -> dict[str, int]: ...


# BaseStore's own twins, with the parameters the protocols declare, run each
# operation in a worker thread: what a subclass inherits unless it sets
# cancel_safe, and what a store with native async twins may fall back on
# (``super().aclaim(req)``).
for _name, _declared in _DECLARED.items():
    setattr(BaseStore, f"a{_name}", _async_twin(BaseStore, _name, _declared, inline=False))
