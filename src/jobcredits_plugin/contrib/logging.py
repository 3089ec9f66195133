"""One log record per ledger event, through the standard library's ``logging``.

::

    from jobcredits_plugin.contrib.logging import LoggingPlugin

    ledger.register(LoggingPlugin(accounts="hash", hash_key=os.environ["LOG_HASH_KEY"]))

Each record carries its facts twice: in the message, as ``key=value`` pairs a
person (or a logfmt parser) can read in a plain text log, and as attributes
named ``jobcredits_<field>`` (given through ``extra``) for structured
handlers. The attributes are flat, prefixed and hold only strings, numbers and
None: no name clashes with ``logging.LogRecord``'s own attributes,
structlog's ``ExtraAdder`` and JSON formatters copy them as they are, and
handlers that accept only primitive attribute values (OpenTelemetry's log
bridge) keep them all.

Slow store calls are logged by a plugin of their own, :class:`SlowStoreLogPlugin`
(register it too, or pass ``slow_store_seconds`` to :class:`LoggingPlugin`).

Standard library only: no extra to install.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import sys
import traceback
from collections.abc import Mapping
from typing import Any, Literal

from .._errors import JobCreditsError
from .._records import JobRecord
from ..hookspecs import hookimpl

__all__ = [
    "DEFAULT_LOGGER",
    "FIELD_PREFIX",
    "REDACTED",
    "LoggingPlugin",
    "Privacy",
    "SlowStoreLogPlugin",
]

#: The logger used when none is given: a child of the ledger's own
#: ``jobcredits_plugin`` logger, so both can be configured together or apart.
DEFAULT_LOGGER = "jobcredits_plugin.events"

#: Prefix of the attributes each record gets (``jobcredits_account``, ...).
FIELD_PREFIX = "jobcredits_"

#: What a redacted value is replaced with.
REDACTED = "***"

#: How the account (or the job id) appears in the log.
Privacy = Literal["plain", "hash", "redact"]

_PRIVACY = ("plain", "hash", "redact")

#: Hex characters kept from a hash: 64 bits, so two accounts of one service
#: practically never share a value, and short enough to read and to grep.
_HASH_HEX = 16

# Values that stay unquoted in the message: printable ASCII without spaces,
# quotes, backslashes or ``=``. Anything else is JSON-quoted, so that an
# account such as ``x outcome=refunded`` cannot forge a field.
_BARE = re.compile(r"[!#-<>-\[\]-~]+")

#: The fields each kind of event reports, in message order. The message holds
#: the ones a reader needs; every field is also an attribute.
_RECORD_MESSAGE = ("account", "scope", "job_id", "charge_id", "tier", "cost", "uses", "outcome")
_REJECT_MESSAGE = ("account", "scope", "job_id", "cost", "code", "status", "outcome")
_STORE_MESSAGE = ("operation", "seconds", "error", "outcome")

_OUTCOMES = {
    "charge": "charged",
    "reuse": "reused",
    "refund": "refunded",
    "expire": "expired",
}


def _logfmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6f}"
    text = str(value)
    if text != "-" and _BARE.fullmatch(text):
        return text
    # ensure_ascii: no raw line or paragraph separators reach a line-based log.
    return json.dumps(text, ensure_ascii=True)


def _check_privacy(name: str, value: object) -> Privacy:
    if value not in _PRIVACY:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, _PRIVACY))}, not {value!r}")
    return value  # type: ignore[return-value]


def _check_level(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a logging level such as logging.INFO, not {value!r}")
    return value


def _check_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
    return value


def _logger(logger: logging.Logger | str | None) -> logging.Logger:
    if logger is None or isinstance(logger, str):
        return logging.getLogger(logger or DEFAULT_LOGGER)
    return logger


class _Emitter:
    """Writing one record, for both plugins: the message and the attributes,
    and a handler that raises kept away from the charge."""

    logger: logging.Logger

    def _emit(
        self, level: int, event: str, fields: Mapping[str, Any], message: tuple[str, ...]
    ) -> None:
        """Log one record: ``jobcredits <event> key=value ...`` with every field
        also given as a ``jobcredits_<field>`` attribute.

        The message is formatted here rather than left to ``%`` arguments:
        each value must be quoted for the line to stay parseable, so there is
        no useful template to keep (the ``jobcredits_event`` attribute is
        what to group records by). With no arguments, ``logging`` leaves a
        ``%`` in an account alone.
        """
        text = "jobcredits " + event + "".join(f" {k}={_logfmt(fields[k])}" for k in message)
        extra = {FIELD_PREFIX + "event": event}
        extra.update({FIELD_PREFIX + k: v for k, v in fields.items()})
        try:
            self.logger.log(level, text, extra=extra)
        except Exception:  # noqa: BLE001 - whatever a handler raises, the charge stands
            self._handler_failed()

    def _handler_failed(self) -> None:
        """A handler raised out of ``Logger.log``. Report it like
        ``logging.Handler.handleError`` would, and never let it reach the
        caller: a log line is not worth a failed (and already charged)
        request."""
        if not logging.raiseExceptions:
            return
        # As in handleError: a closed or broken stderr is not worth raising for.
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(
                f"--- jobcredits {type(self).__name__}: a logging handler raised ---\n"
            )
            traceback.print_exc(file=sys.stderr)


class SlowStoreLogPlugin(_Emitter):
    """A plugin that logs each store operation that took at least ``seconds``.

    :param seconds: the threshold; ``0`` logs every operation (for
        debugging).
    :param logger: the logger (or its name) to log to; ``None`` means
        ``logging.getLogger("jobcredits_plugin.events")``, as for
        :class:`LoggingPlugin`.
    :param level: the level of the records (WARNING).

    A plugin of its own, rather than a hook of :class:`LoggingPlugin`: the
    ledger times its store calls only while some plugin implements
    ``on_store_call``, and most users of the event log want no store
    records, nor the timing. Register it when you do (or pass
    ``slow_store_seconds`` to :class:`LoggingPlugin`, which builds one).

    A failed operation gives the error's class name only: a store error's
    message may hold its URL.
    """

    def __init__(
        self,
        seconds: float,
        logger: logging.Logger | str | None = None,
        *,
        level: int = logging.WARNING,
    ) -> None:
        self.seconds = _check_seconds("seconds", seconds)
        self.logger = _logger(logger)
        self.level = _check_level("level", level)

    def __repr__(self) -> str:
        return f"SlowStoreLogPlugin(seconds={self.seconds!r}, logger={self.logger.name!r})"

    @hookimpl
    def on_store_call(self, operation: str, seconds: float, error: BaseException | None) -> None:
        if seconds < self.seconds or not self.logger.isEnabledFor(self.level):
            return
        fields = {
            "operation": operation,
            "seconds": seconds,
            # The class name only: a store error's message may hold its URL.
            "error": None if error is None else type(error).__qualname__,
            "outcome": "ok" if error is None else "error",
        }
        self._emit(self.level, "slow_store_call", fields, _STORE_MESSAGE)


class LoggingPlugin(_Emitter):
    """A plugin that logs each charge, reuse, refund, expiry and rejection.

    :param logger: the logger (or its name) to log to; ``None`` means
        ``logging.getLogger("jobcredits_plugin.events")``.
    :param level: the level of the events that change the books (charge,
        reuse, refund, expire). INFO by default: they are the normal life of
        the service, and the record an operator reads back to answer "was I
        billed twice?".
    :param reject_level: the level of refused calls. WARNING by default: each
        one is a client that did not get served (a bad job id, a 402, a 409,
        a store that could not be reached), which is worth seeing in a
        production log that shows warnings only. Lower it to ``level`` if
        refusals are routine for your clients.
    :param accounts: how the account appears: ``"plain"``; ``"hash"``, a BLAKE2b
        hex digest (16 characters), equal for equal accounts so one customer's
        records can still be followed; or ``"redact"``, always ``"***"``.
    :param job_ids: the same choice for job ids. ``"plain"`` by default: a
        job id is a random token the client mints, not customer data, and it
        is what support asks for.
    :param hash_key: the secret key for ``"hash"`` (at most 64 bytes; a
        ``str`` is UTF-8 encoded). Without one the hash is a plain BLAKE2b,
        which anyone can recompute for a list of guessed accounts (user
        numbers, e-mail addresses) and so reverse; with one, only holders of
        the key can. Keep it as secret as the accounts.
    :param slow_store_seconds: also log store operations that took at least
        this long (at ``slow_store_level``), as a :class:`SlowStoreLogPlugin`
        on the same logger would: the plugin builds one (``.slow_store``) and
        implements ``on_store_call`` through it. ``None`` (the default) logs
        none, and then the plugin has no ``on_store_call`` hook at all, so the
        ledger does not time store calls on its account.
    :param slow_store_level: the level of those records.

    Refused calls are logged with the error's ``code`` and ``status`` only,
    never its message: the message may quote the value that failed
    validation, or the store's address. The account, scope, job id and cost
    of a refusal are the ones :func:`~jobcredits_plugin.hookspecs.on_reject`
    passes, which are None for any value that failed validation, so a hostile
    header never reaches the log raw.

    A handler that raises cannot break a charge: the plugin catches what
    escapes ``Logger.log`` and reports it on ``sys.stderr`` the way
    ``logging.Handler.handleError`` does (only while
    ``logging.raiseExceptions`` is true). It cannot rely on the ledger's own
    isolation, which logs the failure to the ``jobcredits_plugin`` logger,
    the parent of the default one and likely to share the broken handler.
    """

    def __init__(
        self,
        logger: logging.Logger | str | None = None,
        level: int = logging.INFO,
        *,
        reject_level: int = logging.WARNING,
        accounts: Privacy = "plain",
        job_ids: Privacy = "plain",
        hash_key: bytes | str | None = None,
        slow_store_seconds: float | None = None,
        slow_store_level: int = logging.WARNING,
    ) -> None:
        self.logger = _logger(logger)
        self.level = _check_level("level", level)
        self.reject_level = _check_level("reject_level", reject_level)
        self.slow_store_level = _check_level("slow_store_level", slow_store_level)
        self.accounts = _check_privacy("accounts", accounts)
        self.job_ids = _check_privacy("job_ids", job_ids)
        if isinstance(hash_key, str):
            hash_key = hash_key.encode()
        if hash_key is not None and not isinstance(hash_key, bytes):
            raise TypeError("hash_key must be bytes, str or None")
        if hash_key is not None and len(hash_key) > hashlib.blake2b.MAX_KEY_SIZE:
            raise ValueError(
                f"hash_key must be at most {hashlib.blake2b.MAX_KEY_SIZE} bytes "
                f"(secrets.token_hex(32) is enough), not {len(hash_key)}"
            )
        self._hash_key = hash_key or b""
        self.slow_store_seconds = slow_store_seconds
        #: The :class:`SlowStoreLogPlugin` that ``slow_store_seconds`` asked for
        #: (None without it), whose hook this plugin takes on as its own.
        self.slow_store: SlowStoreLogPlugin | None = None
        if slow_store_seconds is not None:
            _check_seconds("slow_store_seconds", slow_store_seconds)
            self.slow_store = SlowStoreLogPlugin(
                slow_store_seconds, self.logger, level=self.slow_store_level
            )
            # An attribute of this object only, so that pluggy (which finds
            # hooks by name) sees on_store_call exactly when it was asked for.
            self.on_store_call = self.slow_store.on_store_call

    def __repr__(self) -> str:
        return (
            f"LoggingPlugin(logger={self.logger.name!r}, accounts={self.accounts!r}, "
            f"job_ids={self.job_ids!r})"
        )

    # -- privacy ---------------------------------------------------------------

    def _hash(self, value: str) -> str:
        digest = hashlib.blake2b(value.encode(), digest_size=_HASH_HEX // 2, key=self._hash_key)
        return digest.hexdigest()

    def _private(self, mode: Privacy, value: str | None) -> str | None:
        if value is None or mode == "plain":
            return value
        if mode == "hash":
            return self._hash(value)
        return REDACTED

    # -- emitting --------------------------------------------------------------

    def _record_event(self, event: str, record: JobRecord) -> None:
        if not self.logger.isEnabledFor(self.level):
            return
        fields = {
            "account": self._private(self.accounts, record.account),
            "scope": record.scope,
            "job_id": self._private(self.job_ids, record.job_id),
            "charge_id": record.charge_id,
            "state": record.state,
            "tier": record.tier,
            "backend": record.backend,
            "cost": record.cost,
            "debited": record.debited,
            "uses": record.uses,
            "charged_at": record.charged_at,
            "expires_at": record.expires_at,
            "outcome": _OUTCOMES[event],
        }
        self._emit(self.level, event, fields, _RECORD_MESSAGE)

    # -- hooks -----------------------------------------------------------------

    @hookimpl
    def on_charge(self, record: JobRecord) -> None:
        self._record_event("charge", record)

    @hookimpl
    def on_reuse(self, record: JobRecord) -> None:
        self._record_event("reuse", record)

    @hookimpl
    def on_refund(self, record: JobRecord) -> None:
        self._record_event("refund", record)

    @hookimpl
    def on_expire(self, record: JobRecord) -> None:
        self._record_event("expire", record)

    @hookimpl
    def on_reject(
        self,
        error: JobCreditsError,
        account: str | None,
        scope: str | None,
        job_id: str | None,
        cost: int | None,
    ) -> None:
        if not self.logger.isEnabledFor(self.reject_level):
            return
        fields = {
            "account": self._private(self.accounts, account),
            "scope": scope,
            "job_id": self._private(self.job_ids, job_id),
            "cost": cost,
            "code": error.code,
            "status": error.status,
            "retry_after": error.retry_after,
            "outcome": "rejected",
        }
        self._emit(self.reject_level, "reject", fields, _REJECT_MESSAGE)
