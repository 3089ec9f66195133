"""The statements a PostgreSQL store sends: one per operation, each a call of
a function of ``functions.sql`` (or a plain read), built once per store for
its schema and its clock."""

from __future__ import annotations

from psycopg import sql

#: The columns of a journal row in :data:`.._base.JournalRow` order, after seq.
_JOURNAL_COLUMNS = (
    "seq, kind, account, scope, job_id, charge_id, cost, tier, backend, delta, balance, at"
)

#: A record's columns, as in ``jobs`` (and ``job_image``).
COLUMNS = (
    "account, scope, job_id, charge_id, state, cost, tier, backend, "
    "charged_at, expires_at, lease_until, uses, debited"
)

#: The record a claim, confirm or refund found, as the functions answer it.
_OUT = (
    "o_charge_id, o_state, o_cost, o_tier, o_backend, o_charged_at, "
    "o_expires_at, o_lease_until, o_uses, o_debited"
)

#: The server's now, in seconds since the epoch, for ``server_clock=True``:
#: a CTE that reads ``clock_timestamp()`` once (a CTE with a volatile function
#: is never inlined, so every use of ``clock.now`` in the statement is the same
#: value), then handed to the functions in place of the ledger's ``now``.
#: ``clock_timestamp()``, not ``now()``: ``now()`` is the start of the
#: transaction, which is the start of the statement only while every call is
#: its own autocommit transaction; ``clock_timestamp()`` stays "the time the
#: decision is made" whatever transaction the statement runs in, and it is
#: read after the statement has waited for a connection and been parsed.
_SERVER_CLOCK = "extract(epoch FROM clock_timestamp())::float8"
_SERVER_NOW = f"WITH clock AS (SELECT {_SERVER_CLOCK} AS now) "


#: A statement as the store runs it: the bytes psycopg sends, rendered once
#: (see :func:`_render`), or on psycopg 3.1 the composed statement itself.
Query = bytes | sql.Composed


def _render(statement: sql.Composed) -> Query:
    """A statement as the bytes psycopg sends: rendered once per store,
    where psycopg would render a Composed again on every call (a walk of its
    parts, and the schema's identifier escaped each time). The schema is a
    plain identifier (see _store._check_schema), which psycopg 3.2 and later
    quote without a connection. psycopg 3.1 quotes an identifier only with a
    connection at hand (ValueError): there the statement stays composed and
    psycopg renders it per call, as it always did."""
    try:
        return statement.as_bytes(None)
    except ValueError:
        return statement


class Statements:
    """Every statement of one store: for its schema, and with ``now`` a
    parameter (the ledger's clock) or read by the statement itself
    (``server_clock``, returned as the last column)."""

    def __init__(self, schema: str, server_clock: bool) -> None:
        s = sql.Identifier(schema)
        self._ledger(s, server_clock)
        self._journal(s)

    def _ledger(self, s: sql.Identifier, server_clock: bool) -> None:
        # The ledger's now is a parameter; the server's (server_clock) is
        # clock.now from _SERVER_NOW, also returned as the last column.
        if server_clock:
            with_, now, col, frm = _SERVER_NOW, "clock.now", ", clock.now", "clock, "
        else:
            with_, now, col, frm = "", "%s::float8", "", ""

        def forget(function: str) -> Query:
            # forget_replies and forget_grants: (now, retention, batch)
            return _render(
                sql.SQL(
                    f"{with_}SELECT {{}}.{function}({now}, %s::float8, %s::integer)"
                    + (" FROM clock" if server_clock else "")
                ).format(s)
            )

        def call(columns: str, function: str, arguments: str) -> Query:
            # confirm, refund and prune: SELECT <columns>[, clock.now]
            # FROM [clock, ]<schema>.<function>(<arguments>)
            return _render(
                sql.SQL(
                    f"{with_}SELECT {columns}{col} FROM {frm}{{}}.{function}({arguments})"
                ).format(s)
            )

        # A claim answers the now it was decided on (o_now: a retry answered
        # from its kept reply gets the original's, not the retry's clock),
        # which the rules must replay on to rebuild the records it stored. So
        # the claim, the hot path, needs no CTE: the server's clock is an
        # argument of the one function call, evaluated once (and a simpler
        # plan than the CTE's join).
        claim_col, claim_now = (", o_now", _SERVER_CLOCK) if server_clock else ("", now)
        self.claim = _render(
            sql.SQL(
                f"SELECT status, balance, {_OUT}{claim_col} FROM {{}}.claim("
                f"%s, %s, %s, %s, %s::bigint, %s, %s, {claim_now}, %s::float8, %s::float8, "
                "%s::bigint, %s::boolean, %s::boolean, %s::boolean, %s::text, %s::float8)"
            ).format(s)
        )
        self.confirm = call(f"hit, {_OUT}", "confirm", "%s, %s, %s, %s::text")
        self.refund = call(
            f"hit, {_OUT}",
            "refund",
            f"%s, %s, %s, %s::text, {now}, %s::boolean, %s::text, %s::float8",
        )
        self.prune = call(
            COLUMNS, "prune", f"{now}, %s::integer, %s::boolean, %s::text, %s::float8"
        )
        self.forget_replies = forget("forget_replies")
        # A lookup reads one row: the clock in its select list is read once.
        self.lookup = _render(
            sql.SQL(
                f"SELECT {COLUMNS}{f', {_SERVER_CLOCK}' if server_clock else ''} FROM {{}}.jobs "
                "WHERE account = %s AND scope = %s AND job_id = %s"
            ).format(s)
        )
        self.snapshot = _render(
            sql.SQL(
                f"{with_}SELECT {COLUMNS}{col} FROM {frm}{{}}.jobs "
                f"WHERE expires_at > {now} ORDER BY charged_at, account, scope, job_id"
            ).format(s)
        )
        self.grant = _render(
            sql.SQL(
                f"{with_}SELECT status, balance FROM {frm}{{}}.grant_credits("
                f"%s, %s::bigint, {now}, %s, %s::boolean, %s::float8)"
            ).format(s)
        )
        self.forget_grants = forget("forget_grants")
        self.balance = _render(
            sql.SQL("SELECT credits FROM {}.balances WHERE account = %s").format(s)
        )

    def _journal(self, s: sql.Identifier) -> None:
        self.read_journal = _render(
            sql.SQL(
                "SELECT " + _JOURNAL_COLUMNS + " FROM {}.read_journal(%s::bigint, %s::integer, "
                "%s::integer)"
            ).format(s)
        )
        self.trim_journal = _render(
            sql.SQL("SELECT {}.trim_journal(%s::bigint, %s::float8, %s::integer)").format(s)
        )
        self.get_cursor = _render(
            sql.SQL("SELECT position FROM {}.journal_cursors WHERE name = %s").format(s)
        )
        # Monotonic unless forced: two exporters racing on one cursor can
        # never move it back over entries one of them already sent.
        self.set_cursor = _render(
            sql.SQL(
                "INSERT INTO {}.journal_cursors AS c (name, position) VALUES (%s, %s::bigint) "
                "ON CONFLICT (name) DO UPDATE SET position = CASE WHEN %s::boolean "
                "THEN excluded.position ELSE greatest(c.position, excluded.position) END, "
                "updated_at = now() RETURNING position"
            ).format(s)
        )
        self.delete_cursor = _render(
            sql.SQL("DELETE FROM {}.journal_cursors WHERE name = %s RETURNING 1").format(s)
        )
        self.cursors = _render(
            sql.SQL("SELECT name, position FROM {}.journal_cursors ORDER BY name").format(s)
        )
