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

The charge is confirmed when the wrapped app starts its response (status and
headers decided), not after the body has streamed; it is refunded when that
status is 5xx, or when the app raises before starting a response.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from http import HTTPStatus
from types import TracebackType
from typing import Any

from ._errors import JobCreditsError
from ._ledger import Ledger
from ._web import (
    DEFAULT_JOB_HEADER,
    JobCall,
    Route,
    RoutedMiddleware,
    bound,
    problem_body,
    problem_headers,
    start_call,
)

__all__ = ["JobCreditsMiddleware"]

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def _status_line(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


class _Body:
    """The app's response body, passed through, watching for a failure that
    comes before the response started (a lazy app that raises on its first
    iteration): that failure refunds the charge like any other."""

    def __init__(self, body: Iterable[bytes], call: JobCall) -> None:
        self._body = body
        self._call = call

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._body
        except BaseException:
            self._call.finish(None)  # a no-op when the response already started
            raise

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            # The server is done with the call; if the app never started a
            # response, it did not serve the client.
            self._call.finish(None)


class JobCreditsMiddleware(RoutedMiddleware[WSGIApp]):
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
    """

    def __init__(
        self,
        app: WSGIApp,
        ledger: Ledger,
        routes: Mapping[str, Any] | Sequence[Route],
        *,
        account: Callable[[Environ], str | None],
        job_header: str = DEFAULT_JOB_HEADER,
        on_missing: str = "charge",
        fail_open: bool = False,
    ) -> None:
        super().__init__(
            app,
            ledger,
            routes,
            account=account,
            job_header=job_header,
            on_missing=on_missing,
            fail_open=fail_open,
            request_kind="WSGI environ",
        )

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO") or "/"
        matched = self._route(method, path)
        if matched is None:
            return self.app(environ, start_response)
        route, job_header = matched
        try:
            call = start_call(
                self.ledger,
                account=self.account(environ),
                **self._charge_options(route, job_header, environ),
            )
        except JobCreditsError as err:
            problem = problem_body(err, instance=path)
            headers = [*problem_headers(err), ("Content-Length", str(len(problem)))]
            start_response(_status_line(err.status), headers)
            return [problem]

        def charged_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            try:
                code: int | None = int(status.split(None, 1)[0])
            except (ValueError, IndexError):  # a malformed status line: not a success
                code = None
            call.finish(code)  # the response starts: its status decides
            return start_response(status, [*headers, *call.headers(job_header)], exc_info)

        try:
            # The app (unless it defers its work to the body's iteration) sees
            # its Charge through current_charge(), as a decorated function does.
            with bound(call):
                body = self.app(environ, charged_start_response)
        except BaseException:
            call.finish(None)
            raise
        return _Body(body, call)
