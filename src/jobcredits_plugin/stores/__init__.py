"""Where the ledger keeps its jobs and balances.

=================  =========================================  ==============================
store              URL                                        use
=================  =========================================  ==============================
MemoryStore        ``memory://``                              one process; tests; the default
SQLiteStore        ``sqlite:///relative.db``,                 several processes on one host;
                   ``sqlite:////absolute/path.db``            durable
RedisStore         ``redis://``, ``rediss://``,               several hosts; Redis Cluster
                   ``redis+unix://``                          (extra ``redis``)
PostgresStore      ``postgresql://``                          several hosts; durable
                                                              (extra ``postgres``)
DjangoStore        ``django://ALIAS``                         a Django project's own database
                                                              (extra ``django``; the class is
                                                              ``jobcredits_plugin.django.DjangoStore``)
=================  =========================================  ==============================

Store classes whose driver is an optional extra are imported lazily, so that
``import jobcredits_plugin.stores`` never imports a driver.
"""

from __future__ import annotations

import importlib
import urllib.parse
from collections.abc import Callable
from typing import Any

from .._errors import InvalidArgument
from .._validation import configuring
from .._warnings import mark_in_process
from ._base import BaseStore
from ._memory import MemoryStore
from ._protocol import AsyncStore, JournalStore, Store
from ._rows import JournalRow, entry_delta, entry_from_row, grant_row, journal_rows
from ._rules import (
    GRANT_ID_RETENTION,
    ClaimPlan,
    ClaimRequest,
    ClaimResult,
    ClaimStatus,
    Event,
    EventKind,
    Key,
    balance_cap_error,
    claim_from_server,
    deadline,
    grant_conflict_error,
    grant_exceeds_cap,
    grant_id_live,
    plan_claim,
    plan_confirm,
    plan_refund,
    plan_settle,
    settled_so_far,
    with_settled,
)
from ._sqlite import SQLiteStore
from ._urls import JOURNAL_OPTIONS, check_url_text, parse_options, redact_url

__all__ = [
    "GRANT_ID_RETENTION",
    "AsyncStore",
    "BaseStore",
    "ClaimPlan",
    "ClaimRequest",
    "ClaimResult",
    "ClaimStatus",
    "Event",
    "EventKind",
    "JournalRow",
    "JournalStore",
    "Key",
    "MemoryStore",
    "PostgresStore",
    "RedisStore",
    "SQLiteStore",
    "Store",
    "balance_cap_error",
    "claim_from_server",
    "deadline",
    "entry_delta",
    "entry_from_row",
    "from_url",
    "grant_conflict_error",
    "grant_exceeds_cap",
    "grant_id_live",
    "grant_row",
    "journal_rows",
    "plan_claim",
    "plan_confirm",
    "plan_refund",
    "plan_settle",
    "redact_url",
    "settled_so_far",
    "with_settled",
]

ACCEPTED = (
    "memory://, sqlite:///relative/path.db, sqlite:////absolute/path.db, "
    "redis://host:port/db, rediss://..., redis+unix:///path.sock, "
    "postgresql://user@host:port/dbname, django://ALIAS (a Django database alias)"
)

