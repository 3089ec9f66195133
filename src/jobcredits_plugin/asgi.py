"""ASGI middleware: per-job charging for any ASGI framework, by method and path.

For Starlette, Litestar, Quart, Django's ASGI handler or a FastAPI app you
would rather not annotate endpoint by endpoint::

    from jobcredits_plugin import Ledger, header
    from jobcredits_plugin.asgi import JobCreditsMiddleware

    app = JobCreditsMiddleware(
        app,
        Ledger.from_url("sqlite:///jobs.db"),
        routes={"POST /v1/summarize": {"scope": "summarize", "cost": 2}},
        account=header("X-Authenticated-User"),  # set by a trusted proxy
    )

A pure ASGI middleware: it imports no framework, and passes ``lifespan`` and
``websocket`` connections, and HTTP requests that match no route, through
untouched. The charge is settled when the response's first body byte is
produced (the first non-empty ``http.response.body``, or the last one when
the body is empty), not after a streamed body has been sent: confirmed for a
status below 500, refunded for a 5xx. It is refunded when the app raises, is
cancelled or returns before that first byte: a streamed response that fails
before producing anything is answered 500 by the server and costs nothing.
A body that fails after its first byte stays charged (the client was
answered). The app's ``http.response.start`` is held back until then, so
that ``X-Job-Charge`` always says what really happened.
"""

from __future__ import annotations

from ._asgi import (
    AccountFn,
    ASGIApp,
    Receive,
    Scope,
    Send,
    Watch,
    route_path,
    run_watched,
    send_problem,
)
from ._call import astart_call, bound
from ._errors import JobCreditsError
from ._headers import raw_name, scope_header
from ._middleware import RoutedMiddleware
from ._web import app_account

__all__ = ["JobCreditsMiddleware"]


class JobCreditsMiddleware(RoutedMiddleware[ASGIApp, AccountFn]):
    """Charge the HTTP requests that match ``routes`` once per job.

    :param app: the ASGI application to wrap.
    :param ledger: the :class:`~jobcredits_plugin.Ledger` to charge.
    :param routes: which requests cost what, as a mapping from
        ``"[METHOD[|METHOD]] /path"`` (``*`` patterns allowed) to a cost or a
        dict of options (``scope``, ``cost``, ``tier``, ``backend``,
        ``on_missing``, ``header``; see :ref:`middleware-routes`). Requests
        that match no route pass through untouched.
    :param account: a callable of the ASGI scope returning the account (or
        an awaitable of it), or None for an unauthenticated request (answered
        401). :func:`jobcredits_plugin.header` reads a scope's headers.
    :param job_header: the header carrying the job id (per route: ``header``).
    :param on_missing: ``"charge"`` a call without a job id as a job of its own
        (the fresh id is echoed in the job header), or ``"reject"`` it (400).
    :param fail_open: let calls through *uncharged* while the store is down,
        instead of answering 503.
    :param problem_type_base: the base of the problem ``type`` URIs (the type
        is the base followed by the error's ``code``); None: ``about:blank``.
    :param retry_after_max: the cap, in seconds, on a 409's ``Retry-After``
        (None: the whole lease left).

    While the app handles a charged request,
    :func:`jobcredits_plugin.current_charge` returns its
    :class:`~jobcredits_plugin.Charge`.
    """

    request_kind = "ASGI scope"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan, websocket: not ours
            await self.app(scope, receive, send)
            return
        options = self._route(scope["method"], route_path(scope))
        if options is None:
            await self.app(scope, receive, send)
            return
        raw_job_header = raw_name(options.job_header(self))
        try:
            call = await astart_call(
                self.ledger,
                await app_account(self.account, scope),
                options.call_spec(
                    self, scope, self.account, scope_header(scope["headers"], raw_job_header)
                ),
            )
        except JobCreditsError as err:
            await send_problem(send, err, scope.get("path"), self.problems)
            return
        with bound(call):
            await run_watched(self.app, scope, receive, send, Watch(call, raw_job_header))
