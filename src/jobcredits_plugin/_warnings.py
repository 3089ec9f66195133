"""The warnings of jobcredits-plugin, and the one that says a ledger lives in
one process.

A memory store (or an in-memory SQLite database) is right for a test or a
single process, and silently wrong under a server with several worker
processes: each worker keeps its own jobs, so a job whose calls reach two
workers is charged twice, and a restart forgets every job. The adapters warn
when the app's ledger sits on such a store that nobody chose as an object:
the default ``memory://`` (a ``JOBCREDITS_URL`` never set), a URL naming one,
or ``Ledger()`` without a store. A :class:`~jobcredits_plugin.stores.MemoryStore`
passed in by hand (what ``testing.make_ledger`` does) is a choice, and
never warned about.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
import weakref
from typing import Any

__all__ = ["InProcessStoreWarning", "JobCreditsWarning"]


class JobCreditsWarning(UserWarning):
    """Base class of the warnings jobcredits-plugin issues, to filter them all
    (``warnings.filterwarnings("ignore", category=JobCreditsWarning)``)."""


class InProcessStoreWarning(JobCreditsWarning):
    """An adapter charges on a store that lives inside this process (the
    default ``memory://``): with several worker processes, each charges the
    same job again. Set a store the workers share; or, for a process that
    really is alone, pass ``Ledger(MemoryStore())`` or filter this warning."""


# Stores built for a URL or a default rather than passed in as objects. Weak:
# a marked store that is closed and dropped leaves nothing behind.
_DEFAULTED: weakref.WeakSet[Any] = weakref.WeakSet()


def mark_in_process(store: object) -> None:
    """Remember that ``store`` is an in-process store the app did not build
    itself (``memory://``, an in-memory SQLite URL, ``Ledger()``'s default)."""
    # A store class without weak references is never warned about.
    with contextlib.suppress(TypeError):
        _DEFAULTED.add(store)


def is_in_process_default(store: object) -> bool:
    """Whether ``store`` was marked by :func:`mark_in_process`."""
    try:
        return store in _DEFAULTED
    except TypeError:
        return False


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside this
    package: the app's own ``JobCredits(app)`` or ``install(app)`` line."""
    level = 1
    frame = sys._getframe(1)  # the caller of warn_in_process
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith(
        "jobcredits_plugin"
    ):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def warn_in_process(where: str, fix: str) -> None:
    """Issue :class:`InProcessStoreWarning` for ``where`` (what charges on the
    store), saying how to fix it (``fix``: where a shared store is set)."""
    warnings.warn(
        f"{where} keeps its job ledger in this process's memory (memory://): with "
        "several worker processes (gunicorn -w 2, uvicorn --workers 2) each worker "
        "charges the same job again, and a restart forgets every job. Use a store the "
        f"workers share: {fix} (e.g. 'sqlite:////var/lib/app/jobcredits.db', or a "
        "redis:// or postgresql:// URL). For a process that is really alone, pass "
        "Ledger(MemoryStore()) or filter jobcredits_plugin.InProcessStoreWarning.",
        InProcessStoreWarning,
        stacklevel=_caller_level(),
    )