#: Stores whose driver is an optional extra, imported on first use so that
#: importing this package never imports a driver (a missing driver's
#: ImportError names the extra to install).
_LAZY = {"RedisStore": "._redis", "PostgresStore": "._postgres"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    except ImportError as exc:
        # The driver is not installed. Hand back a stand-in that raises this
        # ImportError (it names the extra) when used, not when named: an
        # attribute lookup that raised ImportError would break hasattr(),
        # getattr(..., default) and tools that list the API, and Python turns
        # it into a bare "cannot import name" for ``from ... import``. Not
        # cached, so installing the driver later in the process works.
        return _missing_driver(name, exc)
    globals()[name] = value
    return value


def _missing_driver(name: str, error: ImportError) -> type[Any]:
    message = str(error)

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise ImportError(message)

    return type(
        name,
        (),
        {
            "__doc__": f"{name} is not available: {message}",
            "__module__": __name__,
            "__init__": unavailable,
            "from_url": staticmethod(unavailable),
        },
    )


def _lazy_store(name: str) -> Any:
    return __getattr__(name)


def _memory_from_url(parts: urllib.parse.SplitResult, url: str) -> Store:
    if parts.netloc or parts.path not in ("", "/"):
        raise InvalidArgument(f"memory:// takes no host or path, got {redact_url(url)!r}")
    allowed: dict[str, Callable[[str], Any]] = {
        "settle_batch": int,
        "journal_limit": int,
        **JOURNAL_OPTIONS,
    }
    store = MemoryStore(**parse_options(parts.query, allowed, url))
    mark_in_process(store)  # one process's memory, named by a URL: the adapters warn
    return store


def _sqlite_from_url(parts: urllib.parse.SplitResult, url: str) -> Store:
    # As SQLAlchemy spells it: three slashes then a relative path, four for an
    # absolute one. "sqlite://" alone, or sqlite:///:memory:, is an in-memory DB.
    if parts.netloc:
        raise InvalidArgument(
            f"sqlite URLs have no host: write sqlite:///relative.db or "
            f"sqlite:////absolute/path.db, not {redact_url(url)!r}"
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    path = urllib.parse.unquote(path) or ":memory:"
    opts = parse_options(
        parts.query,
        {"timeout": float, "synchronous": str, "prune_batch": int, **JOURNAL_OPTIONS},
        url,
    )
    store = SQLiteStore(path, **opts)
    if path == ":memory:":
        mark_in_process(store)  # like memory://, private to this process
    return store


def _redis_from_url(parts: urllib.parse.SplitResult, url: str) -> Store:
    store: Store = _lazy_store("RedisStore").from_url(url)
    return store


def _postgres_from_url(parts: urllib.parse.SplitResult, url: str) -> Store:
    store: Store = _lazy_store("PostgresStore").from_url(url)
    return store


def _django_from_url(parts: urllib.parse.SplitResult, url: str) -> Store:
    # Imported here: jobcredits_plugin.django imports Django, which only a
    # django:// URL needs (its ImportError names the extra).
    from ..django._store import DjangoStore

    if parts.path not in ("", "/") or not parts.netloc:
        raise InvalidArgument(
            f"django:// URLs name a database alias and nothing else, e.g. django://default, "
            f"not {redact_url(url)!r}"
        )
    alias = urllib.parse.unquote(parts.netloc)
    opts = parse_options(parts.query, {"prune_batch": int, **JOURNAL_OPTIONS}, url)
    return DjangoStore(alias, **opts)


_SCHEMES: dict[str, Callable[[urllib.parse.SplitResult, str], Store]] = {
    "memory": _memory_from_url,
    "sqlite": _sqlite_from_url,
    "redis": _redis_from_url,
    "rediss": _redis_from_url,
    "redis+unix": _redis_from_url,
    "postgresql": _postgres_from_url,
    "postgres": _postgres_from_url,
    "django": _django_from_url,
}


def from_url(url: str) -> Store:
    """Build a store from a URL (see the table above); query parameters become
    store options, e.g. ``sqlite:///jobs.db?timeout=2``.

    A URL the app got wrong (an unknown scheme or option, a bad value) raises
    :class:`~jobcredits_plugin.ConfigurationError`."""
    with configuring():
        return _from_url(url)


def _from_url(url: str) -> Store:
    if not isinstance(url, str) or "://" not in url:
        raise InvalidArgument(f"store URL must look like scheme://..., accepted: {ACCEPTED}")
    check_url_text(url)
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # e.g. "Invalid IPv6 URL": still a bad argument
        raise InvalidArgument(
            f"store URL {redact_url(url)!r} cannot be parsed ({exc}); accepted: {ACCEPTED}"
        ) from exc
    scheme = parts.scheme.lower()
    factory = _SCHEMES.get(scheme)
    if factory is None:
        raise InvalidArgument(
            f"unknown store URL scheme {scheme!r} in {redact_url(url)!r}; accepted: {ACCEPTED}"
        )
    return factory(parts, url)
