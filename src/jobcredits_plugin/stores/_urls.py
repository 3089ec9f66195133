"""Store URLs: reading their options, and printing them without secrets.

Every store takes its settings from a URL's query string the same way, and
every error or log line that names a URL names it without its password; one
module so that no store grows its own, subtly different, parser.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from .._errors import ConfigurationError, InvalidArgument

__all__ = [
    "JOURNAL_OPTIONS",
    "MASK",
    "check_url_text",
    "is_secret_option",
    "parse_bool",
    "parse_optional_seconds",
    "parse_options",
    "redact_text",
    "redact_url",
]

#: What a secret is replaced with.
MASK = "***"

#: An option whose name contains one of these holds a secret (``password``,
#: ``sslpassword``, ``passfile``, ``sslkey``, ``token``, ``auth``...). Broad
#: on purpose: masking a harmless option costs a reader nothing, printing a
#: password costs a rotation.
_SECRET_WORDS = ("pass", "pwd", "secret", "token", "key", "cred", "auth")

# A URL inside free text: a scheme, ``://``, then up to a space, a quote or a
# closing bracket (how messages and reprs delimit the URLs they quote).
# Both patterns start only where a run of their name characters starts (the
# lookbehinds): tried at every position inside a long run, each attempt would
# rescan the rest of it, and a 100,000-character argument took minutes to
# print (quadratic); this way each run is scanned once.
_URL_IN_TEXT = re.compile(r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>()\[\]{}]+")
# ``name=value`` / ``name: value`` pairs outside URLs, as in a libpq
# connection string (``password='a b'``) or a driver's echo of its options.
_PAIR_IN_TEXT = re.compile(
    r"(?P<name>(?<![A-Za-z0-9_.-])[A-Za-z_][A-Za-z0-9_.-]*)(?P<sep>\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,'\"]+)"
)


# Not text in any encoding a driver or a libpq connection string takes: a
# lone surrogate raised UnicodeEncodeError from deep inside the drivers, and
# a NUL cuts a C string short.
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")


def check_url_text(url: str, what: str = "store URL") -> str:
    """Refuse a URL holding a NUL or a lone surrogate (raw; percent-encoded
    ones are the drivers' to judge) with :class:`ConfigurationError`, before
    a driver sees it. The message shows the URL redacted and escaped."""
    if _NOT_TEXT.search(url) is not None:
        shown = redact_url(_NOT_TEXT.sub(lambda m: f"\\u{ord(m.group()):04x}", url))
        raise ConfigurationError(
            f"{what} {shown!r} holds a NUL or a lone surrogate (U+D800..U+DFFF), "
            "which no driver can take"
        )
    return url


def is_secret_option(name: str) -> bool:
    """Whether an option (a URL query name, a connection-string key) holds a
    secret and must be masked wherever it is printed."""
    # The library's own names (JOBCREDITS_URL, JOBCREDITS_TRACEBACK=1 in a
    # hint) hold "cred" by accident, not a credential.
    lowered = name.lower().replace("jobcredits", "")
    return any(word in lowered for word in _SECRET_WORDS)


def _redact_query(query: str) -> str:
    """The query string with the value of every secret option masked; the
    other options are kept exactly as written."""
    if not query:
        return query
    out = []
    for piece in query.split("&"):
        name, eq, _ = piece.partition("=")
        if eq and is_secret_option(urllib.parse.unquote_plus(name)):
            piece = f"{name}={MASK}"
        out.append(piece)
    return "&".join(out)


def redact_url(url: object) -> str:
    """The URL with every secret masked (``***``), fit for errors and logs.

    Masks the userinfo password and the value of any query option whose name
    contains pass, pwd, secret, token, key, cred or auth (``?password=``,
    ``?sslpassword=``, ``?passfile=``, a Redis ``?password=`` that is about
    to be rejected as unknown). The one redactor every store, the CLI and
    the Django checks print URLs through.
    """
    if not isinstance(url, str):
        return f"<{type(url).__name__}>"
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{MASK}@{hostport}"
    query = _redact_query(parts.query)
    fragment = _redact_query(parts.fragment) if "=" in parts.fragment else parts.fragment
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url
    # Rebuilt by hand: urlunsplit drops an empty host (redis+unix:///path).
    scheme, rest = url.split("://", 1) if "://" in url else ("", url)
    path = parts.path
    out = f"{scheme}://{netloc}{path}" if scheme else f"{netloc}{path}"
    if query or "?" in rest:
        out += f"?{query}"
    if fragment or "#" in rest:
        out += f"#{fragment}"
    return out


def _secrets_of(url: str) -> list[str]:
    """The secret values a URL carries, as they may be echoed (raw and decoded)."""
    try:
        parts = urllib.parse.urlsplit(url)
        found = [parts.password] if parts.password else []
    except ValueError:
        return []
    if "@" in parts.netloc and ":" in parts.netloc.rpartition("@")[0]:
        found.append(parts.netloc.rpartition("@")[0].partition(":")[2])
    for piece in parts.query.split("&"):
        name, eq, value = piece.partition("=")
        if eq and value and is_secret_option(urllib.parse.unquote_plus(name)):
            found += [value, urllib.parse.unquote_plus(value)]
    expanded = []
    for secret in found:
        expanded += [secret, urllib.parse.unquote(secret)]
    # Longest first, so that a secret containing another is masked whole; a
    # secret of one or two characters would mask half the message instead.
    return sorted({s for s in expanded if len(s) >= 3}, key=len, reverse=True)


def redact_text(text: str, *urls: str | None) -> str:
    """``text`` (an error message, a driver's message, a repr) with secrets masked.

    Every URL in the text goes through :func:`redact_url`; every
    ``name=value`` pair whose name holds a secret (a libpq connection string's
    ``password='...'``) has its value masked; and any secret value of the
    ``urls`` given (the URL a store was opened with) is masked wherever it
    appears, for a driver that echoes a password on its own.
    """
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), str(text))
    text = _PAIR_IN_TEXT.sub(
        lambda m: (
            f"{m['name']}{m['sep']}{MASK}"
            if is_secret_option(m["name"]) and m["value"] != MASK
            else m.group(0)
        ),
        text,
    )
    for url in urls:
        if url:
            for secret in _secrets_of(url):
                text = text.replace(secret, MASK)
    return text


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
