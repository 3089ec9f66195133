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

Every hook is a notification: it fires after the change it reports has been
committed, exactly once per change across every process sharing the store,
and its return value is ignored. A hook that raises is logged and skipped; it
never undoes the change or keeps the other hooks from running. Hooks run on
the caller's thread (also from the async twins), so they must be quick: hand
slow work (HTTP calls, disk) to a queue.

An implementation may take fewer arguments than its spec names (pluggy passes
only the ones it asks for), so a plugin keeps working when a spec gains one.
A plugin written for a newer version, implementing a hook this version lacks,
should mark that implementation ``@hookimpl(optionalhook=True)``; then it
registers here too, and :meth:`~jobcredits_plugin.Ledger.check_pending` does not
complain.
"""

from __future__ import annotations

import pluggy

from ._records import JobRecord

__all__ = [
    "PROJECT_NAME",
    "hookimpl",
    "hookspec",
    "on_charge",
    "on_expire",
    "on_refund",
    "on_reuse",
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
