"""The hooks a plugin can implement, and the markers to write one.

A plugin is any object (a module, a class instance) with methods named after
these specs and marked with :data:`hookimpl`::

    from jobcredits_plugin import hookimpl

    class CountCharges:
        def __init__(self) -> None:
            self.charged = 0

        @hookimpl
        def on_charge(self, record):
            self.charged += record.cost

    ledger.register(CountCharges())

The four *event* hooks (:func:`on_charge`, :func:`on_reuse`, :func:`on_refund`,
:func:`on_expire`) each report a change to the books. Every one is a
notification: it fires after the change it reports has been committed,
exactly once per change across every process sharing the store, and its
return value is ignored. A hook that raises is logged and skipped; it
never undoes the change or keeps the other hooks from running. Hooks run on
the caller's thread (also from the async twins), so they must be quick: hand
slow work (HTTP calls, disk) to a queue.

Two more hooks serve metrics rather than the books: :func:`on_reject` (a call
was refused and nothing was recorded) and :func:`on_store_call` (how long one
store operation took). They fire in the process that made the call, once per
call.

An implementation may take fewer arguments than its spec names (pluggy passes
only the ones it asks for), so a plugin keeps working when a spec gains one.
A plugin written for a newer version, implementing a hook this version lacks,
should mark that implementation ``@hookimpl(optionalhook=True)``; then it
registers here too, and :meth:`~jobcredits_plugin.Ledger.check_pending` does not
complain.
"""

from __future__ import annotations

import pluggy

from ._errors import JobCreditsError
from ._records import JobRecord

__all__ = [
    "PROJECT_NAME",
    "hookimpl",
    "hookspec",
    "on_charge",
    "on_expire",
    "on_refund",
    "on_reject",
    "on_reuse",
    "on_store_call",
]

#: The pluggy project name; also what entry points are looked up under
#: (group ``jobcredits_plugin``).
PROJECT_NAME = "jobcredits"

#: Marks a hook specification (used by this module).
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marks a hook implementation in a plugin.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def on_charge(record: JobRecord) -> None:
    """A call opened a job and paid for it.

    ``record.state`` is ``"pending"``: the first call is about to run. Its
    ``cost`` was debited when balances are on (``record.debited``).
    """


@hookspec
def on_reuse(record: JobRecord) -> None:
    """A follow-up call rode on the job's charge; nothing was debited.

    ``record.uses`` already counts this call.
    """


@hookspec
def on_refund(record: JobRecord) -> None:
    """A charge was given back: the job failed, or its first call's lease ran
    out. ``record.state`` is ``"refunded"``; ``record.debited`` went back to the
    balance. The next call with this job id is a new charge."""


@hookspec
def on_expire(record: JobRecord) -> None:
    """A charged job's window closed and the record was removed (by
    :meth:`~jobcredits_plugin.Ledger.prune`, or by the next call that found it past its
    ``expires_at``)."""


@hookspec
def on_reject(
    error: JobCreditsError,
    account: str | None,
    scope: str | None,
    job_id: str | None,
    cost: int | None,
) -> None:
    """A charge was refused, and nothing was recorded for it.

    ``error`` is the exception the caller gets; ``error.code`` names the
    reason: ``invalid_argument``, ``invalid_job_id``, ``invalid_account``,
    ``missing_job_id``, ``not_authenticated``, ``job_in_progress``,
    ``job_exhausted``, ``insufficient_credits`` or ``store_unavailable``
    (also when ``fail_open`` then lets the call through uncharged).

    ``account``, ``scope``, ``job_id`` and ``cost`` are given only when they
    passed validation, and are None otherwise: a hostile header never reaches
    a metric label or a log line through this hook.
    """


@hookspec
def on_store_call(operation: str, seconds: float, error: BaseException | None) -> None:
    """One store operation finished (or failed) after ``seconds``.

    ``operation`` is the store method: ``claim``, ``confirm``, ``refund``,
    ``lookup``, ``prune``, ``snapshot``, ``grant`` or ``balance`` (the async
    twins report the same names). ``error`` is what the store raised, None on
    success; a claim answered "insufficient credits" or "in progress" is a
    success here. The time is measured only while some plugin implements
    this hook, so the request path pays nothing for it otherwise.
    """
