"""Store URLs: reading their options, and printing them without secrets.

Every store takes its settings from a URL's query string the same way, and
every error or log line that names a URL names it without its password; one
module so that no store grows its own, subtly different, parser.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from .._errors import InvalidArgument

__all__ = ["JOURNAL_OPTIONS", "parse_bool", "parse_optional_seconds", "parse_options", "redact_url"]


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, fit for errors and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def parse_options(
    query: str,
    allowed: Mapping[str, Callable[[str], Any]],
    url: str,
    what: str = "store URL",
) -> dict[str, Any]:
    """The query string's options, each converted by its ``allowed`` callable.

    An unknown name or a value the converter rejects raises InvalidArgument
    naming the option, the (redacted) URL and the accepted names: a typo in a
    deploy's URL must fail loudly, not fall back to a default.
    """
    opts: dict[str, Any] = {}
    for name, values in urllib.parse.parse_qs(query, keep_blank_values=True).items():
        if name not in allowed:
            raise InvalidArgument(
                f"unknown option {name!r} in {what} {redact_url(url)!r}; "
                f"accepted: {', '.join(sorted(allowed)) or 'none'}"
            )
        try:
            opts[name] = allowed[name](values[-1])
        except ValueError as exc:
            raise InvalidArgument(
                f"bad value for {name!r} in {what} {redact_url(url)!r}: {exc}"
            ) from exc
    return opts


def parse_bool(value: str) -> bool:
    """A URL flag: 1/true/yes/on or 0/false/no/off (any case)."""
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, not {value!r}")


def parse_optional_seconds(value: str) -> float | None:
    """Seconds, or none/off/empty for no limit."""
    if value.strip().lower() in ("", "none", "off"):
        return None
    return float(value)


#: The journal's options, which every store's URL accepts.
JOURNAL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "journal": parse_bool,
    "journal_reuses": parse_bool,
    "journal_max_age": parse_optional_seconds,
}
