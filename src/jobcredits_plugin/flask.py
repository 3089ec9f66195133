"""Flask adapter: charge a view once per job, configured from ``app.config``.

::

    from flask import Flask
    from jobcredits_plugin.flask import JobCredits, charges_credit, job_credit

    app = Flask(__name__)
    app.config["JOBCREDITS_URL"] = "sqlite:///jobs.db"
    app.config["JOBCREDITS_ACCOUNT"] = "myapp.auth:account_of"  # a callable of flask.request
    app.config["JOBCREDITS_PLUGINS"] = ["myapp.metrics:plugin"]  # hook plugins (optional)
    JobCredits(app)

    @app.post("/v1/summarize")
    @charges_credit(cost=1, scope="summarize")
    def summarize():
        return {"outcome": job_credit().outcome}

The extension keeps its state on the app (``app.extensions["jobcredits"]``),
so one ``JobCredits()`` object serves any number of apps built by a factory,
each with its own ledger. Everything with a billing consequence (charge,
confirm or refund by the outcome, the response headers, the problem+json
body) comes from ``jobcredits_plugin._web``, shared with every other
adapter; this module only reads Flask's request and writes Flask's response.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import attrs

try:
    import flask
    from werkzeug.exceptions import HTTPException
except ImportError as exc:  # tested by hiding flask from sys.modules
    raise ImportError(
        'jobcredits_plugin.flask needs Flask: pip install "jobcredits-plugin[flask]"'
    ) from exc

from ._call import (
    DEFAULT_JOB_HEADER,
    CallSpec,
    JobCall,
    astart_call,
    bound,
    current_charge,
    start_call,
)
from ._errors import (
    ConfigurationError,
    InvalidArgument,
    JobCreditsError,
)
from ._flask_cli import build_group
from ._headers import environ_header, environ_key
from ._ledger import Ledger
from ._problems import DEFAULT_PROBLEMS, Problems, render_problem
from ._records import Charge
from ._settings import DEFAULTS as SETTINGS_DEFAULTS
from ._settings import Settings, import_callable, report
from ._validation import configuration
from ._warnings import is_in_process_default, warn_in_process
from ._web import Options, WatchedBody, route_options, waits_for_body

__all__ = [
    "JobCredits",
    "JobCreditsState",
    "charges_credit",
    "cli",
    "get_ledger",
    "get_state",
    "job_credit",
    "problem_response",
]

log = logging.getLogger("jobcredits_plugin")

#: The key of the adapter's state in ``app.extensions``.
EXTENSION_KEY = "jobcredits"
#: Where the current request's ``JobCall`` is kept in the WSGI environ, so
#: that code running after the view (``after_request`` functions, error
#: handlers, a streamed body under ``stream_with_context``) still finds the
#: request's charge. The environ, not ``flask.g``: a request nested in another
#: one of the same app (a test client called from a view) shares its ``g``.
_CALL_KEY = "jobcredits.call"

#: What ``app.config`` holds before the app says otherwise. Not
#: ``JOBCREDITS_ACCOUNT``: who pays is the app's decision (see ``init_app``).
DEFAULTS: Mapping[str, Any] = {
    f"JOBCREDITS_{key}": value for key, value in SETTINGS_DEFAULTS.items() if key != "ACCOUNT"
}

AccountFunc = Callable[[flask.Request], "str | None"]
F = TypeVar("F", bound=Callable[..., Any])


@attrs.define(slots=True)
class JobCreditsState:
    """What the adapter keeps on one app, as ``app.extensions["jobcredits"]``.

    Kept on the app rather than on the :class:`JobCredits` object so that
    several apps (tests, an app factory) never share a ledger by accident.
    The decorator reads it on each request, so a test may swap a field.
    """

    ledger: Ledger
    account: AccountFunc | None = None
    job_header: str = DEFAULT_JOB_HEADER
    on_missing: str = "charge"
    fail_open: bool = False
    #: How errors are rendered (``JOBCREDITS_PROBLEM_TYPE_BASE``,
    #: ``JOBCREDITS_RETRY_AFTER_MAX``).
    problems: Problems = DEFAULT_PROBLEMS


# -- configuration ------------------------------------------------------------------


def _spell(key: str) -> str:
    return f"JOBCREDITS_{key}"


# -- the extension ------------------------------------------------------------------


class JobCredits:
    """The Flask extension: one ledger per app, the error handler, the CLI.

    :param app: the app to set up now; or call :meth:`init_app` later (the
        app factory pattern).
    :param ledger: a ledger to use instead of one built from
        ``JOBCREDITS_URL`` (the ledger's own options, ``JOBCREDITS_TTL`` and
        the like, ``JOBCREDITS_PLUGINS`` and ``JOBCREDITS_ENTRY_POINTS`` too,
        are then ignored: register plugins on that ledger). Every app this
        object is set up on shares it.
    :param account: the account callable, instead of ``JOBCREDITS_ACCOUNT``.

    The extension object holds only these defaults; each app's state lives
    in ``app.extensions["jobcredits"]`` (a :class:`JobCreditsState`).
    """

    @configuration()
    def __init__(
        self,
        app: flask.Flask | None = None,
        ledger: Ledger | None = None,
        *,
        account: AccountFunc | str | None = None,
    ) -> None:
        if ledger is not None and not isinstance(ledger, Ledger):
            raise InvalidArgument(f"ledger must be a Ledger, not {type(ledger).__name__}")
        self._ledger = ledger
        self._account = import_callable(account, "account")
        if app is not None:
            self.init_app(app)

    @configuration()
    def init_app(self, app: flask.Flask, *, ledger: Ledger | None = None) -> JobCreditsState:
        """Set up ``app``: read its config, build (or take) its ledger,
        register the problem+json error handler and the ``flask jobcredits``
        commands. ``ledger`` here wins over the constructor's, which wins
        over ``JOBCREDITS_URL``. Returns the app's state.

        A ledger built from ``JOBCREDITS_URL`` gets the plugins
        ``JOBCREDITS_PLUGINS`` names (objects, or import strings
        ``"pkg.mod:attr"`` / ``"pkg.mod.attr"``; a class is instantiated for
        this app's ledger) and, with ``JOBCREDITS_ENTRY_POINTS``, those of the
        installed packages' ``jobcredits_plugin`` entry points.

        Every ``JOBCREDITS_*`` key is read by the settings model Django's
        checks use too (strings from the environment converted); the
        problems found raise one :class:`~jobcredits_plugin.ConfigurationError`
        naming them all, before any store is opened.

        Who pays must be said: ``JOBCREDITS_ACCOUNT`` (or ``account=``), or
        ``JOBCREDITS_ACCOUNT = None`` set on purpose when every charged view
        passes its own ``account=``; with neither, this raises
        :class:`~jobcredits_plugin.ConfigurationError` (not a 500 at the first
        request). Outside debug and testing mode, a ledger on the in-process
        default store (``memory://``) issues an
        :class:`~jobcredits_plugin.InProcessStoreWarning`: with several worker
        processes, each would charge the same job again."""
        account_said = self._account is not None or "JOBCREDITS_ACCOUNT" in app.config
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        chosen = ledger if ledger is not None else self._ledger
        if chosen is not None and not isinstance(chosen, Ledger):
            raise InvalidArgument(f"ledger must be a Ledger, not {type(chosen).__name__}")
        built = chosen is None
        settings = self._read_config(app, built)
        account = self._account or settings.account
        _check_account_said(app, account_said)
        if chosen is None:
            chosen = settings.build_ledger(spell=_spell)
        _warn_about_ledger(app, chosen, built, settings)
        state = JobCreditsState(
            ledger=chosen,
            account=account,
            job_header=settings.job_header,
            on_missing=settings.on_missing,
            fail_open=settings.fail_open,
            problems=settings.problems,
        )
        app.extensions[EXTENSION_KEY] = state
        app.register_error_handler(JobCreditsError, problem_response)
        app.cli.add_command(cli)
        return state

    @property
    def ledger(self) -> Ledger:
        """The ledger of the current app (needs an app context)."""
        return get_ledger()

    def _read_config(self, app: flask.Flask, built: bool) -> Settings:
        """Every ``JOBCREDITS_*`` key of ``app.config``, checked before any
        store is opened (a SQLite URL would create its file); all problems
        are named at once. The ledger's own keys only when the extension
        builds the ledger (``built``)."""
        cfg = app.config
        raw = {key: cfg[_spell(key)] for key in SETTINGS_DEFAULTS if _spell(key) in cfg}
        if self._account is not None:
            raw.pop("ACCOUNT", None)  # the constructor's account wins, unread
        settings, found = Settings.from_mapping(
            raw, spell=_spell, name="app.config", environ=True, ledger_keys=built
        )
        if settings is None:
            raise ConfigurationError(report(found, f"config of app {app.name!r}"))
        return settings


def _warn_about_ledger(app: flask.Flask, ledger: Ledger, built: bool, settings: Settings) -> None:
    """Say aloud what would otherwise go unnoticed: a ledger on the
    in-process default store outside debug and testing mode (each worker
    process would charge the same job again), and plugin settings ignored
    because the app passed a ledger of its own."""
    if is_in_process_default(ledger.store) and not (app.debug or app.testing):
        warn_in_process(
            f"Flask app {app.name!r}",
            "set app.config['JOBCREDITS_URL']"
            if built
            else "build the ledger given to JobCredits with Ledger.from_url(url)",
        )
    if not built and (app.config["JOBCREDITS_PLUGINS"] or settings.entry_points):
        # Like JOBCREDITS_TTL, these describe the ledger the extension
        # builds; a ledger passed in was built, plugins and all, by the app
        # (registering them on it here would register them twice when one
        # ledger serves several apps). Said aloud, since lost metrics or an
        # audit trail that never started go unnoticed.
        log.warning(
            "app %r: JOBCREDITS_PLUGINS and JOBCREDITS_ENTRY_POINTS are ignored "
            "because a ledger was passed to the extension; register plugins on "
            "that ledger (Ledger(plugins=..., entry_points=...) or ledger.register())",
            app.name,
        )


def _check_account_said(app: flask.Flask, said: bool) -> None:
    """Who pays is the app's decision, so not saying it fails the setup, not
    the first request (as a 500)."""
    if not said:
        raise ConfigurationError(
            f"app {app.name!r}: JOBCREDITS_ACCOUNT is not set: set it to a callable of "
            "flask.request returning the paying account (or a dotted path to one), pass "
            "JobCredits(account=...), or set JOBCREDITS_ACCOUNT = None if every charged "
            "view passes its own account= (or the app charges no view)"
        )


def get_state(app: flask.Flask | None = None) -> JobCreditsState:
    """The adapter's state on ``app`` (default: the current app)."""
    app = app if app is not None else flask.current_app
    state = app.extensions.get(EXTENSION_KEY)
    if state is None:
        raise RuntimeError(
            f"jobcredits is not set up on app {app.name!r}: call JobCredits(app) "
            "or JobCredits().init_app(app) first"
        )
    return cast(JobCreditsState, state)


def get_ledger(app: flask.Flask | None = None) -> Ledger:
    """The ledger of ``app`` (default: the current app), for code outside a
    decorated view: granting credits, a snapshot in an admin view, tests."""
    return get_state(app).ledger


def problem_response(err: JobCreditsError) -> flask.Response:
    """The RFC 9457 answer to a :class:`~jobcredits_plugin.JobCreditsError` (the error handler
    :meth:`JobCredits.init_app` registers; an app may register its own).

    Rendered with the current app's ``JOBCREDITS_PROBLEM_TYPE_BASE`` and
    ``JOBCREDITS_RETRY_AFTER_MAX``; a 5xx tells the client a generic
    sentence and logs the full detail."""
    instance = flask.request.path if flask.has_request_context() else None
    settings = DEFAULT_PROBLEMS
    if flask.has_app_context():
        state = flask.current_app.extensions.get(EXTENSION_KEY)
        if isinstance(state, JobCreditsState):
            settings = state.problems
    status, headers, body = render_problem(err, instance, settings)
    return flask.Response(body, status=status, headers=headers)


def job_credit() -> Charge | None:
    """The :class:`~jobcredits_plugin.Charge` of the current request.

    Inside a decorated view it is :func:`jobcredits_plugin.current_charge`;
    unlike that, it still answers after the view returned, for the rest of the
    request (``after_request`` functions, error handlers, a body streamed
    with ``flask.stream_with_context``). None outside a charged request,
    and when the store was down and ``fail_open`` let the call through.
    """
    if flask.has_request_context():
        call: JobCall | None = flask.request.environ.get(_CALL_KEY)
        if call is not None:
            return call.charge
    return current_charge()


# -- the decorator ------------------------------------------------------------------


def _http_status(exc: HTTPException) -> int | None:
    """The status an HTTP exception answers with (``abort(response)`` carries
    its own); None, a failure, for one without a code."""
    if exc.response is not None:
        return exc.response.status_code
    return exc.code


def _put_headers(response: flask.Response, call: JobCall, job_header: str) -> flask.Response:
    headers = response.headers
    for name, value in call.headers(job_header):
        headers[name] = value
    return response


def _watch_stream(response: flask.Response, call: JobCall) -> bool:
    """A streamed response is settled at its body's first byte (see
    :class:`~jobcredits_plugin._web.WatchedBody`): True when its body is now
    watched, False when the call must be settled now."""
    status = response.status_code
    if not response.is_streamed or not waits_for_body(flask.request.method, status):
        return False
    response.response = WatchedBody(response.response, call, status)
    return True


def _headers_later(call: JobCall, job_header: str) -> None:
    """The view raised: the response (an error page, a problem document) is
    built later by an error handler, so put the call's headers on it then."""
    flask.after_this_request(lambda response: _put_headers(response, call, job_header))


@configuration()
def charges_credit(
    cost: int | Callable[[flask.Request], int] = 1,
    scope: str = "default",
    tier: str | Callable[[flask.Request], str | None] | None = None,
    backend: str | Callable[[flask.Request], str | None] | None = None,
    account: AccountFunc | None = None,
    ledger: Ledger | None = None,
    on_missing: str | None = None,
    fail_open: bool | None = None,
    header: str | None = None,
) -> Callable[[F], F]:
    """Charge each call of a Flask view once per job.

    :param cost: credits a new job costs; an int or a callable of the request.
    :param scope: the product whose calls share jobs.
    :param tier: recorded with the charge (a value or a callable of the
        request); follow-ups read what the first call paid for.
    :param backend: like ``tier``.
    :param account: the account callable for this view, instead of the app's.
    :param ledger: a ledger for this view, instead of the app's.
    :param on_missing: ``"charge"`` or ``"reject"`` a call without a job id
        (default: ``JOBCREDITS_ON_MISSING``).
    :param fail_open: let calls through uncharged while the store is down
        (default: ``JOBCREDITS_FAIL_OPEN``).
    :param header: the job id header for this view (default:
        ``JOBCREDITS_JOB_HEADER``).

    The view's return value is turned into a response at once, and its
    status settles the charge: 5xx refunds, anything else confirms. A
    streamed response (a generator body) is settled when its body produces
    its first byte, not after the whole body, so a long stream cannot outlast
    the lease, and a body that fails before its first byte (answered 500 by
    the server) is refunded; its headers, sent first, say ``charged``. An
    exception refunds, except a werkzeug ``HTTPException`` below 500 (the
    client's mistake was served). Works on ``async def`` views as well.
    """
    opts = route_options(
        scope=scope,
        cost=cost,
        tier=tier,
        backend=backend,
        account=account,
        ledger=ledger,
        on_missing=on_missing,
        fail_open=fail_open,
        header=header,
        request_kind="Flask request",
    )

    def decorate(view: F) -> F:
        if inspect.iscoroutinefunction(view):
            return cast(F, _async_view(view, opts))
        return cast(F, _sync_view(view, opts))

    return decorate


def _start(opts: Options) -> tuple[Ledger, Any, CallSpec, str, dict[str, Any]]:
    """What charging the current request takes: the ledger, the account, the
    call's spec, the job header and the request's environ, from the view's
    options over the app's."""
    state = get_state()
    req = flask.request._get_current_object()  # type: ignore[attr-defined]
    account_of = opts.account if opts.account is not None else state.account
    if account_of is None:
        raise RuntimeError(
            "jobcredits needs to know who pays: set JOBCREDITS_ACCOUNT (a callable "
            "of flask.request) or pass account= to charges_credit"
        )
    account = account_of(req)
    job_header = opts.header or state.job_header
    environ = req.environ
    # The job id straight from the environ: no EnvironHeaders lookup.
    spec = opts.call_spec(state, req, account_of, environ_header(environ, environ_key(job_header)))
    chosen = opts.ledger if opts.ledger is not None else state.ledger
    return chosen, account, spec, job_header, environ


def _sync_view(view: Callable[..., Any], opts: Options) -> Callable[..., flask.Response]:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> flask.Response:
        chosen, account, spec, job_header, environ = _start(opts)
        call = start_call(chosen, account, spec)
        environ[_CALL_KEY] = call
        with bound(call):
            try:
                response = flask.make_response(view(*args, **kwargs))
            except HTTPException as exc:
                call.finish(_http_status(exc))
                _headers_later(call, job_header)
                raise
            except BaseException:
                call.finish(None)
                _headers_later(call, job_header)
                raise
        if not _watch_stream(response, call):
            call.finish(response.status_code)
        return _put_headers(response, call, job_header)

    return wrapper


def _async_view(view: Callable[..., Any], opts: Options) -> Callable[..., Any]:
    @functools.wraps(view)
    async def async_wrapper(*args: Any, **kwargs: Any) -> flask.Response:
        chosen, account, spec, job_header, environ = _start(opts)
        call = await astart_call(chosen, account, spec)
        environ[_CALL_KEY] = call
        with bound(call):
            try:
                response = flask.make_response(await view(*args, **kwargs))
            except HTTPException as exc:
                await call.afinish(_http_status(exc))
                _headers_later(call, job_header)
                raise
            except BaseException as exc:  # cancelled included
                await call.afinish_raised(exc)
                _headers_later(call, job_header)
                raise
        if not _watch_stream(response, call):
            await call.afinish(response.status_code)
        return _put_headers(response, call, job_header)

    return async_wrapper


# -- the CLI ------------------------------------------------------------------------

#: The ``flask jobcredits`` commands: those of ``jobcredits``, on the app's ledger.
cli = build_group(get_ledger, _spell)
