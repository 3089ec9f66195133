"""The journal of a Redis Cluster store: slot streams merged into one.

A script on a cluster may only touch keys of one slot, so a change's journal
entry goes to the stream of its account's slot (``P:{S}:journal``), in the
same atomic step as the change; readers merge those slot streams into the
one numbered journal (``P:{journal}``) with ``lua/merge.lua``. The seq, the
one public position, is given once, by whichever reader merges the entry
first, and every reader sees the same order. On a standalone server the
journal is one stream written directly and nothing here runs.
"""

from __future__ import annotations

import heapq
from typing import Any

from ..._records import JournalEntry
from ._clients import Clients
from ._replies import entries, entry_seq, fields, s
from ._wire import Wire

__all__ = ["ClusterJournal"]

#: Entries one merge pass fetches about.
_MERGE_BATCH = 1_000

#: Merge passes a trim runs at most before it trims.
_MERGE_PASSES = 1_000


class ClusterJournal(Clients, Wire):
    """Registers the slot streams a store writes to, and merges them into the
    journal readers read (:meth:`_journal_at`, called by the constructor of
    :class:`.RedisStore`, sets these attributes)."""

    #: The set of every slot stream written to, and each one's merge mark
    #: (the last slot seq merged); both in the ``{journal}`` slot.
    _streams_key: str
    _marks_key: str
    #: The slot streams this instance has registered in _streams_key.
    _registered: set[str]
    #: What this instance knows of the slot streams (see _merge_pass): the
    #: registered ones, and the last slot seq merged or read from each.
    _known_streams: list[str]
    _marks: dict[str, int]

    def _journal_at(self, prefix: str, cluster: bool) -> None:
        """The journal's keys, and what this instance knows of a cluster's
        slot streams (none yet)."""
        # The journal stream readers read, and its cursors hash. On a cluster
        # both share the ``{journal}`` tag (one slot), with the set of slot
        # streams written to and each one's merge mark (see lua/merge.lua).
        if cluster:
            self.journal_key = f"{prefix}:{{journal}}"
            self.cursors_key = f"{prefix}:{{journal}}:cursors"
        else:
            self.journal_key = f"{prefix}:journal"
            self.cursors_key = f"{prefix}:journal:cursors"
        self._streams_key = f"{prefix}:{{journal}}:streams"
        self._marks_key = f"{prefix}:{{journal}}:marks"
        self._registered = set()
        self._known_streams = []
        self._marks = {}

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
        journal (see lua/merge.lua); returns how many this pass read
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
        full = [stream for stream in streams if len(fetched[stream]) == share]
        left = budget - sum(len(run) for run in fetched.values())
        if full and left > 0:
            more = max(1, left // len(full))
            read = {stream: int(fetched[stream][-1][1]) for stream in full}
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
        marks = {s(reply[i]): int(s(reply[i + 1])) for i in range(1, len(reply), 2)}
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
            self._known_streams = sorted({s(m) for m in members})
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
            for entry_id, raw in reply:
                f = fields(raw)
                run.append([stream, entry_seq(entry_id), *(f.get(k, "") for k in "kacxdbt")])
            out.append(run)
        return out

    def _merge_backlog(self) -> None:
        """Merge what waits in the slot streams (trimming merges first, so a
        journal nobody reads is still bounded by its age), a bounded number
        of passes, so a trim under a constant stream of writes still ends."""
        for _ in range(_MERGE_PASSES):
            if self._merge_pass(_MERGE_BATCH)[0] < _MERGE_BATCH:
                return

    def _xrange(self, after: int, count: int) -> list[JournalEntry]:
        """Up to ``count`` entries of the journal readers read, past seq ``after``."""
        low, high = self._xrange_args(after)
        return entries(self._run(self._client.xrange, self.journal_key, low, high, count=count))

    def _read_merging(self, got: list[JournalEntry], after: int, limit: int) -> list[JournalEntry]:
        """``got`` (what the merged journal held past ``after``) completed up
        to ``limit`` entries with what the slot streams hold past the merged
        journal's end, numbered now, by this reader (or by another one at the
        same time)."""
        while len(got) < limit:
            read, _appended = self._merge_pass(max(limit - len(got), _MERGE_BATCH))
            got.extend(self._xrange(got[-1].seq if got else after, limit - len(got)))
            if read == 0:  # nothing waits in the slot streams
                break
        return got
