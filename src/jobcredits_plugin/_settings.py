"""One settings model for every adapter that reads a configuration source.

Flask reads ``app.config["JOBCREDITS_*"]`` (often filled from environment
strings), Django reads ``settings.JOBCREDITS`` (Python values). Both mean
the same twelve settings, so they are read, converted and checked here,
once: :meth:`Settings.from_mapping` returns the settings, or every problem
found, each with the id of the Django system check that reports it
(``E001`` ...). Django's checks list the problems; Flask's ``init_app`` raises
one :class:`~jobcredits_plugin.ConfigurationError` naming them all. Keeping
a single reader means ``manage.py check``, a Django request and a Flask
startup can never disagree about what a value means.

The adapters differ in two things only, passed in as arguments: how a key is
spelled in messages (``JOBCREDITS_TTL`` or ``settings.JOBCREDITS['TTL']``),
and whether strings from the environment are converted (``"0"`` is False,
``"120"`` is 120 seconds). Django keeps its settings strict (a string flag
there is a typo, and ``FAIL_OPEN="false"`` must not give the service away).
"""

from __future__ import annotations

import difflib
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ._call import DEFAULT_JOB_HEADER
from ._errors import DEFAULT_RETRY_AFTER_MAX, ConfigurationError, InvalidArgument, JobCreditsError
from ._headers import header
from ._ledger import Ledger
from ._plugins import import_object, instantiate, ledger_from_url, load_plugin
from ._problems import DEFAULT_PROBLEMS, Problems, problems
from .stores import ACCEPTED, from_url, redact_url
from .stores._urls import check_url_text, redact_text

__all__ = ["DEFAULTS", "Problem", "Settings", "import_callable", "url_problem"]

