"""What the Redis store's scripts and commands answer, as records, journal
entries and numbers (the reply shapes are documented in each ``lua/*.lua``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, cast

from ..._records import JobRecord, JobState, JournalEntry, JournalKind
from .._rules import balance_cap_error, grant_conflict_error

__all__ = ["cursor_map", "decode", "entries", "entry_seq", "fields", "grant_result", "s"]


def s(value: Any) -> str:
    """A reply element as str, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else str(value)


def fields(raw: dict[Any, Any]) -> dict[str, str]:
    """A hash or stream entry's fields, as str."""
    return {s(k): s(v) for k, v in raw.items()}


def entry_seq(entry_id: Any) -> str:
    """The seq of a stream entry whose id is ``0-<seq>``."""
    return s(entry_id).rpartition("-")[2]


def decode(raw: Sequence[Any] | dict[Any, Any] | None) -> JobRecord | None:
    """A record from a script's flat HGETALL list or the client's dict."""
    if not raw:
        return None
    if isinstance(raw, dict):
        f = fields(raw)
    else:
        # A client decodes every bulk string of a reply or none of them, so
        # the first element tells whether there is anything to decode.
        items = iter(raw if isinstance(raw[0], str) else [s(v) for v in raw])
        f = dict(zip(items, items, strict=False))
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


def entries(reply: Iterable[Any]) -> list[JournalEntry]:
    """Journal entries from an XRANGE answer: ``[(id, {field: value}), ...]``."""
    out = []
    for entry_id, raw in reply:
        f = fields(raw)
        scope, job_id, tier, backend, cost, _charged_at = json.loads(f["x"])
        out.append(
            JournalEntry(
                seq=int(entry_seq(entry_id)),
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


def grant_result(reply: Sequence[Any], amount: int) -> int:
    """The balance the grant script answered, or the 400 for a grant it
    refused (having written nothing): the balance would pass the cap, or the
    grant id was used for another amount."""
    status, balance = s(reply[0]), int(s(reply[1]))
    if status == "cap":
        raise balance_cap_error(balance, amount)
    if status == "conflict":
        raise grant_conflict_error(balance, amount)
    return balance


def cursor_map(raw: dict[Any, Any] | None) -> dict[str, int]:
    """The cursors hash as names and positions."""
    return {s(k): int(s(v)) for k, v in (raw or {}).items()}
