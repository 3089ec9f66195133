"""Draw the life of a job: docs/_static/job-states.svg.

The state machine is not drawn by hand: it is what the rules every store
applies (the ``plan_*`` functions of :mod:`jobcredits_plugin.stores`) do
when asked. The script builds every situation a job's record can be in (its
state, whether its lease runs, whether its window is over, whether
``max_uses`` is reached, whether the balance covers the cost) and puts each
operation to it: a call (``plan_claim``), ``confirm`` (``plan_confirm``),
``refund`` (``plan_refund``) and ``prune`` (``plan_settle``). Every event a
plan commits is an arrow, from the record's state before it to the state it
leaves; a call that is refused is an arrow back to where it started. Arrows
that differ only in their situation are merged, and the label keeps the
conditions they all share: so a label says exactly what the rules look at.

"refunded" and "expired" are where a charge ends: stores delete such a
record (or replace it), and the next call with the job id charges anew.

Run ``tox -e pictures`` (or ``python docs/_pictures/job_states.py``) after
changing the rules; ``tests/test_job_states_picture.py`` fails while the
committed ``docs/_static/job-states.dot`` disagrees with what the rules do.
The SVG needs graphviz (``dot``); the check of the ``.dot`` text needs
nothing but the package.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, NamedTuple

try:  # the installed package (tox installs it), else the checkout's
    import jobcredits_plugin  # noqa: F401
except ImportError:  # pragma: no cover - run from a bare checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from jobcredits_plugin import JobRecord
from jobcredits_plugin.stores import (
    ClaimRequest,
    Event,
    plan_claim,
    plan_confirm,
    plan_refund,
    plan_settle,
)

ROOT = Path(__file__).resolve().parents[2]
DOT = ROOT / "docs" / "_static" / "job-states.dot"
SVG = ROOT / "docs" / "_static" / "job-states.svg"

NOW = 10_000.0
TTL = 3600.0
LEASE = 60.0
COST = 1
CHARGE_ID = "charge-1"

#: The node a job is at before its first call, and after a charge ends.
NEW = "new"

#: What the web layer calls each operation on (docs/concepts.md, "What counts
#: as failure"): the rules do not know about HTTP, so this is the one part of
#: the picture written here rather than read off the code.
WHY = {
    "call": "call",
    "confirm": "confirm (answer 2xx-4xx)",
    "refund": "refund (exception, 5xx, cancelled)",
    "prune": "prune",
}

#: What a refused call answers, by the claim's status.
REFUSALS = {
    "in_progress": "409 JobInProgress",
    "exhausted": "409 JobExhausted",
    "insufficient": "402 InsufficientCredits",
}


class Situation(NamedTuple):
    """A record (or none) at ``NOW``, with the conditions that describe it.
    (A NamedTuple, not a dataclass: the test loads this file by path.)"""

    state: str
    record: JobRecord | None
    conditions: frozenset[str]
    max_uses: int | None = None


def _record(
    state: Literal["pending", "charged", "refunded"], charged_at: float, uses: int = 1
) -> JobRecord:
    return JobRecord(
        "acct",
        "default",
        "job-1",
        CHARGE_ID,
        state,
        COST,
        None,
        None,
        charged_at,
        charged_at + TTL,
        uses,
        charged_at + LEASE,
        COST,
    )


def situations() -> Iterator[Situation]:
    """Every situation worth telling apart, each with its conditions."""
    yield Situation(NEW, None, frozenset())
    for lease, window, age in (
        ("lease running", "in the window", 10.0),
        ("lease over", "in the window", 120.0),
        ("lease over", "past the window", TTL + 120.0),
    ):
        yield Situation("pending", _record("pending", NOW - age), frozenset({lease, window}))
    for (window, age), (uses, max_uses) in itertools.product(
        (("in the window", 10.0), ("past the window", TTL + 10.0)),
        ((1, None), (1, 3), (3, 3)),
    ):
        conditions = {window} | ({"max_uses reached"} if uses == max_uses else set())
        yield Situation(
            "charged", _record("charged", NOW - age, uses), frozenset(conditions), max_uses
        )
    # Stores delete a refunded record at once; one left behind counts as absent.
    yield Situation("refunded", _record("refunded", NOW - 10.0), frozenset())


#: Balances off (nothing to check), on and enough, on and short.
BALANCES: tuple[tuple[bool, int, frozenset[str]], ...] = (
    (False, 0, frozenset()),
    (True, 10, frozenset()),
    (True, 0, frozenset({"balance < cost"})),
)


def _state(event: Event) -> str:
    return "expired" if event.kind == "expire" else event.record.state


Edge = tuple[str, str, str, str]  # from, to, operation, what happens


def transitions() -> Iterator[tuple[Edge, frozenset[str]]]:
    """Every arrow the rules produce, with the conditions of its situation."""
    for s in situations():
        for balances, balance, money in BALANCES:
            req = ClaimRequest(
                "acct", "default", "job-1", "charge-2", COST, None, None,
                NOW, TTL, LEASE, s.max_uses, balances,
            )  # fmt: skip
            result = plan_claim(s.record, balance, req).result
            here = s.state
            conditions = s.conditions | money
            for event in result.events:
                there = _state(event)
                yield (here, there, "call", f"on_{event.kind}"), conditions
                # Once the old charge has ended, what the same call does next
                # depends on the call alone (its balance), not on that record.
                here, conditions = there, money
            if result.status in REFUSALS:
                yield (here, here, "call", REFUSALS[result.status]), conditions
        if s.record is None:
            continue
        for charge_id in (CHARGE_ID, None, "another-charge"):
            confirmed, write = plan_confirm(s.record, charge_id, NOW)
            if write and confirmed is not None:
                yield (s.state, confirmed.state, "confirm", ""), s.conditions
            refund = plan_refund(s.record, charge_id, NOW)
            if refund is not None:
                yield (s.state, _state(refund), "refund", f"on_{refund.kind}"), s.conditions
        settled = plan_settle(s.record, NOW)
        if settled is not None:
            yield (s.state, _state(settled), "prune", f"on_{settled.kind}"), s.conditions


def edges() -> dict[tuple[str, str], list[str]]:
    """The arrows between two nodes, each line one operation with the
    conditions shared by every situation that produced it."""
    merged: dict[Edge, frozenset[str]] = {}
    for edge, conditions in transitions():
        merged[edge] = merged[edge] & conditions if edge in merged else conditions
    lines: dict[tuple[str, str], list[str]] = {}
    for (src, dst, op, what), conditions in sorted(merged.items()):
        guard = f" [{', '.join(sorted(conditions))}]" if conditions else ""
        lines.setdefault((src, dst), []).append(f"{WHY[op]}{guard}" + (f": {what}" if what else ""))
    return lines


NODES = {
    NEW: ("new job id", "#f3f4f6", "ellipse"),
    "pending": ("pending\n(first call running)", "#fef3c7", "box"),
    "charged": ("charged\n(follow-ups free)", "#dcfce7", "box"),
    "refunded": ("refunded\n(credit given back)", "#dbeafe", "box"),
    "expired": ("expired\n(window over)", "#ede9fe", "box"),
}


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def dot_source() -> str:
    """The graph in graphviz's language, deterministic for given rules."""
    lines = [
        "// Generated by docs/_pictures/job_states.py from the plan_* rules: do not edit.",
        "digraph job_states {",
        '  graph [rankdir=TB, fontname="Helvetica", fontsize=11, nodesep=0.6, ranksep=0.5];',
        '  node [style="rounded,filled", fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=9, color="#6b7280", arrowsize=0.7];',
    ]
    for name, (label, colour, shape) in NODES.items():
        lines.append(f'  "{name}" [label="{_quote(label)}", shape={shape}, fillcolor="{colour}"];')
    for (src, dst), labels in edges().items():
        lines.append(f'  "{src}" -> "{dst}" [label="{_quote(chr(10).join(labels))}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    text = dot_source()
    DOT.parent.mkdir(parents=True, exist_ok=True)
    DOT.write_text(text, encoding="utf-8")
    dot = shutil.which("dot")
    if dot is None:
        print("wrote", DOT, "- graphviz (dot) is not installed: SVG not rebuilt")
        return 1
    svg = subprocess.run([dot, "-Tsvg"], input=text, capture_output=True, text=True, check=True)
    # graphviz stamps its version in a comment: drop it (see architecture.py).
    SVG.write_text(re.sub(r"<!-- Generated by .*?-->\n", "", svg.stdout, flags=re.DOTALL))
    print("wrote", DOT, "and", SVG)
    return 0


if __name__ == "__main__":
    sys.exit(main())
