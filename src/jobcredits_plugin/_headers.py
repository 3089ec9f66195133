"""Reading a header from whatever request object a framework hands over.

:func:`header` builds the reader an app passes as ``account=`` or
``job_id=``; :func:`reader` is the adapters' cached way to the job id
reader of a header name. A reader is marked, so that the call path can tell
a value the *client* sent (a bad one is the client's 400) from a value the
*app's own* callable computed (a bad one is the app's bug, a 500): see
:func:`account_source`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

from ._errors import InvalidArgument
from ._validation import configuration

__all__ = [
    "AccountSource",
    "account_source",
    "environ_header",
    "environ_key",
    "header",
    "raw_name",
    "reader",
    "scope_header",
]

#: An HTTP field name is a token (RFC 9110 §5.1, §5.6.2): anything else can
#: never arrive as a header, and a non-latin-1 one would not even encode.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

#: Where an account came from: ``"client"`` (read from the request by a
#: :func:`header` reader: a bad value is the client's 400) or ``"app"`` (the
#: app's own callable computed it: a bad value is the app's bug, a 500).
AccountSource = Literal["client", "app"]


def _meta_key(name: str) -> str:
    """Where a WSGI environ (or Django's ``request.META``) keeps header ``name``."""
    meta_key = "HTTP_" + name.upper().replace("-", "_")
    if meta_key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
        meta_key = meta_key[5:]
    return meta_key


def account_source(fn: Any) -> AccountSource:
    """Where the values of an ``account`` callable come from: ``"client"``
    for a :func:`header` reader, ``"app"`` for any other callable."""
    return "client" if getattr(fn, "jobcredits_header", None) is not None else "app"


@configuration()
def header(name: str) -> Callable[..., str | None]:
    """A callable that reads header ``name`` from a request, for the ``account=``
    or ``job_id=`` of a decorator.

    It understands a Flask/Werkzeug, Django or Starlette request (anything
    with a case-insensitive ``.headers``), a Django ``request.META``, a WSGI
    environ and an ASGI scope, taken from the first positional argument (or a
    ``request`` keyword). Returns None when the header is absent or blank.

    Reading the *account* from a header trusts whoever set it: do that only
    behind a proxy that authenticates the caller and overwrites the header.
    """
    if not isinstance(name, str) or _TOKEN.fullmatch(name) is None:
        raise InvalidArgument(f"header name must be a non-empty token, not {name!r}")
    lower = name.lower()
    raw = lower.encode("latin-1")
    meta_key = _meta_key(name)

    def read(*args: Any, **kwargs: Any) -> str | None:
        request = args[0] if args else kwargs.get("request")
        value: Any = None
        if isinstance(request, Mapping):
            if "type" in request and "headers" in request:  # ASGI scope
                return scope_header(request["headers"], raw)
            return environ_header(request, meta_key)  # WSGI environ
        if request is not None:
            headers = getattr(request, "headers", None)
            if headers is not None and hasattr(headers, "get"):
                value = headers.get(name)
            else:
                meta = getattr(request, "META", None)
                if isinstance(meta, Mapping):
                    value = meta.get(meta_key)
        if value is None:
            return None
        value = str(value).strip()
        return value or None

    # Marks a reader of client input (see account_source).
    read.jobcredits_header = name  # type: ignore[attr-defined]
    read.__name__ = f"header_{lower.replace('-', '_')}"
    read.__qualname__ = read.__name__
    return read


#: One reader per header name for every adapter: the same few names are read
#: on every request, and building a reader checks the name once.
_cached_reader = functools.lru_cache(maxsize=256)(header)


def reader(name: Any) -> Callable[..., str | None]:
    """The job id reader of a header name (the name checked when it is built).

    Only a str reaches the cache: a list from a settings file would make the
    cache raise a bare TypeError ("unhashable") instead of the header check's
    own :class:`~jobcredits_plugin.ConfigurationError`."""
    return _cached_reader(name) if isinstance(name, str) else header(name)


@functools.lru_cache(maxsize=256)
def _forms(name: str) -> tuple[bytes, str]:
    """Header ``name`` as an ASGI scope spells it and as a WSGI environ keys
    it, checked like :func:`reader` checks it the first time it is seen."""
    reader(name)  # a bad name raises here, as it would for the reader
    return name.lower().encode("latin-1"), _meta_key(name)


def raw_name(name: str) -> bytes:
    """Header ``name`` as an ASGI scope spells it, for :func:`scope_header`."""
    return _forms(name)[0]


def environ_key(name: str) -> str:
    """Header ``name``'s key in a WSGI environ, for :func:`environ_header`."""
    return _forms(name)[1]


def scope_header(headers: Any, raw: bytes) -> str | None:
    """What :func:`header`'s reader returns for an ASGI scope whose headers
    are ``headers``, given :func:`raw_name`'s form of the name: the first
    such header (spelled lower-case, as ASGI has it; failing that, in any
    case), stripped, None when absent or blank. For the adapters that have
    the scope at hand: no reader, no request object in between."""
    for key, value in headers:
        if key == raw:
            return value.decode("latin-1").strip() or None
    # ASGI servers send lower-case names (the spec says they must), so the
    # pass above finds the header without a lower() per header; this one is
    # for a server or test client that did not.
    for key, value in headers:
        if key.lower() == raw:
            return value.decode("latin-1").strip() or None
    return None


def environ_header(environ: Any, key: str) -> str | None:
    """What :func:`header`'s reader returns for a WSGI environ, given
    :func:`environ_key`'s key: the value stripped, None when absent or blank.
    For the adapters that have the environ at hand (Flask reads it this way
    rather than through the request's ``headers``, which werkzeug builds
    per request)."""
    value = environ.get(key)
    if value is None:
        return None
    return str(value).strip() or None
