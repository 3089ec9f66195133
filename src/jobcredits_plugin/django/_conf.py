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

import difflib
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from asgiref.sync import sync_to_async
from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.core.signals import setting_changed  # type: ignore[import-untyped]

from .._decorator import header
from .._errors import (
    DEFAULT_RETRY_AFTER_MAX,
    ConfigurationError,
    InvalidArgument,
    JobCreditsError,
)
from .._ledger import Ledger
from .._plugins import import_object, instantiate, ledger_from_url, load_plugin
from .._web import DEFAULT_JOB_HEADER, DEFAULT_PROBLEMS, Problems
from .._web import problems as problem_settings
from ..stores import from_url, redact_url
from ..stores._urls import check_url_text, redact_text

SETTING = "JOBCREDITS"

#: Every key ``settings.JOBCREDITS`` accepts, with its default.
DEFAULTS: dict[str, Any] = {
    "URL": "memory://",
    "TTL": 3600.0,
    "LEASE": 60.0,
    "BALANCES": False,
    "MAX_USES": None,
    "JOB_HEADER": DEFAULT_JOB_HEADER,
    "ACCOUNT": None,
    "ON_MISSING": "charge",
    "FAIL_OPEN": False,
    "PLUGINS": (),
    "ENTRY_POINTS": False,
    "PROBLEM_TYPE_BASE": None,
    "RETRY_AFTER_MAX": DEFAULT_RETRY_AFTER_MAX,
}

ON_MISSING = ("charge", "reject")

PLUGINS_KEY = "settings.JOBCREDITS['PLUGINS']"
PLUGINS_HINT = (
    "list plugin objects or classes, or import strings naming them: "
    '"package.module:attribute" or "package.module.attribute" (a class is '
    "instantiated with no arguments)"
)


class SettingsError(ImproperlyConfigured, ConfigurationError):  # type: ignore[misc]
    """``settings.JOBCREDITS`` is wrong: Django's ImproperlyConfigured, and
    the library's ConfigurationError (a 500 for the app's own setup mistake),
    so that either ``except`` catches it."""

    def __init__(self, detail: str) -> None:
        ConfigurationError.__init__(self, detail)


@attrs.frozen
class Problem:
    """One thing wrong with the setting, in the form a system check reports.

    ``id`` is the check id without the ``jobcredits.`` prefix (``E001``).
    """

    id: str
    msg: str
    hint: str | None = None


@attrs.frozen
class Config:
    """``settings.JOBCREDITS`` after validation, with the dotted paths imported.

    ``account`` None means "the default": the authenticated ``request.user``.
    ``plugins`` holds the imported objects; a class among them is
    instantiated for each ledger built (see :func:`build_ledger`).
    ``entry_points`` also loads the installed packages' plugins.
    """

    url: str
    ttl: float
    lease: float
    balances: bool
    max_uses: int | None
    job_header: str
    account: Callable[..., Any] | None
    on_missing: str
    fail_open: bool
    plugins: tuple[Any, ...]
    entry_points: bool = False
    #: How errors are rendered (``PROBLEM_TYPE_BASE``, ``RETRY_AFTER_MAX``).
    problems: Problems = DEFAULT_PROBLEMS


def import_path(path: str) -> Any:
    """The object an import string names (``pkg.mod.attr`` or ``pkg.mod:attr``),
    or the module itself; read the same way by every adapter."""
    return import_object(path)


