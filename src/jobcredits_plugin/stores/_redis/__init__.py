"""A store on Redis (or Redis Cluster), shared by every process on every host.

Atomicity comes from Lua: each ledger operation is one ``EVALSHA`` of a script
that reads the job's record (and the account's balance), decides, writes and
answers in one step on the server, so no other client's command can run in
between, and the whole operation costs one round trip.

The scripts mirror the stores' pure ``plan_*`` rules and hand back
the *pre-image* (the record and balance as they were before the script ran).
The Python side then runs the very same ``plan_*`` function on that pre-image
to build the :class:`ClaimResult` / :class:`Event` objects, so the results are
exactly those of the other stores, and a drift between the Lua and the Python
rules is caught as an error instead of a silently different answer.

Key layout (``P`` is the prefix, ``T`` 16 hex digits of a BLAKE2b digest of the
account, ``lp(x)`` is ``<utf-8 byte length>:<x>``)::

    P:{T}:j:lp(account)lp(scope)lp(job_id)   hash   one job record
    P:{T}:b:lp(account)                      string the account's balance
    P:{T}:due                                zset   job keys by deadline()
    P:{T}:g:lp(account)lp(grant_id)          string a grant id's marker, for 7 days
    P:{T}:c:lp(account)lp(charge_id)         string a claim's retry marker, for 60 s
    P:{T}:r:lp(account)lp(scope)lp(job_id)lp(token)
                                             string a refund's retry marker, for 60 s
    P:{T}:p:<token>                          string a prune batch's retry marker, for 60 s
    P:journal                                stream the journal (standalone)
    P:journal:cursors                        hash   cursor name -> position (standalone)

    On Redis Cluster (``S``: 5 characters of ``@A-O`` chosen to hash to the
    slot of ``{T}``; see _keys.slot_tag)::

    P:{S}:journal                            stream the entries of the slot's accounts,
                                                    until a reader merges them
    P:{journal}                              stream the journal readers read (merged)
    P:{journal}:cursors                      hash   cursor name -> position
    P:{journal}:streams                      set    every slot stream written to
    P:{journal}:marks                        hash   slot stream -> last seq merged

Retry markers: redis-py re-sends a script whose answer was lost (the server
ran it, the connection died before the reply came). The claim, refund, prune
and grant scripts keep their answer in a marker named by something only that
call sends (the claim's charge id, a token drawn per refund or prune batch), in the same
atomic step; a retry finds it and answers the original's answer again, so the
Python side rebuilds the same result and events and the ledger fires each
hook once, while nothing is written (or journaled) twice.

The ``{T}`` hash tag puts an account's jobs, balance, due-set and markers in
one cluster slot, so every script touches one slot; the digest keeps an account that
contains ``{``, ``}``, ``:`` or ``|`` from choosing its own tag. Length
prefixes make the job key injective in ``(account, scope, job_id)``.

The journal is one stream for the whole store, passed as a key to every script
that changes the books, which appends the change's entry (``XADD P:journal
0-*``: the entry's id is ``0-<seq>``) in the same atomic step. A script on
Redis Cluster may only touch keys of one slot, so there the script appends to
the stream of the account's own slot instead, and readers merge the slot
streams into one numbered stream (``lua/merge.lua``, :mod:`._merge`): the
entry still commits with its change, and the seq, the one public position, is
given once, by whichever reader merges the entry first. The account keys are
where they always were: turning the journal on changes no key of a running
cluster.

Clock: by default every time comparison uses the ``now`` the ledger passes
in, and every float is passed and stored as Python's ``repr``, which Lua's
``tonumber`` and Redis's sorted-set scores parse back to the same double, so
times round-trip to the bit and compare exactly as in Python. With
``server_clock=True`` the scripts read the server's ``TIME`` instead, inside
the same atomic step, and answer the ``now`` they used (exact microseconds);
the times they compute from it are written with 17 significant digits, so
Python, replaying the rules with that ``now``, builds the very records the
server stored.

The modules: ``lua/*.lua`` the scripts (each documents its KEYS, ARGV and
answer) and :mod:`._scripts` which loads them; :mod:`._keys` the key names;
:mod:`._wire` what each script is sent and what its answer becomes;
:mod:`._replies` the reply parsers; :mod:`._clients` the clients and
:mod:`._faults` which driver errors mean "unavailable"; :mod:`._merge` a
cluster's journal; :mod:`._store` the :class:`RedisStore` class itself.
"""

from __future__ import annotations

# The driver is an optional extra: say which one when it is missing. (The
# modules that use it import it plainly: this one always runs before them.)
try:
    import redis  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        'RedisStore needs the redis driver: pip install "jobcredits-plugin[redis]"'
    ) from exc

from ._faults import is_unavailable
from ._store import RedisStore

__all__ = ["RedisStore", "is_unavailable"]
