"""What the operator commands print: tables, times, strict JSON and reports.

One module for every surface of the commands (``jobcredits``, ``flask
jobcredits``, ``manage.py jobcredits``, the demo), so that a figure reads the
same wherever an operator asks for it. Pure functions of records and
numbers, except :func:`prune_lines` and :func:`balance_lines`, which ask the
ledger for the figures they report.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from typing import Any

import attrs

from ._errors import InvalidArgument
from ._ledger import Ledger
from ._records import JobRecord

__all__ = [
    "balance_lines",
    "dumps",
    "iso",
    "prune_lines",
    "snapshot_lines",
    "stats_lines",
    "stats_of",
    "table",
]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], left: int = 1) -> list[str]:
    """Rows as aligned text columns: the first ``left`` columns (names) to the
    left, the rest (numbers) to the right, as people read figures."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return lines


def iso(ts: float) -> str:
    """Seconds since the epoch as ISO-8601 UTC: unambiguous whatever the
    operator's time zone, and what log search tools parse.

    A time no calendar date can show (past the year 9999: a store written by
    a clock that counted milliseconds, a ttl of 1e12 seconds; or not a finite
    number) is printed as the number of seconds it holds, so that the
    operator sees the odd record instead of a crash.
    """
    try:
        if math.isfinite(ts):
            return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):  # out of the datetime range
        pass
    return _seconds(ts)


def _seconds(ts: float) -> str:
    """A number of seconds as plain digits (no exponent), to the millisecond."""
    if not math.isfinite(ts):
        return str(ts)
    if float(ts).is_integer():
        return str(int(ts))
    return f"{ts:.3f}".rstrip("0").rstrip(".")


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, infinity) replaced by None,
    in nested dicts and lists: JSON has no such numbers, and a reader (jq, a
    billing import) rejects Python's ``NaN``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """Strict JSON (RFC 8259) for everything the commands print: NaN and
    infinity become null rather than the invalid ``NaN`` tokens."""
    return json.dumps(_finite(value), allow_nan=False, **kwargs)


# -- snapshot and stats -------------------------------------------------------------------


def _snapshot_row(r: JobRecord) -> tuple[object, ...]:
    charged, expires = iso(r.charged_at), iso(r.expires_at)
    return (r.account, r.scope, r.job_id, r.state, r.cost, r.uses, charged, expires)


def snapshot_lines(records: Sequence[JobRecord], *, as_json: bool, limit: int) -> list[str]:
    """What ``snapshot`` prints: all records as JSON, or a table of the first
    ``limit`` with a line saying how many more there are."""
    if as_json:
        return [dumps([attrs.asdict(r) for r in records], indent=2)]
    if not records:
        return ["no live jobs"]
    shown = records[:limit]
    headers = ("account", "scope", "job_id", "state", "cost", "uses", "charged_at", "expires_at")
    rows = [_snapshot_row(r) for r in shown]
    lines = table(headers, rows, left=4) if shown else []
    if len(records) > len(shown):
        lines.append(f"… and {len(records) - len(shown)} more")
    return lines


def stats_of(records: Sequence[JobRecord], now: float) -> dict[str, Any]:
    """Counts over the live jobs, for ``stats``: by state, by scope, the
    credits they hold (``pending`` ones can still be refunded) and the oldest
    one (a pending job that old is a handler that never finished)."""
    by_state = {"pending": 0, "charged": 0}
    by_scope: dict[str, dict[str, int]] = {}
    held = {"pending": 0, "charged": 0}
    for r in records:
        by_state[r.state] = by_state.get(r.state, 0) + 1
        held[r.state] = held.get(r.state, 0) + r.cost
        row = by_scope.setdefault(r.scope, {"pending": 0, "charged": 0, "credits": 0})
        row[r.state] = row.get(r.state, 0) + 1
        row["credits"] += r.cost
    oldest = min(records, key=lambda r: r.charged_at, default=None)
    return {
        "live_jobs": len(records),
        "by_state": by_state,
        "by_scope": dict(sorted(by_scope.items())),
        "credits_held": sum(held.values()),
        "credits_refundable": held.get("pending", 0),
        "oldest": None
        if oldest is None
        else {
            "account": oldest.account,
            "scope": oldest.scope,
            "job_id": oldest.job_id,
            "state": oldest.state,
            "charged_at": oldest.charged_at,
            "age_seconds": round(max(0.0, now - oldest.charged_at), 3),
        },
    }


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def stats_lines(stats: dict[str, Any], *, as_json: bool) -> list[str]:
    """What ``stats`` prints: a short report, or the JSON object."""
    if as_json:
        return [dumps(stats, indent=2)]
    states = stats["by_state"]
    lines = [
        f"live jobs: {stats['live_jobs']} (pending {states['pending']}, "
        f"charged {states['charged']})",
        f"credits held: {stats['credits_held']} "
        f"({stats['credits_refundable']} refundable while pending)",
    ]
    oldest = stats["oldest"]
    if oldest is not None:
        lines.append(
            f"oldest job: {oldest['job_id']} of {oldest['account']} in {oldest['scope']} "
            f"({oldest['state']}, charged {iso(oldest['charged_at'])}, "
            f"{_age(oldest['age_seconds'])} ago)"
        )
    if stats["by_scope"]:
        lines.append("")
        rows = [
            (scope, row["pending"], row["charged"], row["credits"])
            for scope, row in stats["by_scope"].items()
        ]
        lines += table(("scope", "pending", "charged", "credits"), rows)
    return lines


# -- prune and balance ----------------------------------------------------------------------


def prune_lines(ledger: Ledger) -> list[str]:
    """Prune the ledger and trim its journal to the store's ``journal_max_age``
    (never past a cursor); the report ``prune`` prints."""
    removed = ledger.prune()
    refunded = sum(1 for r in removed if r.state == "refunded")
    lines = [f"expired {len(removed) - refunded}, refunded {refunded}"]
    if getattr(ledger.store, "journal", False):
        try:
            trimmed = ledger.trim_journal()
        except InvalidArgument:  # a store of your own that keeps no journal
            trimmed = 0
        if trimmed:
            lines.append(f"trimmed {trimmed} journal entries")
    return lines


def balance_lines(ledger: Ledger, account: str, setting: str) -> tuple[str, str | None]:
    """The balance ``balance`` prints, and a note for stderr when the ledger's
    balances are off (``setting`` names the switch).

    Grants are stored even while balances are off (they are loaded before
    the switch is turned on), so the stored figure is shown all the same,
    read through a ledger with balances on over the same store; the note
    says that nothing enforces it."""
    if ledger.balances:
        return str(ledger.balance(account)), None
    reader = Ledger(
        ledger.store, ttl=ledger.ttl, lease=ledger.lease, balances=True, clock=ledger.clock
    )
    note = (
        f"note: balances are off ({setting}); this figure is stored, not enforced: "
        "calls are not debited"
    )
    return str(reader.balance(account)), note