#: Every setting, by its bare name, with its default.
DEFAULTS: Mapping[str, Any] = {
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

#: The settings that only describe the ledger an adapter builds; an app that
#: hands the adapter a ready ledger has them ignored, so they are not checked.
LEDGER_KEYS = frozenset({"URL", "TTL", "LEASE", "BALANCES", "MAX_USES", "PLUGINS"})

PLUGINS_HINT = (
    "list plugin objects or classes, or import strings naming them: "
    '"package.module:attribute" or "package.module.attribute" (a class is '
    "instantiated with no arguments)"
)
URL_HINT = f"write one of {ACCEPTED}"
ACCOUNT_HINT = (
    "name a function that takes the request and returns the account "
    "string, or None when the request is not authenticated"
)
ON_MISSING_HINT = (
    '"charge" bills a call without a job id as a job of its own; "reject" answers it 400'
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@attrs.frozen
class Problem:
    """One thing wrong with the settings, in the form a system check reports.

    ``id`` is the Django check id without the ``jobcredits.`` prefix (``E001``).
    """

    id: str
    msg: str
    hint: str | None = None

    def __str__(self) -> str:
        return self.msg + (f" ({self.hint})" if self.hint else "")


@attrs.frozen(kw_only=True)
class Settings:
    """The settings after conversion and checks, dotted paths imported.

    ``account`` None means "the adapter's default" (Django: the authenticated
    ``request.user``; Flask: every view passes its own). ``plugins`` holds the
    imported objects; a class among them is instantiated for each ledger
    :meth:`build_ledger` builds.
    """

    url: str = DEFAULTS["URL"]
    ttl: float = DEFAULTS["TTL"]
    lease: float = DEFAULTS["LEASE"]
    balances: bool = False
    max_uses: int | None = None
    job_header: str = DEFAULT_JOB_HEADER
    account: Callable[..., Any] | None = None
    on_missing: str = "charge"
    fail_open: bool = False
    plugins: tuple[Any, ...] = ()
    entry_points: bool = False
    #: How errors are rendered (``PROBLEM_TYPE_BASE``, ``RETRY_AFTER_MAX``).
    problems: Problems = DEFAULT_PROBLEMS

    @classmethod
    def from_mapping(
        cls,
        raw: Mapping[str, Any],
        *,
        spell: Callable[[str], str],
        name: str,
        environ: bool = False,
        unknown_keys: bool = False,
        ledger_keys: bool = True,
    ) -> tuple[Settings | None, list[Problem]]:
        """Read the settings ``raw`` holds under their bare names (``"TTL"``).

        ``spell`` turns a bare name into the app's spelling for messages;
        ``name`` names the whole source (``settings.JOBCREDITS``).
        ``environ`` converts strings (flags, seconds, ``MAX_USES``) the way
        an environment variable writes them. ``unknown_keys`` reports keys
        that are no setting (a typo such as ``TIL``). Without
        ``ledger_keys`` the settings of the ledger are neither checked nor
        read (the app passed its own ledger). Returns the settings and no
        problem, or None and every problem found.
        """
        # One line per setting below, in the order the problems are listed:
        # the table reads best whole, so this function stays longer than ~60.
        found = _unknown_keys(raw, name) if unknown_keys else []
        v = {**DEFAULTS, **{k: raw[k] for k in raw if k in DEFAULTS}}
        out: dict[str, Any] = {}

        def take(key: str, problem_id: str, read: Callable[[Any], Any], hint: Any = None) -> None:
            try:
                out[key.lower()] = read(v[key])
            except JobCreditsError as exc:
                why = hint(v[key]) if callable(hint) else hint
                found.append(Problem(problem_id, exc.detail, why))

        if ledger_keys:
            why = url_problem(v["URL"], spell("URL"))
            if why is not None:
                found.append(Problem("E001", why, URL_HINT))
            out["url"] = v["URL"]
            seconds = _seconds if environ else _same
            take("TTL", "E005", lambda x: seconds(spell("TTL"), x))
            take("LEASE", "E005", lambda x: seconds(spell("LEASE"), x))
            take("MAX_USES", "E005", lambda x: _count(spell("MAX_USES"), x) if environ else x)
            if {"ttl", "lease", "max_uses"} <= set(out):
                try:
                    # The ledger's own checks: positive seconds, lease <= ttl, max_uses.
                    Ledger(ttl=out["ttl"], lease=out["lease"], max_uses=out["max_uses"]).close()
                except (InvalidArgument, ConfigurationError, TypeError) as exc:
                    found.append(Problem("E005", f"{name}: {exc}"))
                else:
                    out["ttl"], out["lease"] = float(out["ttl"]), float(out["lease"])
            take("BALANCES", "E005", lambda x: _flag(spell("BALANCES"), x, environ))
            take("PLUGINS", "E006", lambda x: _plugins(spell("PLUGINS"), x, found), _plugins_hint)
        take("FAIL_OPEN", "E005", lambda x: _flag(spell("FAIL_OPEN"), x, environ))
        take("ENTRY_POINTS", "E005", lambda x: _flag(spell("ENTRY_POINTS"), x, environ))
        take("JOB_HEADER", "E005", lambda x: _header_name(spell("JOB_HEADER"), x))
        take("ON_MISSING", "E003", lambda x: _on_missing(spell("ON_MISSING"), x), ON_MISSING_HINT)
        take("ACCOUNT", "E002", lambda x: import_callable(x, spell("ACCOUNT")), ACCOUNT_HINT)
        try:
            out["problems"] = problems(
                v["PROBLEM_TYPE_BASE"],
                v["RETRY_AFTER_MAX"],
                type_base_key=spell("PROBLEM_TYPE_BASE"),
                retry_after_max_key=spell("RETRY_AFTER_MAX"),
            )
        except JobCreditsError as exc:
            found.append(Problem("E005", exc.detail))
        if found:
            return None, found
        return cls(**out), []

    @classmethod
    def from_keywords(cls, name: str, **keywords: Any) -> Settings:
        """The web settings an adapter takes as keyword arguments (FastAPI's
        ``JobCredits``, the middleware: ``job_header=``, ``on_missing=``,
        ``fail_open=``, ``entry_points=``, ``problem_type_base=``,
        ``retry_after_max=``), read by the same checks as a configuration
        source's, strictly (Python values), and named as the keywords are.
        Raises one :class:`~jobcredits_plugin.ConfigurationError` naming every
        problem; ``name`` says whose keywords they are."""
        settings, found = cls.from_mapping(
            {key.upper(): value for key, value in keywords.items()},
            spell=str.lower,
            name=name,
            ledger_keys=False,
        )
        if settings is None:
            raise ConfigurationError(report(found, f"arguments of {name}"))
        return settings

    def build_ledger(self, *, spell: Callable[[str], str]) -> Ledger:
        """A new ledger as these settings describe. A plugin class is
        instantiated here, so each ledger gets its own plugin objects; a
        plugin that fails to instantiate, register or load raises
        :class:`~jobcredits_plugin.ConfigurationError`, and no store is left
        open."""
        plugins: list[object] = []
        for plugin in (instantiate(p, key=spell("PLUGINS")) for p in self.plugins):
            if not any(plugin is seen for seen in plugins):
                plugins.append(plugin)
        return ledger_from_url(
            self.url,
            ttl=self.ttl,
            lease=self.lease,
            balances=self.balances,
            max_uses=self.max_uses,
            plugins=plugins,
            entry_points=self.entry_points,
            plugins_key=spell("PLUGINS"),
            entry_points_key=spell("ENTRY_POINTS"),
        )


def report(problems_found: list[Problem], name: str) -> str:
    """The problems as one sentence, for an exception raised at startup."""
    return f"invalid {name}: " + "; ".join(str(p) for p in problems_found)


# -- readers: a value or a JobCreditsError naming the key ---------------------------


def _same(key: str, value: Any) -> Any:
    return value


def _unknown_keys(raw: Mapping[str, Any], name: str) -> list[Problem]:
    """A problem for each key of ``raw`` that is no setting (a typo such as
    ``TIL``), with the closest setting as its hint."""
    found = []
    for key in sorted(set(raw) - set(DEFAULTS), key=str):
        close = difflib.get_close_matches(str(key).upper(), list(DEFAULTS), n=1)
        found.append(
            Problem(
                "E004",
                f"unknown key {key!r} in {name} (accepted: {', '.join(DEFAULTS)})",
                f"did you mean {close[0]!r}?" if close else None,
            )
        )
    return found


def _seconds(key: str, value: Any) -> Any:
    """Seconds from the environment: numeric strings are converted; the
    ledger checks the range."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ConfigurationError(f"{key} must be a number of seconds, not {value!r}") from None
    return value


def _count(key: str, value: Any) -> Any:
    """``MAX_USES`` from the environment: digits, or empty / ``none`` for no limit."""
    if isinstance(value, str):
        if not value.strip() or value.strip().lower() == "none":
            return None
        try:
            return int(value)
        except ValueError:
            raise ConfigurationError(f"{key} must be an int, not {value!r}") from None
    return value


def _flag(key: str, value: Any, environ: bool) -> bool:
    """A yes/no setting. Strict: True or False only (``"false"`` is a truthy
    string, and read as a flag it could turn fail-open on). From the
    environment: also 0/1 and the usual words, so ``"0"`` stays False."""
    if isinstance(value, bool):
        return value
    if not environ:
        raise ConfigurationError(f"{key} must be True or False, not {value!r}")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigurationError(f"{key} must be a boolean, not {value!r}")


def _header_name(key: str, value: Any) -> str:
    try:
        header(value)
    except JobCreditsError as exc:
        raise ConfigurationError(f"{key}: {exc.detail}") from None
    return str(value)


def _on_missing(key: str, value: Any) -> str:
    if value not in ("charge", "reject"):
        raise ConfigurationError(f'{key} must be "charge" or "reject", not {value!r}')
    return str(value)


def _plugins(key: str, value: Any, found: list[Problem]) -> tuple[Any, ...]:
    """Every entry loaded (not instantiated); each bad entry is a problem of
    its own, so that one check run lists them all."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigurationError(
            f"{key} must be a list of plugins or import strings, not {type(value).__name__}"
        )
    loaded = []
    for entry in value:
        try:
            loaded.append(load_plugin(entry, key=key))
        except (InvalidArgument, ConfigurationError) as exc:
            found.append(Problem("E006", exc.detail, PLUGINS_HINT))
    return tuple(loaded)


def _plugins_hint(value: Any) -> str:
    return f"e.g. [{value!r}]" if isinstance(value, str) else PLUGINS_HINT


def import_callable(value: Any, key: str) -> Callable[..., Any] | None:
    """A callable setting (the account), given as the object or as an import
    string (``pkg.mod:func`` or ``pkg.mod.func``), imported at startup so
    that a typo fails the deploy rather than every request."""
    if value is None or callable(value):
        return value  # type: ignore[no-any-return]
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(
            f"{key} must be a callable or a dotted path to one, not {type(value).__name__}"
            + (f" {value!r}" if isinstance(value, str) else "")
        )
    path = value.strip()
    try:
        target = import_object(path)
    except Exception as exc:
        raise ConfigurationError(f"{key} = {path!r} does not import: {exc}") from exc
    if not callable(target):
        raise ConfigurationError(f"{key} = {path!r} is not callable")
    return target  # type: ignore[no-any-return]


def url_problem(url: Any, key: str) -> str | None:
    """Why ``url`` cannot name a store, or None when it can.

    Parsed by the stores' own :func:`~jobcredits_plugin.stores.from_url`, so
    the check and the runtime never disagree, but without opening anything: a
    SQLite URL is probed with its file swapped for ``:memory:``, because
    ``manage.py check`` must not create database files (nor may a Flask
    startup that fails on another setting).
    """
    if not isinstance(url, str):
        return f"{key} must be a string, not {type(url).__name__}"
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
    except (JobCreditsError, ImportError) as exc:
        # ImportError: the store's driver is not installed; the message names
        # the extra, and a check reports it rather than crashing.
        return f"{key} {redact_url(url)!r}: {redact_text(str(exc), url)}"
    store.close()
    return None
