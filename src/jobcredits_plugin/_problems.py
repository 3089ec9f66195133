"""How a :class:`~jobcredits_plugin.JobCreditsError` becomes an HTTP answer:
an RFC 9457 ``application/problem+json`` document, its headers, and one log
line for a 5xx.

Every adapter answers its errors through :func:`render_problem`, so a client
gets the same document from Flask, Django, FastAPI and the middleware, and
an operator the same log line. The adapter's settings (the problem type
base, the ``Retry-After`` cap) travel as one :class:`Problems` value.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import attrs

from ._errors import ABOUT_BLANK, DEFAULT_RETRY_AFTER_MAX, ConfigurationError, JobCreditsError
from ._validation import MAX_SECONDS

__all__ = [
    "DEFAULT_PROBLEMS",
    "PROBLEM_CONTENT_TYPE",
    "Problems",
    "check_retry_after_max",
    "check_type_base",
    "problem_body",
    "problem_headers",
    "problems",
    "render_problem",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"

log = logging.getLogger("jobcredits_plugin")

#: The longest problem type base accepted (a URI prefix, not a document).
_TYPE_BASE_MAX = 2000


@attrs.frozen
class Problems:
    """How an adapter renders its errors as problem+json (RFC 9457).

    ``type_base`` None means ``type: about:blank`` (the ``code`` member
    carries the meaning); a base makes the type ``type_base + code``, a page
    of the app's own. ``retry_after_max`` caps ``Retry-After`` (None: no
    cap). Build one with :func:`problems`, which checks the settings.
    """

    type_base: str | None = None
    retry_after_max: int | None = DEFAULT_RETRY_AFTER_MAX

    def document(self, err: JobCreditsError, instance: str | None = None) -> dict[str, Any]:
        """The problem document a client is sent for ``err``."""
        return err.to_problem(
            instance=instance, type_base=self.type_base, retry_after_max=self.retry_after_max
        )

    def body(self, err: JobCreditsError, instance: str | None = None) -> bytes:
        """The problem+json body, as bytes ready to send."""
        return json.dumps(self.document(err, instance), separators=(",", ":")).encode()

    def headers(self, err: JobCreditsError) -> list[tuple[str, str]]:
        """Content-Type plus the error's own headers (``Retry-After``, capped)."""
        return [
            ("Content-Type", PROBLEM_CONTENT_TYPE),
            *err.headers(retry_after_max=self.retry_after_max).items(),
        ]


#: The settings an adapter renders with when the app configured none.
DEFAULT_PROBLEMS = Problems()


def problems(
    type_base: Any = None,
    retry_after_max: Any = DEFAULT_RETRY_AFTER_MAX,
    *,
    type_base_key: str = "problem_type_base",
    retry_after_max_key: str = "retry_after_max",
) -> Problems:
    """Check an adapter's problem settings and bundle them.

    The ``*_key`` arguments name the settings as the app spelled them
    (``JOBCREDITS_PROBLEM_TYPE_BASE``, ``JOBCREDITS["RETRY_AFTER_MAX"]``) in
    the :class:`~jobcredits_plugin.ConfigurationError` a bad value raises.
    ``retry_after_max`` also takes a string of digits (a setting read from
    the environment).
    """
    return Problems(
        type_base=check_type_base(type_base, type_base_key),
        retry_after_max=check_retry_after_max(retry_after_max, retry_after_max_key),
    )


def check_type_base(value: Any, key: str = "problem_type_base") -> str | None:
    """None or ``about:blank`` for about:blank, else a URI prefix of printable
    ASCII without spaces (it is sent to every client of the app)."""
    if value is None or value == "" or value == ABOUT_BLANK:
        return None
    if not isinstance(value, str):
        raise ConfigurationError(
            f"{key} must be a string (a URI prefix), not {type(value).__name__}"
        )
    if len(value) > _TYPE_BASE_MAX or not all("!" <= c <= "~" for c in value):
        raise ConfigurationError(
            f"{key} must be a URI prefix of at most {_TYPE_BASE_MAX} printable ASCII "
            f"characters without spaces, not {value[:80]!r}"
        )
    return value


def check_retry_after_max(value: Any, key: str = "retry_after_max") -> int | None:
    """None (no cap) or a whole number of seconds from 1 to ten years; a
    string (from the environment) may say ``none`` or give the digits."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("none", "off"):
            return None
        if text.isascii() and text.isdigit():
            value = int(text)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SECONDS:
        raise ConfigurationError(
            f"{key} must be a whole number of seconds from 1 to {int(MAX_SECONDS)} "
            f"(or None for no cap), not {value!r}"
        )
    return value


def render_problem(
    err: JobCreditsError,
    instance: str | None = None,
    settings: Problems | None = None,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body of the answer to ``err``, and a log line for a 5xx.

    A 5xx answer tells the client only a generic sentence (its detail would
    name a store's URL, host, user and database, or echo a driver), so the
    full detail is logged here, once per answer: WARNING for a 503 (the store
    was out of reach: an outage to watch, retried by the client), ERROR for
    any other 5xx (a bug or a misconfiguration to fix). Every adapter renders
    through this function.
    """
    settings = settings if settings is not None else DEFAULT_PROBLEMS
    if err.status >= 500:
        log.log(
            logging.WARNING if err.status == 503 else logging.ERROR,
            "jobcredits answered %d %s to %s: %s",
            err.status,
            err.code,
            instance or "a call",
            err.detail,
            exc_info=err if err.status != 503 else None,
        )
    return err.status, settings.headers(err), settings.body(err, instance)


def problem_body(
    err: JobCreditsError, instance: str | None = None, settings: Problems | None = None
) -> bytes:
    """The problem+json body for an error, as bytes ready to send (logs
    nothing: adapters answer through :func:`render_problem`)."""
    return (settings or DEFAULT_PROBLEMS).body(err, instance)


def problem_headers(
    err: JobCreditsError, settings: Problems | None = None
) -> list[tuple[str, str]]:
    """Content-Type plus the error's own headers (``Retry-After``)."""
    return (settings or DEFAULT_PROBLEMS).headers(err)
