"""Which redis-py errors mean "the server cannot serve right now".

Only those become :class:`~jobcredits_plugin.StoreUnavailable`, the 503 that
``fail_open`` may let through; every other driver error (a script's error
reply, bad data) is a bug and is raised as it is.
"""

from __future__ import annotations

import redis
import redis.exceptions
from redis.exceptions import RedisError

from ..._errors import ConfigurationError, StoreUnavailable
from .._urls import redact_text

__all__ = ["DRIVER_ERRORS", "OLD_SERVER", "fault", "is_unavailable"]


def _exception_types(*names: str) -> tuple[type[BaseException], ...]:
    """The named redis-py exception classes this version of redis-py has."""
    found = (getattr(redis.exceptions, name, None) for name in names)
    return tuple(t for t in found if isinstance(t, type) and issubclass(t, BaseException))


#: Driver errors that mean "could not reach the server, or it cannot serve
#: right now": only these become StoreUnavailable, the 503 that fail_open may
#: let through. Connection failures (refused, reset, auth, too many clients),
#: timeouts, a server still loading its data, a replica that became read-only
#: in a failover, a cluster that is down, resharding or unreachable, a server
#: out of memory, and a garbled reply from a dying connection.
_UNAVAILABLE_TYPES: tuple[type[BaseException], ...] = (
    OSError,
    *_exception_types(
        "ConnectionError",  # also BusyLoadingError, AuthenticationError, MaxConnectionsError
        "TimeoutError",
        "BusyLoadingError",
        "ReadOnlyError",
        "TryAgainError",
        "ClusterError",  # ClusterDownError, MasterDownError, "TTL exhausted"
        "ClusterDownError",
        "MasterDownError",
        "SlotNotCoveredError",
        "RedisClusterUnreachableError",
        "OutOfMemoryError",
        "InvalidResponse",
    ),
)
#: Error replies that say the same, for the ones redis-py has no class for
#: (a script running past its time limit answers BUSY to everyone else).
_UNAVAILABLE_REPLIES = (
    "BUSY ",
    "LOADING ",
    "MASTERDOWN ",
    "READONLY ",
    "TRYAGAIN ",
    "CLUSTERDOWN ",
    "NOREPLICAS ",
    "OOM ",
)
#: Every error the driver raises (the cluster client's own are no RedisError).
DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    RedisError,
    OSError,
    *_exception_types("RedisClusterException"),
)


#: What the scripts answer when the server is too old for the journal.
OLD_SERVER = "the jobcredits journal needs Redis 7.0 or newer"


def is_unavailable(exc: BaseException) -> bool:
    """Whether a driver error means the server could not be reached or cannot
    serve right now (StoreUnavailable), rather than a bug: a script's error
    reply, a DataError, a wrong type (raised as they are, and never passed by
    fail_open)."""
    if isinstance(exc, _UNAVAILABLE_TYPES):
        return True
    if isinstance(exc, redis.exceptions.ResponseError):
        return str(exc).startswith(_UNAVAILABLE_REPLIES)
    return False


def fault(exc: BaseException, label: str, url: str | None) -> BaseException:
    """What a store (``label``, on ``url``) raises for a driver error:
    StoreUnavailable when the server could not be reached or cannot serve
    right now, the error itself when it is a bug (a script error, bad data),
    which fail_open never passes."""
    if is_unavailable(exc):
        return _unavailable(exc, label, url)
    if isinstance(exc, redis.exceptions.ResponseError) and "DB index is out of range" in str(exc):
        # SELECT of a database the server does not have: the URL's db
        # number is the app's mistake, on every call until it is fixed.
        return ConfigurationError(
            f"{label}: the server has no database by the URL's db number "
            f"({redact_text(str(exc), url)})"
        )
    if isinstance(exc, redis.exceptions.ResponseError) and OLD_SERVER in str(exc):
        # A server too old for journal=true: the deployment does not fit
        # the settings, the app's to fix (or to set journal=false).
        return ConfigurationError(f"{label}: {exc}")
    return exc


def _unavailable(exc: BaseException, label: str, url: str | None) -> StoreUnavailable:
    # The driver's message may name the URL or echo a credential.
    text = redact_text(str(exc), url)
    if isinstance(exc, redis.exceptions.AuthenticationError) or "WRONGPASS" in str(exc):
        return StoreUnavailable(
            f"{label}: authentication failed (check the user and password): {text}"
        )
    return StoreUnavailable(f"{label}: {type(exc).__name__}: {text}")
