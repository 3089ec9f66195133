"""What each script of the Redis store is sent, and what its answer becomes.

Shared by the sync and the async paths, and free of I/O: the methods here
build a script's KEYS and ARGV (documented in its ``lua/<name>.lua``) and
turn its reply into the results and events of the store protocol, replaying
the same pure ``plan_*`` rules every store uses on the record the script
hands back. The loops of several script calls (a prune's batches, a trim's
rounds) are generators here too, written once: :class:`.RedisStore` drives
them with the sync client or an async one.
"""

from __future__ import annotations

import functools
import json
import json.encoder
import math
import secrets
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any, TypeVar

import attrs

from ..._records import CHARGED, PENDING, REFUNDED, JobRecord
from .._rules import (
    GRANT_ID_RETENTION,
    ClaimRequest,
    ClaimResult,
    Event,
    Key,
    charge_from_server,
    claim_from_server,
    plan_confirm,
    plan_refund,
    plan_settle,
    reuse_from_server,
    with_settled,
)
from ._keys import Keys, account_keys, lp
from ._replies import decode, field_map, record, s

__all__ = ["Call", "Failed", "Steps", "Wire", "resume"]

_T = TypeVar("_T")

#: One script call: its KEYS and its ARGV.
Call = tuple[list[str], list[str]]

#: A loop of script calls (see :meth:`Wire._prune_steps`): it yields each
#: call, is sent the call's answer (or thrown its error), and returns the
#: operation's result.
Steps = Generator[Call, Any, _T]


@attrs.frozen
class Failed:
    """A script call's error, which a loop of calls gets thrown (see resume)."""

    error: BaseException


def resume(steps: Steps[Any], outcome: Any) -> Call:
    """The next call of the loop ``steps``, once it has the outcome of the
    last: its answer, sent in, or its error (a :class:`Failed`), thrown in
    where the loop waits for the answer. Raises StopIteration, carrying the
    loop's result, when the loop is done."""
    if isinstance(outcome, Failed):
        return steps.throw(outcome.error)
    return steps.send(outcome)


#: How long a retry marker lives (a claim's, a refund's, a prune batch's; see
#: lua/claim.lua, refund.lua, prune.lua): far longer than a driver's retry
#: takes, short enough not to matter for memory.
_TOMBSTONE_MS = "60000"

#: How long a grant's marker lives: GRANT_ID_RETENTION, in milliseconds.
_GRANT_MARKER_MS = str(int(GRANT_ID_RETENTION * 1000))

#: Journal entries one trim script deletes at most (the caller loops).
_TRIM_BATCH = 10_000

#: The x field's JSON, compact and unescaped, from one encoder made once:
#: json.dumps with options builds a new JSONEncoder on every call.
_pack = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

#: A str's JSON, unescaped as _pack spells it: the C function _pack itself calls.
_json_str: Callable[[str], str] = json.encoder.encode_basestring


@functools.lru_cache(maxsize=1024)
def _x_parts(scope: str, tier: str | None, backend: str | None, cost: int) -> tuple[str, str, str]:
    """What a claim's keys and x field take from the call's scope, labels and
    cost, which few calls differ in: the length-prefixed scope, and the x
    field's JSON before job_id (``["<scope>",``) and after it up to
    charged_at (``,<tier>,<backend>,<cost>,``)."""
    head = _pack([scope])[:-1] + ","
    tail = "," + _pack([tier, backend, cost])[1:-1] + ","
    return lp(scope), head, tail