def url_problem(url: Any) -> str | None:
    """Why ``url`` cannot name a store, or None when it can.

    Parsed by the stores' own :func:`~jobcredits_plugin.stores.from_url`, so
    the check and the runtime never disagree, but without opening anything: a
    SQLite URL is probed with its file swapped for ``:memory:``, because
    ``manage.py check`` must not create database files.
    """
    if not isinstance(url, str):
        return f"settings.JOBCREDITS['URL'] must be a string, not {type(url).__name__}"
    probe = url
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        parts = None  # from_url gives the error
    try:
        if parts is not None and parts.scheme.lower() == "sqlite" and not parts.netloc:
            # The file is swapped out of the probe, so its name is checked
            # here as the store would (a NUL, raw or %00, is refused there).
            check_url_text(url)
            check_url_text(urllib.parse.unquote(parts.path), "SQLite path")
            probe = "sqlite:///:memory:" + (f"?{parts.query}" if parts.query else "")
        store = from_url(probe)
    except JobCreditsError as exc:
        return f"settings.JOBCREDITS['URL'] {redact_url(url)!r}: {redact_text(str(exc), url)}"
    except ImportError as exc:
        # The store's driver is not installed: the message names the extra,
        # and a check reports it rather than crashing `manage.py check`.
        return f"settings.JOBCREDITS['URL'] {redact_url(url)!r}: {redact_text(str(exc), url)}"
    store.close()
    return None


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


def _callable_problem(key: str, value: Any, what: str) -> tuple[Any, str | None]:
    """Import a dotted path (or take an object as it is) and check it is
    callable; returns (the object, None) or (None, why not)."""
    if callable(value):
        return value, None
    if not isinstance(value, str):
        return None, f"settings.JOBCREDITS[{key!r}] must be {what}, not {type(value).__name__}"
    try:
        obj = import_path(value)
    except Exception as exc:  # noqa: BLE001 - any import failure is the same misconfiguration
        return None, f"settings.JOBCREDITS[{key!r}] = {value!r} does not import: {exc}"
    if not callable(obj):
        return None, f"settings.JOBCREDITS[{key!r}] = {value!r} is not callable"
    return obj, None


def read(raw: Any) -> tuple[Config | None, list[Problem]]:
    """Validate a ``JOBCREDITS`` value; the Config is None when anything is wrong."""
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
    problems: list[Problem] = []
    for key in sorted(set(raw) - set(DEFAULTS), key=str):
        close = difflib.get_close_matches(str(key).upper(), list(DEFAULTS), n=1)
        hint = f"did you mean {close[0]!r}?" if close else None
        problems.append(
            Problem(
                "E004",
                f"unknown key {key!r} in settings.JOBCREDITS (accepted: {', '.join(DEFAULTS)})",
                hint,
            )
        )
    v = {**DEFAULTS, **{k: raw[k] for k in raw if k in DEFAULTS}}

    why = url_problem(v["URL"])
    if why is not None:
        problems.append(
            Problem(
                "E001",
                why,
                "write memory://, sqlite:///relative/path.db or sqlite:////absolute/path.db",
            )
        )
    try:
        # The ledger's own checks: positive seconds, lease <= ttl, max_uses.
        Ledger(ttl=v["TTL"], lease=v["LEASE"], max_uses=v["MAX_USES"]).close()
    except (InvalidArgument, ConfigurationError, TypeError) as exc:
        problems.append(Problem("E005", f"settings.JOBCREDITS: {exc}"))
    for key in ("BALANCES", "FAIL_OPEN", "ENTRY_POINTS"):
        if not isinstance(v[key], bool):
            problems.append(
                Problem(
                    "E005", f"settings.JOBCREDITS[{key!r}] must be True or False, not {v[key]!r}"
                )
            )
    rendering = DEFAULT_PROBLEMS
    try:
        rendering = problem_settings(
            v["PROBLEM_TYPE_BASE"],
            v["RETRY_AFTER_MAX"],
            type_base_key="settings.JOBCREDITS['PROBLEM_TYPE_BASE']",
            retry_after_max_key="settings.JOBCREDITS['RETRY_AFTER_MAX']",
        )
    except JobCreditsError as exc:
        problems.append(Problem("E005", exc.detail))
    try:
        header(v["JOB_HEADER"])
    except (InvalidArgument, ConfigurationError) as exc:
        problems.append(Problem("E005", f"settings.JOBCREDITS['JOB_HEADER']: {exc}"))
    if v["ON_MISSING"] not in ON_MISSING:
        problems.append(
            Problem(
                "E003",
                f'settings.JOBCREDITS[\'ON_MISSING\'] must be "charge" or "reject", '
                f"not {v['ON_MISSING']!r}",
                '"charge" bills a call without a job id as a job of its own; '
                '"reject" answers it 400',
            )
        )
    account = None
    if v["ACCOUNT"] is not None:
        account, why = _callable_problem(
            "ACCOUNT", v["ACCOUNT"], "a dotted path to a callable of the request"
        )
        if why is not None:
            problems.append(
                Problem(
                    "E002",
                    why,
                    "name a function that takes the request and returns the account "
                    "string, or None when the request is not authenticated",
                )
            )
    plugins: list[Any] = []
    if isinstance(v["PLUGINS"], (list, tuple)):
        for entry in v["PLUGINS"]:
            try:
                plugins.append(load_plugin(entry, key=PLUGINS_KEY))
            except (InvalidArgument, ConfigurationError) as exc:
                problems.append(Problem("E006", str(exc), PLUGINS_HINT))
    else:
        problems.append(
            Problem(
                "E006",
                f"{PLUGINS_KEY} must be a list, not {type(v['PLUGINS']).__name__}",
                f"e.g. [{v['PLUGINS']!r}]" if isinstance(v["PLUGINS"], str) else PLUGINS_HINT,
            )
        )
    if problems:
        return None, problems
    config = Config(
        url=v["URL"],
        ttl=float(v["TTL"]),
        lease=float(v["LEASE"]),
        balances=v["BALANCES"],
        max_uses=v["MAX_USES"],
        job_header=v["JOB_HEADER"],
        account=account,
        on_missing=v["ON_MISSING"],
        fail_open=v["FAIL_OPEN"],
        plugins=tuple(plugins),
        entry_points=v["ENTRY_POINTS"],
        problems=rendering,
    )
    return config, []


