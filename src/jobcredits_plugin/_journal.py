"""The journal as the ledger offers it: reading, trimming and named cursors.

An exporter that kept its position in a local file would lose it with the
container, and one that kept none would re-send everything; a cursor stored
next to the journal survives both, and is what lets
:meth:`~jobcredits_plugin.Ledger.trim_journal` know which entries nobody has
read yet. Several exporters (a billing feed, a warehouse load) each keep
their own cursor over the same journal.

:class:`LedgerJournal` holds the ledger's journal methods (``Ledger`` inherits
them); :class:`JournalCursor` is a named cursor built on those public methods
only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs

from ._errors import InvalidArgument
from ._records import JournalEntry
from ._validation import (
    check_cursor_name,
    check_flag,
    check_journal_limit,
    check_position,
    check_positive_seconds,
)

if TYPE_CHECKING:
    from ._ledger import Ledger
    from ._store_calls import StoreCalls
    from .stores import JournalStore, Store

__all__ = ["JournalCursor", "LedgerJournal"]

T = TypeVar("T")


class LedgerJournal:
    """The journal methods of :class:`~jobcredits_plugin.Ledger`.

    They work on a store that is a
    :class:`~jobcredits_plugin.stores.JournalStore`; on any other one they
    raise :class:`~jobcredits_plugin.InvalidArgument` ("keeps no journal").
    """

    # Set by Ledger.__init__.
    _store: Store
    _journal_store: JournalStore | None
    _calls: StoreCalls
    now: Callable[[], float]

    def _journaling(self) -> JournalStore:
        if self._journal_store is None:
            raise InvalidArgument(f"store {self._store!r} keeps no journal")
        return self._journal_store

    def _journal_call(self, op: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return self._calls.call(op, fn, *args)
        except NotImplementedError as exc:  # a store of one's own that says so
            raise InvalidArgument(f"store {self._store!r} keeps no journal") from exc

    async def _ajournal_call(self, op: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return await self._calls.acall(op, fn, *args)
        except NotImplementedError as exc:
            raise InvalidArgument(f"store {self._store!r} keeps no journal") from exc

    def journal(self, *, after: int = 0, limit: int = 100) -> list[JournalEntry]:
        """Journal entries with ``seq`` above ``after``, oldest first, at most
        ``limit`` (1 to 10,000).

        Every committed charge, refund, expiry and grant (and reuse, when the
        store journals them) has exactly one entry, written in the same atomic
        step as the change, so a reader that keeps the last ``seq`` it handled
        and asks again from there sees every entry exactly once, in order:
        no entry can turn up later below a ``seq`` already returned. Keep the
        position in a named :meth:`cursor` so trimming never drops what the
        reader has not seen.
        """
        after = check_position("after", after)
        limit = check_journal_limit(limit)
        return self._journal_call("journal", self._journaling().read_journal, after, limit)

    def _trim_bounds(
        self, store: JournalStore, before: Any, max_age: Any
    ) -> tuple[int | None, float | None]:
        through = None if before is None else check_position("before", before)
        if max_age is None and through is None:
            max_age = store.journal_max_age
            if max_age is None:
                return None, None
        cutoff = None
        if max_age is not None:
            cutoff = self.now() - check_positive_seconds("max_age", max_age)
        return through, cutoff

    def trim_journal(self, before: int | None = None, *, max_age: float | None = None) -> int:
        """Delete journal entries that are done with; returns how many went.

        ``before`` deletes the entries up to and including that seq (the
        position of a reader that has handled them); ``max_age`` those older
        than that many seconds; both together, those that are both. With
        neither, the store's ``journal_max_age`` applies (``jobcredits prune``
        calls this). Whatever the bounds, an entry that a stored cursor has not
        read yet is never deleted.
        """
        store = self._journaling()
        through, cutoff = self._trim_bounds(store, before, max_age)
        if through is None and cutoff is None:
            return 0
        return self._journal_call("trim_journal", store.trim_journal, through, cutoff)

    def cursor(self, name: str) -> JournalCursor:
        """The named journal cursor, created at position 0 (the start of what
        the journal still holds) if the store has none by that name. From then
        on it holds back trimming of every entry it has not read."""
        name = check_cursor_name(name)
        self._journal_call("cursor", self._journaling().set_cursor, name, 0, False)
        return JournalCursor(cast("Ledger", self), name)

    def cursors(self) -> dict[str, int]:
        """Every stored cursor and its position."""
        return self._journal_call("cursors", self._journaling().cursors)

    def cursor_exists(self, name: str) -> bool:
        """Whether the store has a cursor by that name (without creating it,
        as :meth:`cursor` would)."""
        name = check_cursor_name(name)
        return self._journal_call("cursor", self._journaling().get_cursor, name) is not None

    def cursor_position(self, name: str) -> int:
        """The named cursor's stored position: the ``seq`` of the last entry
        its reader finished with (0 before anything was read).

        :raises InvalidArgument: there is no cursor by that name (it was
            deleted, or never made: :meth:`cursor` makes one).
        """
        name = check_cursor_name(name)
        position = self._journal_call("cursor", self._journaling().get_cursor, name)
        return _existing(name, position)

    def move_cursor(self, name: str, position: int, *, force: bool = False) -> int:
        """Store the named cursor's position (creating the cursor if needed)
        and return the stored position. Without ``force`` a cursor only moves
        forward (a lower ``position`` leaves it where it is), so two exporters
        sharing a name cannot undo each other's progress; ``force`` moves it
        back too, to replay entries."""
        name = check_cursor_name(name)
        position = check_position("position", position)
        force = check_flag("force", force)
        store = self._journaling()
        return int(self._journal_call("cursor", store.set_cursor, name, position, force))

    def delete_cursor(self, name: str) -> bool:
        """Forget a stored cursor, so it no longer holds entries back from
        trimming (a retired exporter's). True if it existed."""
        name = check_cursor_name(name)
        return bool(self._journal_call("cursor", self._journaling().delete_cursor, name))

    # -- async twins -------------------------------------------------------------------

    async def ajournal(self, *, after: int = 0, limit: int = 100) -> list[JournalEntry]:
        """Async twin of :meth:`journal`."""
        after = check_position("after", after)
        limit = check_journal_limit(limit)
        return await self._ajournal_call("journal", self._journaling().aread_journal, after, limit)

    async def atrim_journal(
        self, before: int | None = None, *, max_age: float | None = None
    ) -> int:
        """Async twin of :meth:`trim_journal`."""
        store = self._journaling()
        through, cutoff = self._trim_bounds(store, before, max_age)
        if through is None and cutoff is None:
            return 0
        return await self._ajournal_call("trim_journal", store.atrim_journal, through, cutoff)

    async def acursor(self, name: str) -> JournalCursor:
        """Async twin of :meth:`cursor`."""
        name = check_cursor_name(name)
        await self._ajournal_call("cursor", self._journaling().aset_cursor, name, 0, False)
        return JournalCursor(cast("Ledger", self), name)

    async def acursors(self) -> dict[str, int]:
        """Async twin of :meth:`cursors`."""
        return await self._ajournal_call("cursors", self._journaling().acursors)

    async def acursor_position(self, name: str) -> int:
        """Async twin of :meth:`cursor_position`."""
        name = check_cursor_name(name)
        position = await self._ajournal_call("cursor", self._journaling().aget_cursor, name)
        return _existing(name, position)

    async def amove_cursor(self, name: str, position: int, *, force: bool = False) -> int:
        """Async twin of :meth:`move_cursor`."""
        name = check_cursor_name(name)
        position = check_position("position", position)
        force = check_flag("force", force)
        store = self._journaling()
        return int(await self._ajournal_call("cursor", store.aset_cursor, name, position, force))

    async def adelete_cursor(self, name: str) -> bool:
        """Async twin of :meth:`delete_cursor`."""
        name = check_cursor_name(name)
        return bool(await self._ajournal_call("cursor", self._journaling().adelete_cursor, name))


def _existing(name: str, position: int | None) -> int:
    if position is None:
        raise InvalidArgument(f"journal cursor {name!r} does not exist (it was deleted)")
    return int(position)


def _seq(to: int | JournalEntry) -> int:
    return to.seq if isinstance(to, JournalEntry) else check_position("to", to)


@attrs.frozen(slots=True)
class JournalCursor:
    """A named reading position in the journal, stored in the ledger's store.

    Get one with :meth:`Ledger.cursor <jobcredits_plugin.Ledger.cursor>`. The
    position is the ``seq`` of the last entry the exporter has *finished*
    with: advance it only after the entry is safely delivered, so that a crash
    re-sends (harmless, with the entry's idempotency key) rather than skips.
    Nothing is cached in this object: every call reads or writes the store,
    through the ledger's public cursor methods.
    """

    ledger: Ledger
    name: str

    def position(self) -> int:
        """The stored position (0 before anything was read)."""
        return self.ledger.cursor_position(self.name)

    def read(self, limit: int = 100) -> list[JournalEntry]:
        """The next entries after the stored position, oldest first. Reading
        does not move the cursor: call :meth:`advance` once they are delivered."""
        limit = check_journal_limit(limit)
        return self.ledger.journal(after=self.position(), limit=limit)

    def advance(self, to: int | JournalEntry) -> int:
        """Move the cursor to ``to`` (a seq, or the last entry delivered).
        A cursor never moves back this way, so two exporters sharing a name
        cannot undo each other's progress. Returns the stored position."""
        return self.ledger.move_cursor(self.name, _seq(to))

    def rewind(self, to: int) -> int:
        """Move the cursor to ``to`` even if that is backwards, to replay
        entries (those already trimmed are gone). Returns the new position."""
        return self.ledger.move_cursor(self.name, _seq(to), force=True)

    def delete(self) -> bool:
        """Forget the cursor, so it no longer holds entries back from trimming."""
        return self.ledger.delete_cursor(self.name)

    async def aposition(self) -> int:
        """Async twin of :meth:`position`."""
        return await self.ledger.acursor_position(self.name)

    async def aread(self, limit: int = 100) -> list[JournalEntry]:
        """Async twin of :meth:`read`."""
        limit = check_journal_limit(limit)
        return await self.ledger.ajournal(after=await self.aposition(), limit=limit)

    async def aadvance(self, to: int | JournalEntry) -> int:
        """Async twin of :meth:`advance`."""
        return await self.ledger.amove_cursor(self.name, _seq(to))

    async def arewind(self, to: int) -> int:
        """Async twin of :meth:`rewind`."""
        return await self.ledger.amove_cursor(self.name, _seq(to), force=True)

    async def adelete(self) -> bool:
        """Async twin of :meth:`delete`."""
        return await self.ledger.adelete_cursor(self.name)