class Wire(Keys):
    """Each script's arguments and the meaning of its answer, by the store's
    settings (set by :class:`.RedisStore`'s constructor)."""

    journal: bool
    journal_reuses: bool
    server_clock: bool
    safety_expiry: float | None
    prune_batch: int

    def _claim_call(self, req: ClaimRequest) -> Call:
        account = req.account
        job_id = req.job_id
        base, lp_account, due, balance = account_keys(self.prefix, account)
        lp_scope, x_head, x_tail = _x_parts(req.scope, req.tier, req.backend, req.cost)
        keys = [
            f"{base}j:{lp_account}{lp_scope}{lp(job_id)}",
            due,
            balance,
            # the retry marker: this call's answer, kept by the script
            f"{base}c:{lp_account}{lp(req.charge_id)}",
        ]
        now = float(req.now)
        # The x field, as _pack([scope, job_id, tier, backend, cost, now])
        # spells it, from the parts that only change with the scope, labels
        # and cost (cached) and job_id's JSON string: one C call instead of
        # the encoder's walk over the list (a tenth of a claim's Python).
        x = x_head + _json_str(job_id) + x_tail
        if self.server_clock:
            # The script reads TIME and completes these (see lua/claim.lua): the
            # times as offsets, the x field without charged_at.
            t0, t1, t2 = "T", repr(float(req.ttl)), repr(float(req.lease))
            ahead = max(req.ttl, req.lease)
        else:
            expires_at, lease_until = now + req.ttl, now + req.lease
            t0, t1, t2 = repr(now), repr(expires_at), repr(lease_until)
            ahead = max(expires_at, lease_until) - now
            x = f"{x}{t0}]"  # a finite float's repr is its JSON (the ledger checks its clock)
        safety = self.safety_expiry
        expiry = "0" if safety is None else str(max(1, math.ceil((ahead + safety) * 1000)))
        max_uses = req.max_uses
        journal = self.journal
        # The ten control values, in lua/claim.lua's order, in one f-string.
        control = (
            f"{t0}\x1f{req.charge_id}\x1f{req.cost}\x1f{0 if max_uses is None else max_uses}"
            f"\x1f{1 if req.balances else 0}\x1f{t1}\x1f{t2}\x1f{expiry}"
            f"\x1f{('2' if self.journal_reuses else '1') if journal else '0'}\x1f{_TOMBSTONE_MS}"
        )
        if journal:
            keys.append(self.journal_stream(account))
        return keys, [control, account, x]

    def _now_arg(self, now: float) -> str:
        """The ``now`` a script gets: the ledger's, or ``T`` for the server's."""
        return "T" if self.server_clock else repr(float(now))

    def _claim_result(self, req: ClaimRequest, reply: Sequence[Any]) -> ClaimResult:
        status = s(reply[0])
        raw = reply[1]
        balance = int(s(reply[2]))
        if self.server_clock:
            # The rules replay on the server's now: the record the Python
            # side builds is then the one the script stored, to the bit.
            req = attrs.evolve(req, now=float(s(reply[3])))
        # The two answers nearly every call gets, a follow-up's reuse and a
        # new job's charge, are built straight from the reply when their
        # row of the rules holds (what plan_claim would test), without the
        # record as found and the plan around it. Any other answer, or one
        # the rules would not give, is replayed by claim_from_server below.
        elif status == "reused" and raw:
            usual = reuse_from_server(record(field_map(raw), None, 1), balance, req)
            if usual is not None:
                return usual
        elif status == "charged" and not raw:
            usual = charge_from_server(balance, req)
            if usual is not None:
                return usual
        existing = decode(raw)
        if status == "replay" and existing is not None:
            return ClaimResult(
                "charged",
                existing,
                balance if req.balances else None,
                (Event("charge", existing),),
            )
        # The script's committed decision is the truth, should the rules
        # disagree (see claim_from_server).
        return claim_from_server("Redis store", status, existing, balance, req)

    def _key_call(self, key: Key, charge_id: str | None) -> list[str]:
        return [charge_id or "", "0" if charge_id is None else "1"]

    def _refund_call(self, key: Key, charge_id: str | None, now: float) -> Call:
        # The token is drawn once per call: redis-py re-sends these very keys
        # and arguments when it retries, which is how the script finds its own
        # marker (keyed by the job and the token: a newer charge of the job
        # never touches it).
        token = secrets.token_hex(8)
        account, scope, job_id = key
        keys = [
            self.job_key(key),
            self.due_key(account),
            self.balance_key(account),
            f"{self._base(account)}r:{lp(account)}{lp(scope)}{lp(job_id)}{lp(token)}",
        ]
        args = [
            *self._key_call(key, charge_id),
            self._now_arg(now),
            token,
            _TOMBSTONE_MS,
            "1" if self.journal else "0",
        ]
        if self.journal:
            keys.append(self.journal_stream(account))
        return keys, args

    def _refund_event(
        self, reply: Sequence[Any], charge_id: str | None, now: float
    ) -> Event | None:
        if not reply:
            return None
        if self.server_clock:
            now = float(s(reply[2]))
        # {'refunded', the record before the refund}: the same answer whether
        # this run refunded or a retry found the marker of the run that did.
        record = decode(reply[1])
        assert record is not None
        # The server's committed refund is the truth, whatever the rules say.
        return plan_refund(record, charge_id, now) or Event("refund", record.with_state(REFUNDED))

    def _prune_size(self, limit: int | None, done: int) -> int:
        return self.prune_batch if limit is None else min(self.prune_batch, limit - done)

    def _prune_call(self, due: str, now: float, batch: int) -> Call:
        base = due[: -len("due")]
        # The batch's retry marker, in the due-set's slot, named by a token
        # drawn once per call (a retry re-sends it).
        keys = [due, f"{base}p:{secrets.token_hex(8)}"]
        if self.journal:
            keys.append(self._stream_of_due(due))
        args = [self._now_arg(now), str(batch), base, "1" if self.journal else "0", _TOMBSTONE_MS]
        return keys, args

    def _grant_call(self, account: str, amount: int, now: float, grant_id: str) -> Call:
        keys = [self.balance_key(account), f"{self._base(account)}g:{lp(account)}{lp(grant_id)}"]
        args = [
            str(int(amount)),
            "1" if self.journal else "0",
            _GRANT_MARKER_MS if grant_id else "",
        ]
        if self.journal:
            keys.append(self.journal_stream(account))
        packed = json.dumps([None, None, None, None, int(amount), None], separators=(",", ":"))
        return keys, [*args, account, grant_id, packed, self._now_arg(now)]

    @staticmethod
    def _xrange_args(after: int) -> tuple[str, str]:
        return f"(0-{max(0, int(after))}", "+"

    @staticmethod
    def _trim_args(through: int | None, cutoff: float | None) -> list[str]:
        return [
            "" if through is None else str(int(through)),
            "" if cutoff is None else repr(float(cutoff)),
            str(_TRIM_BATCH),
        ]

    @staticmethod
    def _set_cursor_args(name: str, position: int, force: bool) -> list[str]:
        return [name, str(int(position)), "1" if force else "0"]

    def _prune_events(self, reply: Sequence[Any], now: float) -> tuple[int, list[Event]]:
        events = []
        raws = reply[1:]
        if self.server_clock:
            now, raws = float(s(reply[1])), reply[2:]
        for raw in raws:
            record = decode(raw)
            assert record is not None
            event = plan_settle(record, now)
            if event is not None:
                events.append(event)
        return int(reply[0]), events

    def _snapshot_args(self) -> list[str]:
        return ["T"] if self.server_clock else []

    def _snapshot_records(self, replies: Iterable[Sequence[Any]], now: float) -> list[JobRecord]:
        live: list[JobRecord] = []
        for reply in replies:
            raws = reply
            if self.server_clock:
                # each due-set's script read its own server's now (one node
                # of a cluster per slot)
                now, raws = float(s(reply[0])), reply[1:]
            live.extend(r for r in map(decode, raws) if r is not None and r.is_live(now))
        live.sort(key=lambda r: (r.charged_at, r.key))
        return live

    def _confirm_args(self, key: Key, charge_id: str | None) -> list[str]:
        args = self._key_call(key, charge_id)
        return [*args, "T"] if self.server_clock else args

    def _confirm_result(
        self, reply: Sequence[Any], charge_id: str | None, now: float
    ) -> JobRecord | None:
        if self.server_clock:
            now, reply = float(s(reply[0])), reply[1]
        elif reply:
            # The usual answer, this charge found pending, confirmed: built
            # in its new state at once (plan_confirm's first row) instead of
            # as found and then again.
            f = field_map(reply)
            if f["st"] == PENDING and (charge_id is None or f["c"] == charge_id):
                return record(f, CHARGED)
        return plan_confirm(decode(reply), charge_id, now)[0]

    def _lookup_result(self, reply: Any, now: float) -> JobRecord | None:
        if self.server_clock:
            now, reply = float(s(reply[0])), reply[1]
        record = decode(reply)
        return record if record is not None and record.is_live(now) else None

    # -- the loops of script calls -----------------------------------------------

    def _prune_steps(
        self, dues: Iterable[str], now: float, limit: int | None
    ) -> Steps[list[Event]]:
        """A prune: batches of the prune script over each due-set until it
        answers fewer than it was asked for, or ``limit`` events are in.
        A failed call is thrown in here, and leaves with the events of the
        batches before it: each script committed its batch, so the ledger
        still fires their hooks."""
        events: list[Event] = []
        try:
            for due in dues:
                while limit is None or len(events) < limit:
                    batch = self._prune_size(limit, len(events))
                    reply = yield self._prune_call(due, now, batch)
                    examined, settled = self._prune_events(reply, now)
                    events.extend(settled)
                    if examined < batch:
                        break
                if limit is not None and len(events) >= limit:
                    break
        except BaseException as exc:
            with_settled(exc, events)
            raise
        return events

    def _trim_steps(self, through: int | None, cutoff: float | None) -> Steps[int]:
        """A trim: rounds of the trim script, each deleting at most
        _TRIM_BATCH entries, until one deletes fewer."""
        keys, args = [self.journal_key, self.cursors_key], self._trim_args(through, cutoff)
        removed = 0
        while True:
            n = int((yield keys, args))
            removed += n
            if n < _TRIM_BATCH:
                return removed
