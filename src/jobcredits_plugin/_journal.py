"""Named journal cursors: where one exporter has got to, kept in the store.

An exporter that kept its position in a local file would lose it with the
container, and one that kept none would re-send everything; a cursor stored
next to the journal survives both, and is what lets
:meth:`~jobcredits_plugin.Ledger.trim_journal` know which entries nobody has
read yet. Several exporters (a billing feed, a warehouse load) each keep
their own cursor over the same journal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from ._records import JournalEntry
from ._validation import check_journal_limit, check_position

if TYPE_CHECKING:
    from ._ledger import Ledger

__all__ = ["JournalCursor"]


def _seq(to: int | JournalEntry) -> int:
    return to.seq if isinstance(to, JournalEntry) else check_position("to", to)


@attrs.frozen(slots=True)
class JournalCursor:
    """A named reading position in the journal, stored in the ledger's store.

    Get one with :meth:`Ledger.cursor <jobcredits_plugin.Ledger.cursor>`. The
    position is the ``seq`` of the last entry the exporter has *finished*
    with: advance it only after the entry is safely delivered, so that a crash
    re-sends (harmless, with the entry's idempotency key) rather than skips.
    Nothing is cached in this object: every call reads or writes the store.
    """

    ledger: Ledger
    name: str

    def position(self) -> int:
        """The stored position (0 before anything was read)."""
        return self.ledger._cursor_position(self.name)

    def read(self, limit: int = 100) -> list[JournalEntry]:
        """The next entries after the stored position, oldest first. Reading
        does not move the cursor: call :meth:`advance` once they are delivered."""
        limit = check_journal_limit(limit)
        return self.ledger.journal(after=self.position(), limit=limit)

    def advance(self, to: int | JournalEntry) -> int:
        """Move the cursor to ``to`` (a seq, or the last entry delivered).
        A cursor never moves back this way, so two exporters sharing a name
        cannot undo each other's progress. Returns the stored position."""
        return self.ledger._set_cursor(self.name, _seq(to), force=False)

    def rewind(self, to: int) -> int:
        """Move the cursor to ``to`` even if that is backwards, to replay
        entries (those already trimmed are gone). Returns the new position."""
        return self.ledger._set_cursor(self.name, _seq(to), force=True)

    def delete(self) -> bool:
        """Forget the cursor, so it no longer holds entries back from trimming."""
        return self.ledger._delete_cursor(self.name)

    async def aposition(self) -> int:
        """Async twin of :meth:`position`."""
        return await self.ledger._acursor_position(self.name)

    async def aread(self, limit: int = 100) -> list[JournalEntry]:
        """Async twin of :meth:`read`."""
        limit = check_journal_limit(limit)
        return await self.ledger.ajournal(after=await self.aposition(), limit=limit)

    async def aadvance(self, to: int | JournalEntry) -> int:
        """Async twin of :meth:`advance`."""
        return await self.ledger._aset_cursor(self.name, _seq(to), force=False)

    async def arewind(self, to: int) -> int:
        """Async twin of :meth:`rewind`."""
        return await self.ledger._aset_cursor(self.name, _seq(to), force=True)

    async def adelete(self) -> bool:
        """Async twin of :meth:`delete`."""
        return await self.ledger._adelete_cursor(self.name)
