"""Input checks that run before anything touches a store.

Ids arrive from HTTP headers, so they are hostile until proven otherwise: a
check here is what keeps a megabyte header, a control character in a log line
or a wildcard in a Redis key from ever reaching storage. Every function either
returns the value unchanged or raises; none of them coerces, because a billing
key that was silently rewritten is a key that can collide.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

from ._errors import ConfigurationError, InvalidAccount, InvalidArgument, InvalidJobId

JOB_ID_MAX = 128
SCOPE_MAX = 64
ACCOUNT_MAX = 256
LABEL_MAX = 64

#: The largest amount of credits anything may hold or move: a cost, a grant,
#: a balance, ``max_uses``. 2**53 - 1 is the largest integer every store keeps
#: exactly (Redis's Lua numbers are doubles; SQLite and PostgreSQL hold 64-bit
#: integers), so no store ever rounds, wraps or overflows a figure.
MAX_CREDITS = 2**53 - 1

#: The longest duration any time option may name (ttl, lease, timeouts,
#: expiry margins): ten years, in seconds. Far beyond any sensible setting,
#: and small enough that a clock reading plus it stays exact everywhere (as
#: milliseconds too, which Redis expiries use).
MAX_SECONDS = 315_576_000.0

#: The longest a store may be told to wait on its driver (a connection, a
#: free pooled connection, an answer, a statement): about 11.5 days. Drivers
#: turn these into C integers of milliseconds or timevals, which overflow (or
#: never time out) far beyond it.
MAX_WAIT_SECONDS = 1_000_000.0

#: The most records one batch of a store's prune (or one request's
#: opportunistic settling) may handle: one batch is one transaction or one
#: Lua script, which must stay short.
MAX_BATCH = 100_000

#: The default character set of job ids and scopes: a UUID, a ULID or a
#: ``namespace:counter`` id all fit, and none of these characters needs quoting
#: in a header, a URL, a log line or a storage key.
DEFAULT_JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]+")
_SCOPE_PATTERN = DEFAULT_JOB_ID_PATTERN
# C0 and C1 control characters, DEL, and the Unicode line/paragraph separators
# that some log viewers treat as newlines: refused in accounts and labels.
# Lone surrogates: valid in a JSON string ("\\ud800") and in a Python str, but
# not text: no store can encode them (UTF-8 refuses), so they are refused here
# like control characters, before anything is recorded.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# Either of the two, in one scan (the common case finds neither).
_BAD_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _bad_text(value: str) -> str | None:
    """What is wrong with ``value``'s characters, or None when nothing is."""
    found = _BAD_TEXT.search(value)
    if found is None:
        return None
    if _SURROGATE.match(found.group()):
        return "lone surrogates (U+D800..U+DFFF)"
    return "control characters"


def check_text(name: str, value: str) -> str:
    """Refuse control characters and lone surrogates in a string ``name``."""
    problem = _bad_text(value)
    if problem is not None:
        raise InvalidArgument(f"{name} must not contain {problem}")
    return value


@contextlib.contextmanager
def configuring(what: str | None = None) -> Iterator[None]:
    """Report a failed check as the app's :class:`ConfigurationError`.

    The checks below raise :class:`InvalidArgument`, the 400 that describes a
    client's input. The same check made while the app sets the library up (a
    Ledger option, a store URL, a decorator's fixed cost, an adapter setting)
    finds the app's own bug instead; wrapping that code in ``configuring()``
    keeps one set of checks and still tells the two apart. ``what`` prefixes
    the message (``"JOBCREDITS_TTL"``, ``"store URL ..."``).
    """
    try:
        yield
    except ConfigurationError:
        raise
    except InvalidArgument as exc:
        raise ConfigurationError(f"{what}: {exc.detail}" if what else exc.detail) from exc


F = TypeVar("F", bound=Callable[..., Any])


