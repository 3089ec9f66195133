"""WSGI middleware: per-job charging for any WSGI framework, by method and path.

For Falcon, Pyramid, Bottle or a Flask/Django app you would rather not
decorate view by view::

    from jobcredits_plugin import Ledger, header
    from jobcredits_plugin.wsgi import JobCreditsMiddleware

    app = JobCreditsMiddleware(
        app,
        Ledger.from_url("sqlite:///jobs.db"),
        routes={"POST /v1/summarize": {"scope": "summarize", "cost": 2}},
        account=lambda environ: environ.get("REMOTE_USER"),
    )

The charge is settled when the response's first body byte is produced (the
first non-empty chunk of the body, or its clean end when it is empty), not
after the whole body has streamed: confirmed for a status below 500,
refunded for a 5xx. It is refunded when the app raises, or its body raises
or is closed, before that first byte: a streamed response that fails before
producing anything is answered 500 by the server and costs nothing. A body
that fails after its first byte stays charged (the client was answered).
The headers the server sends are held until then as well (a WSGI server
sends nothing before the first byte anyway), so ``X-Job-Charge`` always says
what really happened.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from types import TracebackType
from typing import Any

from ._call import JobCall, bound, start_call
from ._errors import JobCreditsError
from ._headers import environ_header, environ_key
from ._middleware import RoutedMiddleware
from ._web import close_then_settle

__all__ = ["JobCreditsMiddleware"]

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
#: The account callable: receives the environ, returns the account (None:
#: not authenticated).
AccountFn = Callable[[Environ], "str | None"]


def _status_line(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


class _Held:
    """One charged response, held back from the server until its first body
    byte: ``start_response`` is recorded, and passed on (with the call's
    headers added) only once the call is settled."""

    __slots__ = ("call", "exc_info", "headers", "job_header", "sent", "start_response", "status")

    def __init__(self, call: JobCall, start_response: StartResponse, job_header: str) -> None:
        self.call = call
        self.start_response = start_response
        self.job_header = job_header
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.exc_info: ExcInfo | None = None
        self.sent: Callable[[bytes], object] | None = None

    def app_start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        """The ``start_response`` the wrapped app sees."""
        if self.sent is not None:
            # Already passed on: the server decides (it re-raises exc_info).
            return self.start_response(status, headers, exc_info)
        self.status, self.headers, self.exc_info = status, list(headers), exc_info
        return self.write

    def write(self, data: bytes) -> object:
        """The legacy ``write()`` callable: its first non-empty data is the
        response's first byte."""
        if self.sent is None:
            if not data:
                return None
            self.release()
        assert self.sent is not None
        return self.sent(data)

    def release(self) -> None:
        """The first byte is ready (or the body ended cleanly): settle the
        call by the status, then start the response with its headers."""
        if self.sent is not None:
            return
        if self.status is None:
            # The app produced a body without starting a response: not a
            # success; the server will report the app's mistake.
            self.call.finish(None)
            return
        try:
            code: int | None = int(self.status.split(None, 1)[0])
        except (ValueError, IndexError):  # a malformed status line: not a success
            code = None
        self.call.finish(code)
        headers = [*self.headers, *self.call.headers(self.job_header)]
        self.sent = self.start_response(self.status, headers, self.exc_info)
        self.exc_info = None


class _Body:
    """The app's response body, passed through once its first byte is ready.

    Empty chunks before it are swallowed (a server may send the headers on
    one); a failure before it refunds the call and goes on to the server,
    which, having sent nothing yet, answers 500.
    """

    def __init__(self, body: Iterable[bytes], held: _Held) -> None:
        self._body = body
        self._held = held

    def __iter__(self) -> Iterator[bytes]:
        held = self._held
        try:
            iterator = iter(self._body)
            for chunk in iterator:
                if held.sent is None:
                    if not chunk:
                        continue
                    held.release()
                yield chunk
                if held.sent is not None:
                    break
            else:
                held.release()  # an empty body, ended cleanly
                return
            yield from iterator
        except BaseException:
            held.call.finish(None)  # a no-op once the first byte was produced
            raise

    def close(self) -> None:
        close_then_settle(self._body, self._held.call)


class JobCreditsMiddleware(RoutedMiddleware[WSGIApp, AccountFn]):
    """Charge the requests that match ``routes`` once per job.

    :param app: the WSGI application to wrap.
    :param ledger: the :class:`~jobcredits_plugin.Ledger` to charge.
    :param routes: which requests cost what; see :func:`compile_routes` for
        the forms (``{"POST /v1/summarize": {"cost": 2, "scope": "summarize"}}``).
        Requests that match no route pass through untouched.
    :param account: a callable of the WSGI environ returning the account, or
        None for an unauthenticated request (answered 401).
    :param job_header: the header carrying the job id (per route: ``header``).
    :param on_missing: ``"charge"`` a call without a job id as a job of its own
        (the fresh id is echoed in the job header), or ``"reject"`` it (400).
    :param fail_open: let calls through *uncharged* while the store is down,
        instead of answering 503.
    :param problem_type_base: the base of the problem ``type`` URIs (the type
        is the base followed by the error's ``code``); None: ``about:blank``.
    :param retry_after_max: the cap, in seconds, on a 409's ``Retry-After``
        (None: the whole lease left).
    """

    request_kind = "WSGI environ"

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO") or "/"
        options = self._route(method, path)
        if options is None:
            return self.app(environ, start_response)
        job_header = options.job_header(self)
        try:
            call = start_call(
                self.ledger,
                self.account(environ),
                options.call_spec(
                    self, environ, self.account, environ_header(environ, environ_key(job_header))
                ),
            )
        except JobCreditsError as err:
            status, headers, problem = self._render(err, path)
            start_response(_status_line(status), headers)
            return [problem]

        held = _Held(call, start_response, job_header)
        try:
            # The app (unless it defers its work to the body's iteration) sees
            # its Charge through current_charge(), as a decorated function does.
            with bound(call):
                body = self.app(environ, held.app_start_response)
        except BaseException:
            call.finish(None)
            raise
        return _Body(body, held)