def raw_setting() -> Any:
    """``settings.JOBCREDITS``, or None when the project does not set it."""
    return getattr(settings, SETTING, None)


def build_ledger(config: Config) -> Ledger:
    """A new ledger as ``config`` describes; a plugin class is instantiated
    here, so each ledger gets its own plugin objects. A plugin that fails to
    instantiate, register or load (entry points) raises ImproperlyConfigured,
    and no store is left open."""
    try:
        plugins: list[object] = []
        for plugin in (instantiate(p, key=PLUGINS_KEY) for p in config.plugins):
            if not any(plugin is seen for seen in plugins):
                plugins.append(plugin)
        return ledger_from_url(
            config.url,
            ttl=config.ttl,
            lease=config.lease,
            balances=config.balances,
            max_uses=config.max_uses,
            plugins=plugins,
            entry_points=config.entry_points,
            plugins_key=PLUGINS_KEY,
            entry_points_key="settings.JOBCREDITS['ENTRY_POINTS']",
        )
    except (InvalidArgument, ConfigurationError) as exc:
        raise SettingsError(f"invalid settings.JOBCREDITS: {exc}") from exc


class _Cache:
    """The process's parsed settings and ledger, built once under a lock so
    that concurrent first requests share one ledger (two ledgers on one memory
    store would be two separate ledgers)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.config: Config | None = None
        self.ledger: Ledger | None = None


_cache = _Cache()


def get_config() -> Config:
    """The validated settings; raises ImproperlyConfigured when they are wrong."""
    config = _cache.config
    if config is not None:
        return config
    with _cache.lock:
        if _cache.config is None:
            config, problems = read(raw_setting())
            if config is None:
                details = "; ".join(p.msg + (f" ({p.hint})" if p.hint else "") for p in problems)
                raise SettingsError(
                    f"invalid settings.JOBCREDITS: {details} (manage.py check lists them)"
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
    ledger = _cache.ledger
    if ledger is not None:
        return ledger
    with _cache.lock:
        if _cache.ledger is None:
            _cache.ledger = build_ledger(get_config())
        return _cache.ledger


async def aget_ledger() -> Ledger:
    """:func:`get_ledger` for async code: the first call builds the ledger in a
    worker thread, since opening a store may block."""
    ledger = _cache.ledger
    if ledger is not None:
        return ledger
    return await sync_to_async(get_ledger, thread_sensitive=False)()


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
