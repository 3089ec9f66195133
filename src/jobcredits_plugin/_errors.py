"""The exceptions of jobcredits-plugin.

Every error a caller can act on carries the HTTP status it maps to and a stable
machine-readable ``code``, so that each web adapter renders the same
``application/problem+json`` body (RFC 9457) without a table of its own, and so
that clients can branch on ``code`` rather than on prose that may change.
"""

from __future__ import annotations

import http
import math
from typing import Any

__all__ = [
    "ConfigurationError",
    "InsufficientCredits",
    "InvalidAccount",
    "InvalidArgument",
    "InvalidJobId",
    "JobCreditsError",
    "JobExhausted",
    "JobInProgress",
    "MissingJobId",
    "NotAuthenticated",
    "StoreUnavailable",
]

#: The problem ``type`` when the app configured no base (RFC 9457 §4.2.1):
#: the type adds nothing to the status, and the ``code`` member carries the
#: meaning. Pointing at the library's documentation host instead would show
#: an app's customers a third party's host in its errors.
ABOUT_BLANK = "about:blank"

#: The ``Retry-After`` cap (seconds) when the app sets none: a 409 for a job
#: whose first call holds a 60 s lease must not tell a client to wait 60 s for
#: a call that ends in 2.
DEFAULT_RETRY_AFTER_MAX = 5

#: What a client is told about a server-side (5xx) error it cannot act on.
#: The error's own text (a store URL, host, user, a driver's message) is for
#: the server's log only.
GENERIC_DETAIL = "the credit ledger failed to process this call; this is not the client's error"


class JobCreditsError(Exception):
    """Base class of every error raised by jobcredits-plugin.

    ``status`` is the HTTP status an adapter answers with, ``code`` a stable
    identifier for programs, ``title`` a short human summary of the kind of
    problem and ``detail`` the specific occurrence (the message).
    """

    status: int = 500
    code: str = "jobcredits_error"
    title: str = "Job credits error"
    #: Seconds after which retrying may succeed (``Retry-After``), if any.
    retry_after: int | None = None
    #: The detail a client is shown when the status is a 5xx (see
    #: :attr:`client_detail`).
    generic_detail: str = GENERIC_DETAIL

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or self.title
        super().__init__(self.detail)

    @property
    def client_detail(self) -> str:
        """The detail an HTTP client may see.

        A 4xx detail describes the client's own request and is shown as it
        is. A 5xx detail describes the server (a store's URL, host, user and
        database, a driver's message, the app's configuration): the client
        gets a generic sentence, and the full ``detail`` belongs in the
        server's log (the web adapters log it when they answer).
        """
        if self.status >= 500:
            return self.generic_detail
        return self.detail

    def capped_retry_after(
        self, retry_after_max: int | None = DEFAULT_RETRY_AFTER_MAX
    ) -> int | None:
        """:attr:`retry_after`, at most ``retry_after_max`` seconds (None: no cap)."""
        if self.retry_after is None or retry_after_max is None:
            return self.retry_after
        return max(1, min(self.retry_after, retry_after_max))

    def headers(self, *, retry_after_max: int | None = DEFAULT_RETRY_AFTER_MAX) -> dict[str, str]:
        """HTTP headers that belong with this error's response.

        ``Retry-After`` is capped at ``retry_after_max`` seconds (None: the
        whole wait): a client told to come back after the whole 60 s lease of
        a call that ends in 2 s waits for nothing; one told 5 s polls a few
        times, each poll a cheap 409.
        """
        retry_after = self.capped_retry_after(retry_after_max)
        if retry_after is None:
            return {}
        return {"Retry-After": str(retry_after)}

    def problem_type(self, type_base: str | None = None) -> str:
        """The problem ``type`` URI: ``about:blank`` without a base, else the
        base followed by :attr:`code`."""
        if type_base is None or type_base == ABOUT_BLANK:
            return ABOUT_BLANK
        return type_base + self.code

    def to_problem(
        self,
        *,
        instance: str | None = None,
        type_base: str | None = None,
        retry_after_max: int | None = DEFAULT_RETRY_AFTER_MAX,
    ) -> dict[str, Any]:
        """The RFC 9457 problem document a client is sent, as a JSON-ready dict.

        ``type`` is ``about:blank`` unless ``type_base`` is given (then
        ``type_base + code``); with ``about:blank`` the ``title`` is the HTTP
        status phrase, as RFC 9457 §4.2.1 asks, and the stable ``code``
        member says which problem it is. ``detail`` is :attr:`client_detail`
        (generic for a 5xx). ``retry_after`` matches the capped header.
        """
        type_uri = self.problem_type(type_base)
        title = self.title
        if type_uri == ABOUT_BLANK:
            title = _status_phrase(self.status, title)
        doc: dict[str, Any] = {
            "type": type_uri,
            "title": title,
            "status": self.status,
            "detail": self.client_detail,
            "code": self.code,
        }
        if instance is not None:
            doc["instance"] = instance
        retry_after = self.capped_retry_after(retry_after_max)
        if retry_after is not None:
            doc["retry_after"] = retry_after
        doc.update(self._extra())
        return doc

    def _extra(self) -> dict[str, Any]:
        return {}


