"""FastAPI: charge an endpoint once per job, with a dependency or a decorator.

::

    from typing import Annotated

    from fastapi import Depends, FastAPI
    from jobcredits_plugin import Charge, Ledger
    from jobcredits_plugin.fastapi import JobCredits, charge_credit, charges_credit

    app = FastAPI()
    JobCredits(Ledger.from_url("sqlite:///jobs.db"), account=account_of).install(app)

    @app.post("/v1/summarize")
    async def summarize(charge: Annotated[Charge, Depends(charge_credit(scope="summarize"))]):
        return {"outcome": charge.outcome}

    @app.post("/v1/analyze")
    @charges_credit(scope="summarize")
    def analyze(): ...

Why a middleware besides the dependency: the charge must be confirmed or
refunded by the response's status, when the response's body produces its
first byte. A dependency cannot see that: FastAPI runs a ``yield``
dependency's teardown only after the whole body has been sent (too late for a
follow-up sent the moment the client has the first bytes, and for a stream
longer than the lease), and never learns of a 5xx the endpoint returned
rather than raised. So the dependency (or the decorator) charges and leaves
the call where an ASGI middleware, put in place by :meth:`JobCredits.install`,
finds it: it holds ``http.response.start`` back until the first body byte,
settles the call, and sends the start with the call's headers.

A request that fails FastAPI's own validation after the dependency charged
(FastAPI solves dependencies before it validates the other parameters) never
reached the endpoint: the handler of FastAPI's ``RequestValidationError``,
wrapped when the app builds its middleware (so that a handler the app
registers itself is wrapped too), refunds it before the 422 is answered. The
dependency is a plain one, not a ``yield`` one: FastAPI enters a ``yield``
dependency through an exit stack and a cancel scope on every request, which
cost more than the rest of a follow-up's charge.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar, cast

try:
    from fastapi import FastAPI, Request, Response
    from fastapi import routing as fastapi_routing
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exception_handlers import request_validation_exception_handler
    from fastapi.exceptions import RequestValidationError
    from fastapi.routing import APIRoute
except ImportError as exc:  # pragma: no cover - exercised by the noframework env
    raise ImportError(
        'jobcredits_plugin.fastapi needs FastAPI: pip install "jobcredits-plugin[fastapi]"'
    ) from exc


from ._asgi import ASGIApp, Receive, Scope, Send, Watch, run_watched
from ._call import DEFAULT_JOB_HEADER, JobCall, astart_call, bind_charge, bound, isolate, restore
from ._errors import DEFAULT_RETRY_AFTER_MAX, ConfigurationError, InvalidArgument, JobCreditsError
from ._headers import raw_name, scope_header
from ._ledger import Ledger
from ._openapi import PROBLEM_SCHEMA, PROBLEM_SCHEMA_NAME, document_operation
from ._plugins import add_plugins, load_entry_points
from ._problems import PROBLEM_CONTENT_TYPE, render_problem
from ._records import Charge
from ._settings import Settings
from ._validation import configuration
from ._warnings import is_in_process_default, warn_in_process
from ._web import Options, app_account, route_options

__all__ = ["JobCredits", "charge_credit", "charges_credit"]

F = TypeVar("F", bound=Callable[..., Any])

#: The account callable: receives the request, returns the account (None: not
#: authenticated), or an awaitable of it.
AccountFn = Callable[[Request], "str | Awaitable[str | None] | None"]

#: Where the middleware leaves the request's watch for the dependency to find.
#: A key of the scope itself rather than of ``scope["state"]``: that one holds
#: the lifespan state, and is per request only as long as the server copies it
#: for each request as the spec asks; a request's watch must never be shared.
_SCOPE_KEY = "jobcredits_plugin.watch"
#: The attribute that marks a dependency or an endpoint as charging, for the
#: OpenAPI schema.
_MARK = "__jobcredits__"


class JobCredits:
    """The app-wide settings of the FastAPI adapter.

    :param ledger: the :class:`~jobcredits_plugin.Ledger` to charge (a
        dependency or decorator may name another with ``ledger=``).
    :param job_header: the header carrying the job id.
    :param account: a callable of the request returning the account (or an
        awaitable of it), None for an unauthenticated request (answered 401).
        Each dependency or decorator may give its own.
    :param on_missing: ``"charge"`` a call without a job id as a job of its own
        (the fresh id is echoed in the job header), or ``"reject"`` it (400).
    :param fail_open: let calls through *uncharged* while the store is down,
        instead of answering 503.
    :param plugins: hook plugins to register on ``ledger``: objects, or
        import strings naming them (``"pkg.mod:attr"`` or ``"pkg.mod.attr"``);
        a class is instantiated with no arguments. What the ledger already
        has is not registered again (the same object, or an instance of the
        same class), so ``Ledger(plugins=[p])`` with ``plugins=[p]`` here
        registers ``p`` once. A bad entry raises
        :class:`~jobcredits_plugin.InvalidArgument`.
    :param entry_points: also register the plugins installed packages declare
        in the ``jobcredits_plugin`` entry point group, as
        ``Ledger(entry_points=True)`` does (those already loaded are skipped).
    :param problem_type_base: the base of the problem ``type`` URIs (the type
        is the base followed by the error's ``code``); None: ``about:blank``.
    :param retry_after_max: the cap, in seconds, on a 409's ``Retry-After``
        (None: the whole lease left).

    Nothing else happens until :meth:`install` puts it on an app.
    """

    @configuration()
    def __init__(
        self,
        ledger: Ledger,
        *,
        job_header: str = DEFAULT_JOB_HEADER,
        account: AccountFn | None = None,
        on_missing: str = "charge",
        fail_open: bool = False,
        plugins: Sequence[object] = (),
        entry_points: bool = False,
        problem_type_base: str | None = None,
        retry_after_max: int | None = DEFAULT_RETRY_AFTER_MAX,
    ) -> None:
        if not isinstance(ledger, Ledger):
            raise InvalidArgument(f"ledger must be a Ledger, not {type(ledger).__name__}")
        if account is not None and not callable(account):
            raise InvalidArgument("account must be a callable of the request")
        settings = Settings.from_keywords(
            "JobCredits",
            job_header=job_header,
            on_missing=on_missing,
            fail_open=fail_open,
            entry_points=entry_points,
            problem_type_base=problem_type_base,
            retry_after_max=retry_after_max,
        )
        self.problems = settings.problems
        added = add_plugins(ledger, plugins, key="plugins")
        if settings.entry_points:
            try:
                load_entry_points(ledger, key="entry_points")
            except (InvalidArgument, ConfigurationError):
                for plugin in reversed(added):
                    ledger.unregister(plugin)
                raise
        self.ledger = ledger
        self.job_header = settings.job_header
        self.account = account
        self.on_missing = settings.on_missing
        self.fail_open = settings.fail_open

    @configuration()
    def install(self, app: FastAPI) -> JobCredits:
        """Put the adapter on ``app``; call it before the app starts serving.

        It sets ``app.state.jobcredits`` to this object, answers every
        :class:`~jobcredits_plugin.JobCreditsError` as
        ``application/problem+json``, adds the ASGI middleware that confirms or
        refunds each charged request at its response's first body byte (and
        adds the ``X-Job-Charge`` headers), and documents the charging endpoints in
        ``app.openapi()`` (see :meth:`document`). Returns ``self``.

        Unless ``app.debug`` is on, a ledger on the in-process default store
        (``Ledger()``, ``Ledger.from_url("memory://")``) issues an
        :class:`~jobcredits_plugin.InProcessStoreWarning`: under
        ``uvicorn --workers 2`` each worker would charge the same job again.
        """
        if is_in_process_default(self.ledger.store) and not app.debug:
            warn_in_process(
                "FastAPI app " + repr(app.title),
                "build the ledger given to JobCredits with Ledger.from_url(url)",
            )
        app.state.jobcredits = self
        app.add_exception_handler(JobCreditsError, _problem_response)
        app.add_middleware(_ResponseStart, ext=self)
        build = app.build_middleware_stack

        def build_middleware_stack() -> ASGIApp:
            # At build time, not now: the app may register its own handler
            # of RequestValidationError after install(); it is wrapped too.
            handlers = app.exception_handlers
            found = handlers.get(RequestValidationError, request_validation_exception_handler)
            if not isinstance(found, _RefundInvalid):
                handlers[RequestValidationError] = _RefundInvalid(found)
            return build()

        app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]
        original = app.openapi

        def openapi() -> dict[str, Any]:
            cached = app.openapi_schema
            schema = original()
            if schema is not cached:  # freshly built: add our part once
                self.document(schema, app.routes)
            return schema

        app.openapi = openapi  # type: ignore[method-assign]
        app.openapi_schema = None
        return self

    async def _start(
        self, request: Request, watch: _Watch, opts: Options, *, refund_invalid: bool = False
    ) -> JobCall:
        """Charge the request as ``opts`` say and leave the call on ``watch``
        for the middleware to settle at the response's first body byte
        (``refund_invalid``: refunded if FastAPI's request validation fails
        later, see :class:`_RefundInvalid`)."""
        if watch.call is not None:
            raise RuntimeError(
                "jobcredits: this request is already charged; give an endpoint one "
                "charge_credit dependency or one charges_credit decorator, not both"
            )
        account_fn = opts.account or self.account
        if account_fn is None:
            raise RuntimeError(
                "jobcredits: no account callable; pass JobCredits(..., account=...) "
                "or account= to the dependency or decorator"
            )
        raw_job_header = raw_name(opts.header or self.job_header)
        # The job id straight from the scope's raw headers: no Headers object.
        job_id = scope_header(request.scope["headers"], raw_job_header)
        call = await astart_call(
            opts.ledger or self.ledger,
            await app_account(account_fn, request),
            opts.call_spec(self, request, account_fn, job_id),
        )
        watch.attach(call, raw_job_header, refund_invalid=refund_invalid)
        return call

    # -- OpenAPI -----------------------------------------------------------------------

    def document(self, schema: dict[str, Any], routes: Iterable[Any]) -> dict[str, Any]:
        """Add the job header and the problem answers to an OpenAPI ``schema``.

        For every operation of ``routes`` that charges (a ``charge_credit``
        dependency anywhere in its dependencies, or a ``charges_credit``
        endpoint): the job header as a header parameter (required with
        ``on_missing="reject"``), the ``application/problem+json`` answers
        400, 401, 409, 402 (balances on) and 503 (unless failing open), and the
        ``X-Job-Charge`` headers of its success answers. What the operation
        already documents is left as it is. :meth:`install` calls it from
        ``app.openapi()``; call it yourself from a custom ``openapi()``. Returns
        ``schema``, changed in place.
        """
        paths = schema.get("paths") or {}
        used = False
        for route in _api_routes(routes):
            if not route.include_in_schema:
                continue
            opts = _charging_options(route)
            item = paths.get(route.path_format)
            if opts is None or not item:
                continue
            for method in route.methods or ():
                operation = item.get(method.lower())
                if operation is not None:
                    self._document_operation(operation, opts)
                    used = True
        if used:
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).setdefault(PROBLEM_SCHEMA_NAME, PROBLEM_SCHEMA)
        return schema

    def _document_operation(self, operation: dict[str, Any], opts: Options) -> None:
        document_operation(
            operation,
            job_header=opts.job_header(self),
            on_missing=opts.on_missing or self.on_missing,
            fail_open=self.fail_open if opts.fail_open is None else opts.fail_open,
            balances=(opts.ledger or self.ledger).balances,
        )


def _api_routes(routes: Iterable[Any]) -> Iterator[Any]:
    """The API routes of an app as its OpenAPI schema sees them.

    FastAPI 0.165 keeps an included router as one lazy entry of ``app.routes``
    and resolves its routes (with the router's prefix and dependencies) into
    route contexts; older releases copy each route into ``app.routes``.
    """
    iter_route_contexts = getattr(fastapi_routing, "iter_route_contexts", None)
    if iter_route_contexts is None:
        yield from (route for route in routes if isinstance(route, APIRoute))
        return
    for context in iter_route_contexts(list(routes)):
        if isinstance(context.original_route, APIRoute):
            yield context


def _charging_options(route: Any) -> Options | None:
    """The options of the charge a route makes, found on its endpoint (the
    decorator) or anywhere among its dependencies (router-level ones too)."""
    found = getattr(route.endpoint, _MARK, None)
    if isinstance(found, Options):
        return found
    dependant = route.dependant
    stack = list(dependant.dependencies) if dependant is not None else []
    while stack:
        dependant = stack.pop()
        found = getattr(dependant.call, _MARK, None)
        if isinstance(found, Options):
            return found
        stack.extend(dependant.dependencies)
    return None


def _watch_of(request: Request) -> _Watch:
    """The request's watch, which the middleware :meth:`JobCredits.install`
    adds put in its scope, with the :class:`JobCredits` of that install
    (rather than a lookup in ``request.app.state`` on every charged call)."""
    watch = request.scope.get(_SCOPE_KEY)
    if not isinstance(watch, _Watch):
        raise RuntimeError(
            "jobcredits: the request did not pass through the JobCredits middleware; "
            "call JobCredits(ledger, ...).install(app) on the app that serves this route"
        )
    return watch


async def _problem_response(request: Request, exc: Exception) -> Response:
    """Every :class:`JobCreditsError` as the same problem+json document the
    other adapters send, with ``Retry-After`` where the error has one
    (rendered with the installed :class:`JobCredits`' problem settings)."""
    assert isinstance(exc, JobCreditsError)
    ext = getattr(request.app.state, "jobcredits", None)
    settings = ext.problems if isinstance(ext, JobCredits) else None
    status, headers, body = render_problem(exc, request.url.path, settings)
    return Response(
        content=body,
        status_code=status,
        headers={k: v for k, v in headers if k != "Content-Type"},
        media_type=PROBLEM_CONTENT_TYPE,
    )


def _is_async_callable(fn: Any) -> bool:
    """Whether calling ``fn`` returns an awaitable, as Starlette decides for
    an exception handler (a partial of an ``async def``, or an object whose
    ``__call__`` is one, counts)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    # An object whose class defines ``async def __call__``.
    return callable(fn) and inspect.iscoroutinefunction(fn.__call__)


class _RefundInvalid:
    """The app's handler of FastAPI's ``RequestValidationError``, refunding
    first the charge a dependency made for the request: FastAPI validates a
    route's other parameters only after solving its dependencies, so the
    endpoint of a request answered here never ran. The handler then answers
    as before (422), and the middleware adds the headers of the refunded
    call. A charge made by the decorator (inside the endpoint) is left to
    the status, like any 4xx the endpoint causes."""

    def __init__(self, handler: Callable[..., Any]) -> None:
        self.handler = handler
        self._is_async = _is_async_callable(handler)

    async def __call__(self, request: Request, exc: Exception) -> Response:
        watch = request.scope.get(_SCOPE_KEY)
        if isinstance(watch, Watch) and watch.call is not None and watch.refund_invalid:
            await watch.call.afinish(None)
        if self._is_async:
            return cast(Response, await self.handler(request, exc))
        return cast(Response, await run_in_threadpool(self.handler, request, exc))


class _Watch(Watch):
    """A request's :class:`~jobcredits_plugin._asgi.Watch`, with the
    :class:`JobCredits` whose middleware made it (set by the middleware)."""

    __slots__ = ("ext",)
    ext: JobCredits


class _ResponseStart:
    """The ASGI middleware :meth:`JobCredits.install` adds: gives each HTTP
    request an empty watch, and settles the call a dependency attached to it
    at the response's first body byte (or refunds it when the app raises
    first)."""

    def __init__(self, app: ASGIApp, ext: JobCredits) -> None:
        self.app = app
        self.ext = ext

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watch = _Watch()
        watch.ext = self.ext
        scope[_SCOPE_KEY] = watch
        token = isolate()  # a dependency's bind_charge is undone with it (see _call)
        try:
            await run_watched(self.app, scope, receive, send, watch)
        finally:
            restore(token)


def charge_credit(
    cost: int | Callable[[Request], int] = 1,
    scope: str = "default",
    tier: str | Callable[[Request], str | None] | None = None,
    backend: str | Callable[[Request], str | None] | None = None,
    account: AccountFn | None = None,
    ledger: Ledger | None = None,
    on_missing: str | None = None,
    fail_open: bool | None = None,
    header: str | None = None,
) -> Callable[[Request], Awaitable[Charge | None]]:
    """A dependency that charges the request once per job: ``Depends(charge_credit())``.

    It returns the :class:`~jobcredits_plugin.Charge` (None when the store is
    down and ``fail_open`` let the call through uncharged), and
    :func:`jobcredits_plugin.current_charge` returns it too while the request
    is handled. The charge is confirmed when the response's body produces its
    first byte with a status below 500, and refunded on a 5xx, when the
    endpoint raises, or when the body fails before its first byte (an
    ``HTTPException`` with a 4xx status confirms: the client's mistake was
    served).

    ``cost``, ``tier`` and ``backend`` are values or callables of the request;
    ``account``, ``ledger``, ``on_missing``, ``fail_open`` and ``header`` (the
    job header's name) default to the :class:`JobCredits` settings.

    FastAPI runs a route's dependencies before it validates the request's
    other parameters, so a request that fails that validation has been
    charged by the time FastAPI answers it 422. The endpoint never ran: the
    charge is refunded (``X-Job-Charge: refunded``), unlike a 422 the endpoint
    itself answers, which confirms like any 4xx. The :func:`charges_credit`
    decorator charges only requests that passed validation.
    """
    opts = route_options(
        cost=cost,
        scope=scope,
        tier=tier,
        backend=backend,
        account=account,
        ledger=ledger,
        on_missing=on_missing,
        fail_open=fail_open,
        header=header,
    )

    async def charge_credit_dependency(request: Request) -> Charge | None:
        # A plain dependency: the middleware settles the call, and the
        # handler of RequestValidationError refunds it if FastAPI's
        # validation fails after it charged (see _RefundInvalid).
        watch = request.scope.get(_SCOPE_KEY)
        if type(watch) is not _Watch:  # (tested inline: on every charged request)
            watch = _watch_of(request)  # raises the error that says what is missing
        call = await watch.ext._start(request, watch, opts, refund_invalid=True)
        bind_charge(call.charge)  # for current_charge(); the middleware undoes it
        return call.charge

    cast(Any, charge_credit_dependency).__jobcredits__ = opts
    return charge_credit_dependency


def _is_request(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, Request)


def _evaluated_signature(fn: Callable[..., Any]) -> inspect.Signature:
    """The endpoint's signature with its annotations evaluated, because the
    wrapper's globals are this module's, where FastAPI (before 0.1xx unwraps)
    would evaluate string annotations (``from __future__ import annotations``)."""
    try:
        return inspect.signature(fn, eval_str=True)
    except NameError:  # a name imported under TYPE_CHECKING only
        return inspect.signature(fn)


def charges_credit(
    cost: int | Callable[[Request], int] = 1,
    scope: str = "default",
    tier: str | Callable[[Request], str | None] | None = None,
    backend: str | Callable[[Request], str | None] | None = None,
    account: AccountFn | None = None,
    ledger: Ledger | None = None,
    on_missing: str | None = None,
    fail_open: bool | None = None,
    header: str | None = None,
) -> Callable[[F], F]:
    """Charge an endpoint once per job, without a parameter for it.

    Put it *below* the route decorator (``@app.post(...)`` then
    ``@charges_credit(...)``); it works on ``async def`` and plain ``def``
    endpoints (a plain one still runs in FastAPI's threadpool, the charge in
    the event loop). The endpoint's parameters are kept, so FastAPI validates
    them as before, and the endpoint runs, charged, only when they are valid.
    If the endpoint has no ``Request`` parameter, one is added to the
    signature FastAPI sees (and not passed to the endpoint). Options and
    outcomes as for :func:`charge_credit`; read the charge with
    :func:`jobcredits_plugin.current_charge`.
    """
    opts = route_options(
        cost=cost,
        scope=scope,
        tier=tier,
        backend=backend,
        account=account,
        ledger=ledger,
        on_missing=on_missing,
        fail_open=fail_open,
        header=header,
    )

    def decorate(endpoint: F) -> F:
        return cast(F, _charged_endpoint(endpoint, opts))

    return decorate


def _request_parameter(signature: inspect.Signature) -> tuple[list[inspect.Parameter], str, bool]:
    """The parameters FastAPI is to see, the name of the one that receives
    the request, and whether that one was added here (the endpoint has no
    ``Request`` parameter of its own, so it is not passed on)."""
    params = list(signature.parameters.values())
    request_name = next((p.name for p in params if _is_request(p.annotation)), None)
    if request_name is not None:
        return params, request_name, False
    taken = {p.name for p in params}
    added = next(
        n for n in ("request", "jobcredits_request", "_jobcredits_request") if n not in taken
    )
    extra = inspect.Parameter(added, inspect.Parameter.KEYWORD_ONLY, annotation=Request)
    at = len(params)
    if params and params[-1].kind is inspect.Parameter.VAR_KEYWORD:
        at -= 1
    params.insert(at, extra)
    return params, added, True


def _charged_endpoint(endpoint: Callable[..., Any], opts: Options) -> Callable[..., Any]:
    """``endpoint`` charged as ``opts`` say, with a signature FastAPI reads
    the request parameter from (see :func:`charges_credit`)."""
    signature = _evaluated_signature(endpoint)
    params, request_name, added = _request_parameter(signature)
    is_async = inspect.iscoroutinefunction(endpoint)

    @functools.wraps(endpoint)
    async def charged_endpoint(*args: Any, **kwargs: Any) -> Any:
        if added:
            request = kwargs.pop(request_name)
        elif request_name in kwargs:
            request = kwargs[request_name]
        else:  # called positionally, not by FastAPI
            request = signature.bind_partial(*args, **kwargs).arguments[request_name]
        watch = _watch_of(request)
        call = await watch.ext._start(request, watch, opts)
        with bound(call):
            if is_async:
                return await endpoint(*args, **kwargs)
            return await run_in_threadpool(endpoint, *args, **kwargs)

    cast(Any, charged_endpoint).__signature__ = signature.replace(parameters=params)
    cast(Any, charged_endpoint).__jobcredits__ = opts
    return charged_endpoint
