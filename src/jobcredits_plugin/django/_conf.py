"""``settings.JOBCREDITS``: read, validated, and the process's ledger built from it.

Settings are where a Django project configures everything, so the ledger is
built from them instead of being handed to the adapter. The parsed settings
and the ledger are cached per process (a request must not re-read and
re-import them), and dropped whenever the ``setting_changed`` signal names
``JOBCREDITS``, which is what makes ``override_settings`` work in tests.

The same reader serves the system checks (``jobcredits.E0xx``/``W0xx``) and
the runtime, so ``manage.py check`` reports exactly what a request would
trip over, and a server started without running the checks (gunicorn does
not) still fails with the same message instead of charging with a typo.
"""

from __future__ import annotations

import contextlib
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.core.signals import setting_changed  # type: ignore[import-untyped]

from .._errors import ConfigurationError, InvalidArgument
from .._ledger import Ledger
from .._settings import DEFAULTS, Problem, Settings, report
from .._settings import url_problem as _url_problem

__all__ = ["DEFAULTS", "Config", "Problem", "get_config", "get_ledger", "read", "use_ledger"]

SETTING = "JOBCREDITS"

#: The settings as a request reads them (the one model every adapter shares).
Config = Settings


def spell(key: str) -> str:
    """A setting as the project writes it, for messages."""
    return f"settings.JOBCREDITS[{key!r}]"


class SettingsError(ImproperlyConfigured, ConfigurationError):  # type: ignore[misc]
    """``settings.JOBCREDITS`` is wrong: Django's ImproperlyConfigured, and
    the library's ConfigurationError (a 500 for the app's own setup mistake),
    so that either ``except`` catches it."""

    def __init__(self, detail: str) -> None:
        ConfigurationError.__init__(self, detail)


def url_problem(url: Any) -> str | None:
    """Why ``url`` cannot name a store, or None (probed without opening it)."""
    return _url_problem(url, spell("URL"))


def per_process(url: str) -> bool:
    """Whether the store a URL names lives inside one process (memory, or an
    in-memory SQLite database), so that every worker process has its own."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return False
    scheme = parts.scheme.lower()
    if scheme == "memory":
        return True
    if scheme == "sqlite" and not parts.netloc:
        path = urllib.parse.unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        return path in ("", ":memory:")
    return False


def read(raw: Any) -> tuple[Settings | None, list[Problem]]:
    """Validate a ``JOBCREDITS`` value; the settings are None when anything is
    wrong. Python settings are strict: no environment-string conversion."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        return None, [
            Problem(
                "E005",
                f"settings.JOBCREDITS must be a dict, not {type(raw).__name__}",
                'e.g. JOBCREDITS = {"URL": "sqlite:///jobcredits.db"}',
            )
        ]
    return Settings.from_mapping(
        raw, spell=spell, name="settings.JOBCREDITS", environ=False, unknown_keys=True
    )


def raw_setting() -> Any:
    """``settings.JOBCREDITS``, or None when the project does not set it."""
    return getattr(settings, SETTING, None)


def build_ledger(config: Settings) -> Ledger:
    """A new ledger as ``config`` describes (see :meth:`Settings.build_ledger`);
    a plugin that fails raises ImproperlyConfigured, and no store is left open."""
    try:
        return config.build_ledger(spell=spell)
    except (InvalidArgument, ConfigurationError) as exc:
        raise SettingsError(f"invalid settings.JOBCREDITS: {exc}") from exc


class _Cache:
    """The process's parsed settings and ledger, built once under a lock so
    that concurrent first requests share one ledger (two ledgers on one memory
    store would be two separate ledgers)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.config: Settings | None = None
        self.ledger: Ledger | None = None
        #: The ledgers :func:`use_ledger` put in place, innermost last; while
        #: there is one, it is the process's ledger.
        self.pins: list[Ledger] = []


_cache = _Cache()


def get_config() -> Settings:
    """The validated settings; raises ImproperlyConfigured when they are wrong."""
    config = _cache.config
    if config is not None:
        return config
    with _cache.lock:
        if _cache.config is None:
            config, problems = read(raw_setting())
            if config is None:
                raise SettingsError(
                    report(problems, "settings.JOBCREDITS") + " (manage.py check lists them)"
                )
            _cache.config = config
        return _cache.config


def get_ledger() -> Ledger:
    """The process's :class:`~jobcredits_plugin.Ledger`, built from
    ``settings.JOBCREDITS`` on first use and kept.

    Built lazily, not at startup, so that ``manage.py migrate`` and friends
    never open the store, and after a pre-forking server has forked, so that
    no connection is shared between workers. Rebuilt (and the old one
    closed) when ``override_settings`` changes ``JOBCREDITS``. Raises
    ``django.core.exceptions.ImproperlyConfigured`` when the setting is
    invalid (``manage.py check`` reports the same problems).
    """
    pins = _cache.pins
    if pins:
        return pins[-1]
    ledger = _cache.ledger
    if ledger is not None:
        return ledger
    with _cache.lock:
        if _cache.pins:
            return _cache.pins[-1]
        if _cache.ledger is None:
            _cache.ledger = build_ledger(get_config())
        return _cache.ledger


async def aget_ledger() -> Ledger:
    """:func:`get_ledger` for async code: the first call builds the ledger in a
    worker thread, since opening a store may block."""
    pins = _cache.pins
    if pins:
        return pins[-1]
    ledger = _cache.ledger
    if ledger is not None:
        return ledger
    return await sync_to_async(get_ledger, thread_sensitive=False)()


@contextlib.contextmanager
def use_ledger(ledger: Ledger) -> Iterator[Ledger]:
    """Inside the block, :func:`get_ledger` (and so every charged view) uses
    ``ledger`` instead of the one ``settings.JOBCREDITS`` builds: for tests,
    which want a ledger on a fake clock with a recording plugin (see
    :mod:`jobcredits_plugin.testing`), and have no app object to hand it to.

    The other settings (``ACCOUNT``, ``JOB_HEADER``...) still apply; those
    that describe the ledger (``URL``, ``TTL``, ``BALANCES``...) are the
    given ledger's own. The settings' ledger is neither closed nor replaced:
    it is back after the block (blocks may nest), and ``ledger`` is the
    caller's to close.
    """
    if not isinstance(ledger, Ledger):
        raise InvalidArgument(f"ledger must be a Ledger, not {type(ledger).__name__}")
    with _cache.lock:
        _cache.pins.append(ledger)
    try:
        yield ledger
    finally:
        with _cache.lock:
            pins = _cache.pins
            # by identity, the innermost first (the same ledger may be nested)
            del pins[max(i for i, pinned in enumerate(pins) if pinned is ledger)]


def _reset(sender: Any, *, setting: str, **kwargs: Any) -> None:
    """Drop the cached settings and ledger when ``JOBCREDITS`` changes."""
    if setting != SETTING:
        return
    with _cache.lock:
        old, _cache.ledger, _cache.config = _cache.ledger, None, None
    if old is not None:
        # Closing releases a SQLite store's connections; a request still
        # holding the old ledger gets a 503 (StoreUnavailable), never a
        # charge in a store the settings no longer name.
        old.close()


setting_changed.connect(_reset, dispatch_uid="jobcredits_plugin.django._conf._reset")
