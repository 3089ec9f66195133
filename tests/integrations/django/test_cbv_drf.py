"""Class-based views (method_decorator), Django REST framework, and the default
account (request.user)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

pytest.importorskip("django")

import django
from django.contrib.auth.models import AnonymousUser
from django.http import HttpResponse
from django.test import AsyncClient, Client, RequestFactory

from jobcredits_plugin import Ledger
from jobcredits_plugin.django import charges_credit, default_account
from jobcredits_plugin.testing import make_ledger


def new_job() -> str:
    return str(uuid.uuid4())


def post(path: str, job: str, **headers: str) -> Any:
    return Client().post(path, headers={"X-Account": "acct", "X-Job-Id": job, **headers})


def test_dispatch_decorated_view_charges_then_reuses(dj_ledger: Ledger) -> None:
    """method_decorator(charges_credit(...), name="dispatch") charges a class-based view."""
    dj_ledger.grant("acct", 2)
    job = new_job()
    first, second = post("/cbv/dispatch", job), post("/cbv/dispatch", job)
    assert (first["X-Job-Charge"], second["X-Job-Charge"]) == ("charged", "reused")
    assert json.loads(first.content)["scope"] == "cbv"
    assert dj_ledger.balance("acct") == 1


def test_dispatch_decorated_view_charges_every_method(dj_ledger: Ledger) -> None:
    """On dispatch even a 405 answer is charged (served, 4xx): decorate handlers to avoid it."""
    dj_ledger.grant("acct", 1)
    job = new_job()
    response = Client().get("/cbv/dispatch", headers={"X-Account": "acct", "X-Job-Id": job})
    assert response.status_code == 405
    assert response["X-Job-Charge"] == "charged"
    assert dj_ledger.balance("acct") == 0


def test_handler_decorated_view_charges_only_that_method(dj_ledger: Ledger) -> None:
    """name="post": POST is charged, GET runs free and without a charge on the request."""
    dj_ledger.grant("acct", 1)
    job = new_job()
    got = Client().get("/cbv/handler", headers={"X-Account": "acct", "X-Job-Id": job})
    assert "X-Job-Charge" not in got
    assert json.loads(got.content) == {"charge": "'absent'"}
    posted = post("/cbv/handler", job)
    assert posted["X-Job-Charge"] == "charged"
    assert dj_ledger.balance("acct") == 0


def test_handler_decorated_view_refunds_on_exception(dj_ledger: Ledger) -> None:
    """An exception in a decorated handler refunds, as on a function view."""
    dj_ledger.grant("acct", 1)
    with pytest.raises(RuntimeError):
        post("/cbv/handler?raise=boom", new_job())
    assert dj_ledger.balance("acct") == 1


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(
            "/cbv/async-handler",
            marks=pytest.mark.skipif(
                django.VERSION < (5, 0),
                reason="Django 4.2's method_decorator makes an async handler look sync "
                "(Django 5.0 fixed it); decorate dispatch there",
            ),
        ),
        "/cbv/async-dispatch",
    ],
)
def test_async_class_based_view(dj_ledger: Ledger, path: str) -> None:
    """An async class-based view decorated on its handler or on dispatch: charged,
    reused, refunded on 5xx, under Django's ASGI handler."""
    dj_ledger.grant("acct", 2)
    job, failing = new_job(), new_job()

    async def go() -> list[Any]:
        client = AsyncClient()
        return [
            await client.post(path, headers={"X-Account": "acct", "X-Job-Id": job}),
            await client.post(path, headers={"X-Account": "acct", "X-Job-Id": job}),
            await client.post(
                f"{path}?status=500", headers={"X-Account": "acct", "X-Job-Id": failing}
            ),
        ]

    first, second, failed = asyncio.run(go())
    assert [r["X-Job-Charge"] for r in (first, second, failed)] == ["charged", "reused", "refunded"]
    assert json.loads(second.content)["scope"] == "acbv"
    assert dj_ledger.balance("acct") == 1


def test_async_dispatch_answers_errors_as_awaitables(jc_settings: Any) -> None:
    """An error answer (401) from an async view's dispatch is still awaitable by Django."""
    jc_settings()

    async def go() -> Any:
        return await AsyncClient().post("/cbv/async-dispatch", headers={"X-Job-Id": "j"})

    response = asyncio.run(go())
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"


def test_async_dispatch_uses_the_async_twins() -> None:
    """Decorated on an async view's sync dispatch, the charge still goes through acharge."""
    from django.utils.decorators import method_decorator
    from django.views import View

    from .test_async import AsyncOnlyLedger

    ledger = AsyncOnlyLedger()

    @method_decorator(charges_credit(ledger=ledger, account=lambda r: "acct"), name="dispatch")
    class Async(View):
        async def post(self, request: Any) -> HttpResponse:
            return HttpResponse()

    async def go() -> Any:
        return await Async.as_view()(RequestFactory().post("/", headers={"X-Job-Id": "j"}))

    assert asyncio.run(go())["X-Job-Charge"] == "charged"
    assert ledger.lookup("acct", "j").state == "charged"  # type: ignore[union-attr]