class InvalidArgument(JobCreditsError, ValueError):
    """An argument is malformed; nothing was recorded.

    Also a :class:`ValueError`, because that is what Python code expects to
    catch for a bad value.
    """

    status = 400
    code = "invalid_argument"
    title = "Invalid argument"


class InvalidJobId(InvalidArgument):
    """The job id (or scope) does not match the allowed pattern or length."""

    code = "invalid_job_id"
    title = "Invalid job id"


class InvalidAccount(InvalidArgument):
    """The account is empty, too long, not a string or holds control characters."""

    code = "invalid_account"
    title = "Invalid account"


class MissingJobId(JobCreditsError):
    """The call carried no job id and the endpoint rejects such calls."""

    status = 400
    code = "missing_job_id"
    title = "Missing job id"


class NotAuthenticated(JobCreditsError):
    """No account could be found for the call, so nobody can be charged."""

    status = 401
    code = "not_authenticated"
    title = "Not authenticated"


class InsufficientCredits(JobCreditsError):
    """The account's balance is below the cost of a new job; nothing was recorded."""

    status = 402
    code = "insufficient_credits"
    title = "Insufficient credits"

    def __init__(
        self, detail: str | None = None, *, balance: int | None = None, cost: int | None = None
    ) -> None:
        self.balance = balance
        self.cost = cost
        super().__init__(detail)

    def _extra(self) -> dict[str, Any]:
        return {"balance": self.balance, "cost": self.cost}


class JobInProgress(JobCreditsError):
    """The job's first call is still running; retry after ``retry_after`` seconds."""

    status = 409
    code = "job_in_progress"
    title = "Job in progress"

    def __init__(self, detail: str | None = None, *, retry_after: float = 1.0) -> None:
        # Retry-After takes whole seconds; rounding up never invites a retry
        # that is bound to fail again.
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(detail)


class JobExhausted(JobCreditsError):
    """The job has served ``max_uses`` calls; the client must start a new job."""

    status = 409
    code = "job_exhausted"
    title = "Job exhausted"

    def __init__(self, detail: str | None = None, *, max_uses: int | None = None) -> None:
        self.max_uses = max_uses
        super().__init__(detail)

    def _extra(self) -> dict[str, Any]:
        return {"max_uses": self.max_uses}


class ConfigurationError(JobCreditsError, ValueError):
    """The app set the library up wrongly: a bad URL option, store setting,
    ledger option or adapter setting, or an app callable (the account, the
    clock) that returned something it must not.

    Not an :class:`InvalidArgument`: that one describes a *client's* input and
    answers 400, while this is the app's own bug, raised at construction where
    it can be, and answered 500 when it can only show up during a request.
    Also a :class:`ValueError`, like the bad-value errors Python code expects.
    """

    status = 500
    code = "configuration_error"
    title = "Credit ledger misconfigured"
    generic_detail = (
        "the credit ledger is misconfigured on the server; this is not the client's error"
    )


class StoreUnavailable(JobCreditsError):
    """The store could not be reached or did not answer in time.

    Nothing is known to have been charged by the failed operation (a store
    operation is atomic: it committed entirely or not at all).
    """

    status = 503
    code = "store_unavailable"
    title = "Credit store unavailable"
    generic_detail = "the credit ledger is unavailable; retry later"

    def __init__(self, detail: str | None = None, *, retry_after: float = 1.0) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(detail)


def _status_phrase(status: int, fallback: str) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return fallback
