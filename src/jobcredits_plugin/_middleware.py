"""What the WSGI and ASGI middleware share: which requests they charge
(routes by method and path, checked at startup) and their settings.

The two middleware differ only in how a request arrives and a response
leaves; choosing a request's route and its charge options is written here,
once, in :class:`RoutedMiddleware`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

import attrs

from ._call import DEFAULT_JOB_HEADER, check_on_missing, check_options
from ._errors import DEFAULT_RETRY_AFTER_MAX, InvalidArgument, JobCreditsError
from ._headers import reader
from ._ledger import Ledger
from ._problems import render_problem
from ._settings import Settings
from ._validation import configuration
from ._warnings import is_in_process_default, warn_in_process
from ._web import Options

__all__ = ["Route", "RoutedMiddleware", "compile_routes"]

_ROUTE_KEY = re.compile(r"^(?:(?P<methods>[A-Z]+(?:\|[A-Z]+)*)\s+)?(?P<path>/\S*)$")


@attrs.frozen
class Route:
    """Which requests a middleware charges, and how.

    ``path`` is an exact path or a shell-style pattern (``/v1/jobs/*``);
    ``methods`` None means every method. ``cost``, ``tier`` and ``backend`` are
    values or callables of the request (the WSGI environ or the ASGI scope).
    ``header`` overrides the middleware's job header for this route.
    """

    path: str
    methods: frozenset[str] | None = None
    scope: str = "default"
    cost: int | Callable[..., int] = 1
    tier: str | Callable[..., str | None] | None = None
    backend: str | Callable[..., str | None] | None = None
    on_missing: str | None = None
    header: str | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method.upper() not in self.methods:
            return False
        if any(c in self.path for c in "*?["):
            return fnmatch.fnmatchcase(path, self.path)
        return path == self.path


_ROUTE_OPTIONS = {"scope", "cost", "tier", "backend", "on_missing", "header"}


@configuration()
def compile_routes(
    routes: Mapping[str, Any] | Sequence[Route],
) -> tuple[Route, ...]:
    """Turn the middleware's ``routes=`` into :class:`Route` objects.

    Accepts a sequence of routes, or a mapping from ``"[METHOD[|METHOD]] /path"``
    to a cost (int), a dict of route options, or a :class:`Route`::

        {"POST /v1/summarize": {"scope": "summarize", "cost": 2},
         "/v1/transcribe": 1,
         "GET|POST /v1/jobs/*": {"scope": "jobs"}}

    Checked at startup, so a typo fails the deploy, not the first request.
    """
    if not isinstance(routes, Mapping):
        given: Any = routes  # whatever the app passed, typed or not
        if isinstance(given, (str, bytes)) or not isinstance(given, Iterable):
            raise InvalidArgument(
                f"routes must be a dict or a list of Route objects, not {type(given).__name__}"
            )
        out = tuple(given)
        for r in out:
            if not isinstance(r, Route):
                raise InvalidArgument(f"routes must be Route objects, not {type(r).__name__}")
        return out
    compiled: list[Route] = []
    for key, spec in routes.items():
        m = _ROUTE_KEY.match(key.strip()) if isinstance(key, str) else None
        if m is None:
            raise InvalidArgument(
                f"route {key!r} must look like '/path' or 'POST /path' or 'GET|POST /path/*'"
            )
        methods = frozenset(m["methods"].split("|")) if m["methods"] else None
        if isinstance(spec, Route):
            compiled.append(attrs.evolve(spec, path=m["path"], methods=methods or spec.methods))
            continue
        if isinstance(spec, int) and not isinstance(spec, bool):
            options: dict[str, Any] = {"cost": spec}
        elif isinstance(spec, Mapping):
            unknown = set(spec) - _ROUTE_OPTIONS
            if unknown:
                raise InvalidArgument(
                    f"route {key!r}: unknown option(s) {sorted(unknown)}; "
                    f"accepted: {sorted(_ROUTE_OPTIONS)}"
                )
            options = dict(spec)
        else:
            raise InvalidArgument(f"route {key!r}: give a cost (int), a dict of options or a Route")
        check_options(**{k: v for k, v in options.items() if k != "header"})
        compiled.append(Route(path=m["path"], methods=methods, **options))
    return tuple(compiled)


def _route_options(routes: Sequence[Route]) -> tuple[tuple[Route, Options], ...]:
    """Each route with the :class:`~jobcredits_plugin._web.Options` its
    requests are charged by, its own settings checked (a ``Route`` object
    passed as it is has not been through :func:`compile_routes`' checks)."""
    for route in routes:
        if route.on_missing is not None:
            check_on_missing(route.on_missing)
    for route in routes:
        if route.header is not None:
            reader(route.header)
    return tuple(
        (
            route,
            Options(
                scope=route.scope,
                cost=route.cost,
                tier=route.tier,
                backend=route.backend,
                on_missing=route.on_missing,
                header=route.header,
            ),
        )
        for route in routes
    )


AppT = TypeVar("AppT")
AccountT = TypeVar("AccountT", bound=Callable[..., Any])


class RoutedMiddleware(Generic[AppT, AccountT]):
    """What the WSGI and ASGI middleware share: their constructor and
    settings, checked once at startup, and the per-request choice of route
    and charge options. They differ only in how a request arrives and a
    response leaves (and in their types: the app, and the account callable,
    which receives the WSGI environ or the ASGI scope)."""

    #: What the account callable receives, for the message when it is none.
    request_kind: ClassVar[str] = "request"

    @configuration()
    def __init__(
        self,
        app: AppT,
        ledger: Ledger,
        routes: Mapping[str, Any] | Sequence[Route],
        *,
        account: AccountT,
        job_header: str = DEFAULT_JOB_HEADER,
        on_missing: str = "charge",
        fail_open: bool = False,
        problem_type_base: str | None = None,
        retry_after_max: int | None = DEFAULT_RETRY_AFTER_MAX,
    ) -> None:
        if not isinstance(ledger, Ledger):
            raise InvalidArgument(f"ledger must be a Ledger, not {type(ledger).__name__}")
        if not callable(account):
            raise InvalidArgument(f"account must be a callable of the {self.request_kind}")
        settings = Settings.from_keywords(
            type(self).__name__,
            job_header=job_header,
            on_missing=on_missing,
            fail_open=fail_open,
            problem_type_base=problem_type_base,
            retry_after_max=retry_after_max,
        )
        self.app = app
        self.ledger = ledger
        self.routes = compile_routes(routes)
        self._options = _route_options(self.routes)
        self.account = account
        self.job_header = settings.job_header
        self.on_missing = settings.on_missing
        self.fail_open = settings.fail_open
        self.problems = settings.problems
        if is_in_process_default(ledger.store):
            warn_in_process(
                f"{type(self).__module__}.{type(self).__name__}",
                "build its ledger with Ledger.from_url(url)",
            )

    def _render(self, err: JobCreditsError, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        """Status, headers (Content-Length included) and body of an error's answer."""
        status, headers, body = render_problem(err, path, self.problems)
        return status, [*headers, ("Content-Length", str(len(body)))], body

    def _route(self, method: str, path: str) -> Options | None:
        """The options of the route a request falls under (the first that
        matches), or None for a request to pass through untouched."""
        for route, options in self._options:
            if route.matches(method, path):
                return options
        return None