def test_async_class_based_view_under_the_sync_client(dj_ledger: Ledger) -> None:
    """The same async view through the WSGI-style test client (async_to_sync)."""
    dj_ledger.grant("acct", 1)
    assert post("/cbv/async-dispatch", new_job())["X-Job-Charge"] == "charged"


# -- Django REST framework ---------------------------------------------------------------


def drf_post(path: str, job: str, user: int | None = 5) -> Any:
    headers = {"X-Job-Id": job}
    if user is not None:
        headers["Authorization"] = f"Token user-{user}"
    return Client().post(path, headers=headers)


@pytest.fixture
def drf_ledger(jc_settings: Any) -> Ledger:
    """Settings with no ACCOUNT (the default: DRF's request.user) and balances on."""
    pytest.importorskip("rest_framework")
    from jobcredits_plugin.django import get_ledger

    jc_settings(ACCOUNT=None, BALANCES=True)
    ledger = get_ledger()
    ledger.grant("5", 2)
    return ledger


def test_drf_view_charges_the_drf_user(drf_ledger: Ledger) -> None:
    """On an APIView handler the default account is DRF's authenticated request.user."""
    job = new_job()
    first, second = drf_post("/drf/view", job), drf_post("/drf/view", job)
    assert (first.status_code, second.status_code) == (200, 200)
    assert (first["X-Job-Charge"], second["X-Job-Charge"]) == ("charged", "reused")
    assert json.loads(first.content)["user"] == 5
    assert drf_ledger.lookup("5", job, scope="drf") is not None
    assert drf_ledger.balance("5") == 1


def test_drf_unauthenticated_is_401(drf_ledger: Ledger) -> None:
    """No DRF credentials: request.user is anonymous, so 401 problem+json."""
    response = drf_post("/drf/view", new_job(), user=None)
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"


def test_drf_validation_error_confirms(drf_ledger: Ledger) -> None:
    """A DRF ValidationError (400, status_code on the exception) confirms the charge."""
    job = new_job()
    response = drf_post("/drf/view?invalid=1", job)
    assert response.status_code == 400
    assert drf_ledger.lookup("5", job, scope="drf").state == "charged"  # type: ignore[union-attr]


def test_drf_server_error_refunds(drf_ledger: Ledger) -> None:
    """A DRF APIException (500) refunds the charge."""
    job = new_job()
    response = drf_post("/drf/view?fail=1", job)
    assert response.status_code == 500
    assert drf_ledger.lookup("5", job, scope="drf") is None
    assert drf_ledger.balance("5") == 2


def test_drf_function_view(drf_ledger: Ledger) -> None:
    """@api_view above @charges_credit: the decorator sees DRF's Request."""
    job = new_job()
    response = drf_post("/drf/function", job)
    assert response.status_code == 200
    assert response["X-Job-Charge"] == "charged"
    assert json.loads(response.content)["scope"] == "drf"


# -- the default account ---------------------------------------------------------------


class User:
    def __init__(self, pk: Any, authenticated: bool = True) -> None:
        self.pk = pk
        self.is_authenticated = authenticated


@pytest.mark.parametrize(
    ("user", "account"),
    [
        (User(42), "42"),
        (User("a1b2"), "a1b2"),
        (User(None, authenticated=False), None),
        (AnonymousUser(), None),
        (None, None),
    ],
)
def test_default_account_is_the_authenticated_users_pk(user: Any, account: str | None) -> None:
    """str(request.user.pk) when authenticated; None (401) when anonymous or absent."""
    request = RequestFactory().get("/")
    if user is not None:
        request.user = user
    assert default_account(request) == account


def test_sync_view_default_account_through_settings(jc_settings: Any) -> None:
    """With no ACCOUNT, a sync view charges request.user's pk."""
    jc_settings(ACCOUNT=None)
    ledger = make_ledger()

    @charges_credit(ledger=ledger)
    def view(request: Any) -> HttpResponse:
        return HttpResponse()

    request = RequestFactory().post("/", headers={"X-Job-Id": "j"})
    request.user = User(9)
    assert view(request).status_code == 200
    assert ledger.lookup("9", "j") is not None
    anonymous = RequestFactory().post("/", headers={"X-Job-Id": "j"})
    anonymous.user = AnonymousUser()
    assert view(anonymous).status_code == 401


def test_anonymous_through_auth_middleware_is_401(jc_settings: Any) -> None:
    """Through the real AuthenticationMiddleware an anonymous call gets 401."""
    jc_settings(ACCOUNT=None)
    response = Client().post("/charged", headers={"X-Job-Id": "j"})
    assert response.status_code == 401
