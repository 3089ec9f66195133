"""The exceptions of jobcredits-plugin.

Every error a caller can act on carries the HTTP status it maps to and a stable
machine-readable ``code``, so that each web adapter renders the same
``application/problem+json`` body (RFC 9457) without a table of its own, and so
that clients can branch on ``code`` rather than on prose that may change.
"""

from __future__ import annotations

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

#: Where the ``type`` URIs of the problem documents point.
PROBLEM_BASE = "https://jobcredits-plugin.readthedocs.io/en/latest/errors.html#"


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

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or self.title
        super().__init__(self.detail)

    def headers(self) -> dict[str, str]:
        """HTTP headers that belong with this error's response."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(self.retry_after)}

    def to_problem(self, *, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 problem document for this error, as a JSON-ready dict."""
        doc: dict[str, Any] = {
            "type": PROBLEM_BASE + self.code.replace("_", "-"),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if instance is not None:
            doc["instance"] = instance
        if self.retry_after is not None:
            doc["retry_after"] = self.retry_after
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


class StoreUnavailable(JobCreditsError):
    """The store could not be reached or did not answer in time.

    Nothing is known to have been charged by the failed operation (a store
    operation is atomic: it committed entirely or not at all).
    """

    status = 503
    code = "store_unavailable"
    title = "Credit store unavailable"

    def __init__(self, detail: str | None = None, *, retry_after: float = 1.0) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(detail)
