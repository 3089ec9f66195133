"""What the Redis store's scripts and commands answer, as records, journal
entries and numbers (the reply shapes are documented in each ``lua/*.lua``)."""

from __future__ import annotations

import json
import json.scanner
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from ..._records import JobRecord, JobState, JournalEntry, JournalKind
from .._rules import balance_cap_error, grant_conflict_error

__all__ = [
    "cursor_map",
    "decode",
    "entries",
    "entry_seq",
    "field_map",
    "fields",
    "grant_result",
    "record",
    "s",
]


def s(value: Any) -> str:
    """A reply element as str, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else str(value)


def fields(raw: dict[Any, Any]) -> dict[str, str]:
    """A hash or stream entry's fields, as str."""
    return {s(k): s(v) for k, v in raw.items()}


def entry_seq(entry_id: Any) -> str:
    """The seq of a stream entry whose id is ``0-<seq>``."""
    return s(entry_id).rpartition("-")[2]


def field_map(raw: Sequence[Any] | dict[Any, Any]) -> dict[str, str]:
    """A record's fields from a script's flat HGETALL list (not empty) or the
    client's dict."""
    if isinstance(raw, dict):
        return fields(raw)
    # A client decodes every bulk string of a reply or none of them, so
    # the first element tells whether there is anything to decode.
    items = iter(raw if isinstance(raw[0], str) else [s(v) for v in raw])
    return dict(zip(items, items, strict=False))


#: The C scanner json.loads runs underneath its two Python frames (see _x).
_scan_once: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(
    json.JSONDecoder()  # type: ignore[arg-type]  # typeshed's stub names the wrong type
)


def _x(text: str) -> Any:
    """The x field's JSON: parsed by json.loads's own C scanner when it is
    the one value the field holds (it is, as the scripts store what Python
    packed), else by json.loads itself, which then raises as it always did."""
    try:
        value, end = _scan_once(text, 0)
    except StopIteration:
        end = -1
    return value if end == len(text) else json.loads(text)


def record(f: dict[str, Any], state: JobState | None = None, more_uses: int = 0) -> JobRecord:
    """The record of the fields ``f``: in its stored state, or in ``state``
    with ``more_uses`` calls more served, for the Python side's decision of
    a reply (a confirm's or a reuse's record without building the stored one
    first). Positional, in JobRecord's field order: this runs on every call."""
    scope, job_id, tier, backend, cost, charged_at = _x(f["x"])
    return JobRecord(
        f["a"],
        scope,
        job_id,
        f["c"],
        f["st"] if state is None else state,
        cost,
        tier,
        backend,
        charged_at,
        float(f["ea"]),
        int(f["u"]) + more_uses,
        float(f["lu"]),
        int(f["d"]),
    )


def decode(raw: Sequence[Any] | dict[Any, Any] | None) -> JobRecord | None:
    """A record from a script's flat HGETALL list or the client's dict."""
    if not raw:
        return None
    return record(field_map(raw))


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