def configuration(what: str | None = None) -> Callable[[F], F]:
    """Decorate a setup function (a constructor, ``from_url``) so that a
    failed check inside it is the app's :class:`ConfigurationError` (see
    :func:`configuring`)."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with configuring(what):
                return fn(*args, **kwargs)

        return cast(F, wrapper)

    return decorate


def compile_job_id_pattern(pattern: str | re.Pattern[str] | None) -> re.Pattern[str]:
    """Turn ``Ledger(job_id_pattern=...)`` into a compiled pattern.

    The pattern must match the *whole* id (``fullmatch``); the 128-character
    limit applies whatever the pattern says.
    """
    if pattern is None:
        return DEFAULT_JOB_ID_PATTERN
    if isinstance(pattern, re.Pattern):
        if not isinstance(pattern.pattern, str):
            # A bytes pattern cannot match a str id: every charge would raise
            # TypeError instead of the ledger refusing it here.
            raise InvalidArgument("job_id_pattern must be a str pattern, not a bytes one")
        return pattern
    if isinstance(pattern, str):
        try:
            return re.compile(pattern)
        # re raises OverflowError for a repeat count beyond its limit
        # (``x{99999999999}``) and RecursionError for very deep nesting: the
        # same bad expression as any other.
        except (re.error, OverflowError, RecursionError) as exc:
            raise InvalidArgument(
                f"job_id_pattern is not a valid regular expression: {exc}"
            ) from exc
    raise InvalidArgument(
        f"job_id_pattern must be a string, a compiled pattern or None, not {type(pattern).__name__}"
    )


def _preview(value: str) -> str:
    shown = value[:40] + ("…" if len(value) > 40 else "")
    return repr(shown)


def _check_length(
    name: str, value: str, most: int, error: type[InvalidArgument] = InvalidArgument
) -> None:
    """Refuse an empty ``value`` or one over ``most`` characters, as ``error``.

    Checked before any pattern or character scan, so a megabyte header costs
    a ``len()`` and nothing more.
    """
    if not value:
        raise error(f"{name} must not be empty")
    if len(value) > most:
        raise error(f"{name} is {len(value)} characters long; at most {most} allowed")


def check_job_id(job_id: Any, pattern: re.Pattern[str] = DEFAULT_JOB_ID_PATTERN) -> str:
    # Every charge, confirm and refund checks its key: the common case (a
    # plain str of the default pattern's characters) in one test, no calls.
    if (
        type(job_id) is str
        and pattern is DEFAULT_JOB_ID_PATTERN
        and len(job_id) <= JOB_ID_MAX
        and pattern.fullmatch(job_id) is not None
    ):
        return job_id
    if not isinstance(job_id, str):
        raise InvalidJobId(f"job id must be a string, not {type(job_id).__name__}")
    _check_length("job id", job_id, JOB_ID_MAX, InvalidJobId)
    if pattern.fullmatch(job_id) is None:
        raise InvalidJobId(
            f"job id {_preview(job_id)} has characters outside the allowed pattern "
            f"{pattern.pattern!r}"
        )
    if pattern is not DEFAULT_JOB_ID_PATTERN:
        # An app's own pattern (``.+``) may admit what the default never
        # does: a lone surrogate (no store can hold one), a NUL (PostgreSQL
        # refused it with a raw DataError) or another control character (a
        # forged line in every log that names the job). Refused whatever the
        # pattern says, like in an account.
        problem = _bad_text(job_id)
        if problem is not None:
            raise InvalidJobId(f"job id must not contain {problem}")
    return job_id


def check_scope(scope: Any) -> str:
    if type(scope) is str and len(scope) <= SCOPE_MAX and _SCOPE_PATTERN.fullmatch(scope):
        return scope  # the common case, as in check_job_id
    if not isinstance(scope, str):
        raise InvalidJobId(f"scope must be a string, not {type(scope).__name__}")
    if not scope or len(scope) > SCOPE_MAX or _SCOPE_PATTERN.fullmatch(scope) is None:
        raise InvalidJobId(
            f"scope {_preview(scope)} must be 1-{SCOPE_MAX} characters of [A-Za-z0-9._:-]"
        )
    return scope


def check_account(account: Any) -> str:
    if (
        type(account) is str
        and 0 < len(account) <= ACCOUNT_MAX
        and _BAD_TEXT.search(account) is None
    ):
        return account  # the common case, as in check_job_id
    if not isinstance(account, str):
        raise InvalidAccount(f"account must be a string, not {type(account).__name__}")
    _check_length("account", account, ACCOUNT_MAX, InvalidAccount)
    problem = _bad_text(account)
    if problem is not None:
        raise InvalidAccount(f"account must not contain {problem}")
    return account


def _figure(value: int) -> str:
    """An out-of-range int for a message: huge ones by their size, not 4000 digits."""
    text = str(value)
    return text if len(text) <= 24 else f"an int of {len(text)} digits"


def check_credits(name: str, value: Any, *, low: int = 0) -> int:
    """An amount of credits: an int from ``low`` to :data:`MAX_CREDITS`.

    The one range every store holds exactly; anything outside it is refused
    here, before a store is touched, instead of overflowing (SQLite, PostgreSQL),
    rounding (Redis's Lua doubles) or growing without bound (memory) there.
    """
    if type(value) is int and low <= value <= MAX_CREDITS:
        return value  # the common case: exactly an int (never a bool), in range
    # bool is an int subclass; ``cost=True`` is a bug, not a price.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= MAX_CREDITS:
        raise InvalidArgument(
            f"{name} must be an int from {low} to {MAX_CREDITS}, not {_figure(value)}"
        )
    return value


def check_cost(cost: Any) -> int:
    return check_credits("cost", cost)


def check_amount(amount: Any) -> int:
    """A grant's amount: negative takes credits away, so -MAX..MAX."""
    return check_credits("amount", amount, low=-MAX_CREDITS)


def check_label(name: str, value: Any) -> str | None:
    """Check ``tier`` or ``backend``: None, or a short printable string."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string or None, not {type(value).__name__}")
    if not value or len(value) > LABEL_MAX:
        raise InvalidArgument(f"{name} must be 1-{LABEL_MAX} characters long")
    problem = _bad_text(value)
    if problem is not None:
        raise InvalidArgument(f"{name} must not contain {problem}")
    return value


def check_charge_id(charge_id: Any) -> str | None:
    if charge_id is None:
        return None
    if type(charge_id) is str and 0 < len(charge_id) <= 64 and _BAD_TEXT.search(charge_id) is None:
        return charge_id  # the common case (every confirm and refund), as in check_job_id
    if not isinstance(charge_id, str) or not charge_id or len(charge_id) > 64:
        raise InvalidArgument("charge_id must be None or a non-empty string of at most 64 chars")
    problem = _bad_text(charge_id)
    if problem is not None:
        raise InvalidArgument(f"charge_id must not contain {problem}")
    return charge_id


#: The longest grant id a caller may pass to ``Ledger.grant(..., grant_id=)``.
GRANT_ID_MAX = 128


def check_grant_id(grant_id: Any) -> str | None:
    """A caller's idempotency key for a grant: None, or 1-128 characters of
    ``[A-Za-z0-9._:-]`` (a UUID, ``invoice-2026-12-0042``, a payment
    provider's event id), the job ids' default character set: it ends up in
    storage keys, journal entries and log lines."""
    if grant_id is None:
        return None
    if not isinstance(grant_id, str):
        raise InvalidArgument(f"grant_id must be a string or None, not {type(grant_id).__name__}")
    _check_length("grant_id", grant_id, GRANT_ID_MAX)
    if DEFAULT_JOB_ID_PATTERN.fullmatch(grant_id) is None:
        problem = _bad_text(grant_id)
        what = (
            f"must not contain {problem}" if problem else "has characters outside [A-Za-z0-9._:-]"
        )
        raise InvalidArgument(f"grant_id {_preview(grant_id)} {what}")
    return grant_id


def check_flag(name: str, value: Any) -> bool:
    """A yes/no option (``fail_open``, ``balances``): True or False only.

    ``fail_open="false"`` from a settings file is a non-empty string, and a
    truthy one: read as a flag it would silently give the service away for
    free during an outage.
    """
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name} must be True or False, not {value!r}")
    return value


#: Clock readings are seconds since the epoch: 0 up to (not including) 2**33,
#: the year 2242. A reading outside, or one that is not a finite number, means
#: the app's clock is broken (a millisecond clock, a None, a NaN).
CLOCK_MAX = float(2**33)


def check_clock_reading(now: Any) -> float:
    """A clock reading as a float, or :class:`ConfigurationError`: a broken
    clock is the app's bug, never the client's (a NaN, for one, compares
    false with every lease and expiry, and would let a job be charged again)."""
    if type(now) is float and 0.0 <= now < CLOCK_MAX:
        return now
    if isinstance(now, (int, float)) and not isinstance(now, bool):
        value = float(now) if abs(now) < 2**64 else float("inf")
        if 0.0 <= value < CLOCK_MAX:
            return value
    raise ConfigurationError(
        f"the ledger's clock returned {now!r} ({type(now).__name__}); it must return "
        f"seconds since the epoch as a finite number from 0 to below 2**33 "
        "(time.time() does)"
    )


def check_positive_seconds(name: str, value: Any, *, most: float = MAX_SECONDS) -> float:
    """A duration: a finite number of seconds in (0, ``most``] (ten years
    unless a store's driver needs less)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(f"{name} must be a number of seconds, not {type(value).__name__}")
    # ``not 0 < value <= most`` is also true for NaN; an int too large for a
    # float compares fine with Python's exact int/float comparison.
    if not 0 < value <= most:
        shown = _figure(value) if isinstance(value, int) else repr(value)
        raise InvalidArgument(
            f"{name} must be a positive, finite number of seconds of at most {most:g}, not {shown}"
        )
    return float(value)


def check_optional_seconds(name: str, value: Any, *, most: float = MAX_SECONDS) -> float | None:
    """A duration option that ``None`` switches off."""
    return None if value is None else check_positive_seconds(name, value, most=most)


def check_int_option(name: str, value: Any, low: int, high: int) -> int:
    """An integer option (a pool size, a batch, a retry count) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidArgument(f"{name} must be an int from {low} to {high}, not {_figure(value)}")
    return value


def check_optional_count(name: str, value: Any) -> int | None:
    """``max_uses``, a prune ``limit``: None (no bound) or an int from 1 to
    :data:`MAX_CREDITS`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CREDITS:
        shown = _figure(value) if isinstance(value, int) else repr(value)
        raise InvalidArgument(f"{name} must be None or an int from 1 to {MAX_CREDITS}, not {shown}")
    return value


JOURNAL_LIMIT_MAX = 10_000
CURSOR_NAME_MAX = 64


def check_position(name: str, value: Any) -> int:
    """A journal position (a ``seq``, 0 before the first entry)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CREDITS:
        shown = _figure(value) if isinstance(value, int) else repr(value)
        raise InvalidArgument(
            f"{name} must be an int from 0 to {MAX_CREDITS} (a journal seq), not {shown}"
        )
    return value


def check_journal_limit(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= JOURNAL_LIMIT_MAX:
        raise InvalidArgument(f"limit must be an int from 1 to {JOURNAL_LIMIT_MAX}, not {value!r}")
    return value


def check_cursor_name(value: Any) -> str:
    """A cursor's name: it becomes a key in the store, so the job id rules apply."""
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= CURSOR_NAME_MAX
        or DEFAULT_JOB_ID_PATTERN.fullmatch(value) is None
    ):
        raise InvalidArgument(
            f"cursor name must be 1-{CURSOR_NAME_MAX} characters of A-Z a-z 0-9 . _ : -, "
            f"not {value!r}"
        )
    return value
