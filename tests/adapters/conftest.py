"""The adapter contract's fixtures: one parameter per way users put the
ledger in front of a view, as tests/stores/conftest.py has one per store.

``adapter`` names the way (its id is what ``-k`` selects: ``-k flask``,
``-k "fastapi or asgi"``); ``make_client`` builds that adapter's test app
(see ``_harness``) on a ledger, the shared ``ledger`` unless told otherwise.
An adapter whose framework is not installed is skipped, so that the WSGI
and ASGI middleware still run in the framework-free tox env.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest

from jobcredits_plugin import Ledger
from jobcredits_plugin.testing import FakeClock, RecordingPlugin, make_ledger

from ._harness import ACCT, AppClient, Behaviour

try:
    import django  # noqa: F401
except ImportError:  # the Django adapters skip themselves
    pass
else:
    from tests.integrations.django.settings import configure_once

    configure_once()


@attrs.frozen
class Expect:
    """Where an adapter's answers differ from the others', by design.

    - ``raised_page_charge``: ``X-Job-Charge`` on the 500 answered after the
      handler raised. Flask adds it to its own error page; Django's and
      Starlette's are built outside the adapter, and behind a middleware the
      server answers (DESIGN §3 allows a framework's own 500 page to go
      without it).
    - ``http_error_charge``: ``X-Job-Charge`` on the 4xx answered for the
      framework's HTTP exception (``abort(404)``, ``Http404``,
      ``HTTPException(404)``); the middleware's app answers the 4xx itself.
    - ``options_charged``: whether ``OPTIONS /run`` reaches the charging
      code. Flask answers OPTIONS itself, FastAPI answers 405 for a route
      without it, the middleware's routes name their methods; a Django
      function view is called whatever the method.
    - ``problem_length``: whether a problem answer carries its
      ``Content-Length``; Django's ``HttpResponse`` leaves it to the server
      (or to ``CommonMiddleware``).
    """

    raised_page_charge: str | None = None
    http_error_charge: str | None = "charged"
    options_charged: bool = False
    problem_length: bool = True


@attrs.frozen
class Adapter:
    """One way of putting the ledger in front of a view."""

    name: str
    #: The modules it needs; it is skipped when one is missing.
    needs: tuple[str, ...]
    #: The module of ``tests.adapters`` whose ``builder`` builds its app.
    module: str
    builder: str = "build"
    options: dict[str, Any] = attrs.Factory(dict)
    expect: Expect = Expect()


DJANGO = Expect(http_error_charge=None, options_charged=True, problem_length=False)

ADAPTERS = [
    Adapter("flask", ("flask",), "_flask", expect=Expect(raised_page_charge="refunded")),
    Adapter(
        "flask-async",
        ("flask", "asgiref"),
        "_flask",
        options={"asynchronous": True},
        expect=Expect(raised_page_charge="refunded"),
    ),
    Adapter(
        "django",
        ("django",),
        "_django",
        expect=DJANGO,
    ),
    Adapter(
        "django-async",
        ("django",),
        "_django",
        options={"asynchronous": True},
        expect=DJANGO,
    ),
    Adapter("fastapi-depends", ("fastapi",), "_fastapi", options={"style": "depends"}),
    Adapter("fastapi-decorator", ("fastapi",), "_fastapi", options={"style": "decorator"}),
    Adapter("wsgi", (), "_middleware", builder="build_wsgi"),
    Adapter("asgi", (), "_middleware", builder="build_asgi"),
]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def events() -> RecordingPlugin:
    return RecordingPlugin()


@pytest.fixture
def ledger(clock: FakeClock, events: RecordingPlugin) -> Ledger:
    """The shared memory ledger: balances on, ``ACCT`` granted 10 credits."""
    ledger = make_ledger(clock=clock, plugins=[events], balances=True)
    ledger.grant(ACCT, 10)
    return ledger


@pytest.fixture(params=ADAPTERS, ids=[a.name for a in ADAPTERS])
def adapter(request: pytest.FixtureRequest) -> Adapter:
    chosen: Adapter = request.param
    for module in chosen.needs:
        pytest.importorskip(module)
    return chosen


#: ``make_client(ledger=None, **options)``: the adapter's app on ``ledger``
#: (default: the shared one); options: ``on_missing``, ``fail_open``.
MakeClient = Callable[..., AppClient]


@pytest.fixture
def make_client(adapter: Adapter, ledger: Ledger) -> Iterator[MakeClient]:
    build = getattr(importlib.import_module(f"tests.adapters.{adapter.module}"), adapter.builder)
    with contextlib.ExitStack() as stack:

        def make(on: Ledger | None = None, **options: Any) -> AppClient:
            return build(
                ledger if on is None else on,
                Behaviour(),
                stack,
                **{**adapter.options, **options},
            )

        yield make
