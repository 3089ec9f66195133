"""Views the Django adapter tests drive, one per way of using the decorator.

Query parameters steer what a view does, so one view covers many outcomes:
``?status=N`` answers with status N, ``?raise=404|403|400|bad|suspicious|boom``
raises the matching exception. (What every adapter shares, the adapter
contract, builds its own views: tests/adapters/_django.py.)
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
from django.db import transaction
from django.http import Http404, HttpResponse, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View

from jobcredits_plugin import current_charge, header
from jobcredits_plugin.django import charges_credit
from jobcredits_plugin.testing import FakeClock, RecordingPlugin, make_ledger

#: JOBCREDITS["ACCOUNT"] of the test settings: the account named by a header.
account_from_header = header("X-Account")

#: A ledger on a fake clock, for the tests where time passes (``ledger=``).
CLOCK = FakeClock()
CLOCKED_EVENTS = RecordingPlugin()
CLOCKED = make_ledger(clock=CLOCK, plugins=[CLOCKED_EVENTS])

#: A ledger that is not the settings' one, for the ``ledger=`` override.
OTHER = make_ledger()

#: A plugin object named by dotted path in JOBCREDITS["PLUGINS"] tests.
EVENTS = RecordingPlugin()

#: What the async views saw; tests read it after the call.
SEEN: dict[str, Any] = {}


def _describe(request: Any) -> dict[str, Any]:
    charge = request.job_credit
    assert charge is current_charge()
    if charge is None:
        return {"outcome": None}
    return {
        "outcome": charge.outcome,
        "balance": charge.balance,
        "uses": charge.record.uses,
        "scope": charge.record.scope,
        "cost": charge.record.cost,
        "tier": charge.record.tier,
        "backend": charge.record.backend,
    }


def _behave(request: Any, body: dict[str, Any]) -> HttpResponse:
    """Raise or answer as the query string asks."""
    kind = request.GET.get("raise")
    if kind == "404":
        raise Http404("no such thing")
    if kind == "403":
        raise PermissionDenied
    if kind == "bad":
        raise BadRequest("malformed")
    if kind == "suspicious":
        raise SuspiciousOperation("odd")
    if kind == "boom":
        raise RuntimeError("upstream exploded")
    return JsonResponse(body, status=int(request.GET.get("status", 200)))


@charges_credit()
def charged(request: Any) -> HttpResponse:
    return _behave(request, _describe(request))


@charges_credit(cost=2, scope="summarize", tier="gold", backend=lambda r: r.GET.get("backend"))
def priced(request: Any) -> HttpResponse:
    return _behave(request, _describe(request))


@charges_credit(header="X-Recap-Job-Id")
def recap(request: Any) -> HttpResponse:
    return _behave(request, _describe(request))


@charges_credit(ledger=OTHER)
def other_ledger(request: Any) -> HttpResponse:
    return _behave(request, _describe(request))


@charges_credit(ledger=CLOCKED)
def clocked(request: Any) -> HttpResponse:
    return _behave(request, _describe(request))


@charges_credit(account=lambda request: request.GET.get("acct"))
def query_account(request: Any) -> HttpResponse:
    return _behave(request, _describe(request))


WORK_TABLE = "jc_view_work"


def _work(request: Any) -> HttpResponse:
    """The view's own write (a row of WORK_TABLE on ``?db=ALIAS``), then
    the answer the query string asks for: what ATOMIC_REQUESTS commits or
    rolls back."""
    from django.db import connections

    with connections[request.GET["db"]].cursor() as cursor:
        cursor.execute(f"INSERT INTO {WORK_TABLE} (job) VALUES (%s)", [request.headers["X-Job-Id"]])
    return _behave(request, _describe(request))


work = charges_credit()(_work)
#: The same, out of the ATOMIC_REQUESTS transaction of the store tests' aliases.
work_outside = transaction.non_atomic_requests(using="jc_sqlite")(
    transaction.non_atomic_requests(using="jc_postgres")(charges_credit()(_work))
)


@charges_credit()
def nested(request: Any) -> HttpResponse:
    """While this first call is pending, call `charged` with the same job."""
    from django.test import Client

    inner = Client().post(
        "/charged",
        headers={
            "X-Account": request.headers["X-Account"],
            "X-Job-Id": request.headers["X-Job-Id"],
        },
    )
    return JsonResponse(
        {
            "inner_status": inner.status_code,
            "inner_retry_after": inner.headers.get("Retry-After"),
            "inner_code": json.loads(inner.content)["code"],
        }
    )


# -- async function views ----------------------------------------------------------


@charges_credit()
async def acharged(request: Any) -> HttpResponse:
    SEEN["acharged"] = request.job_credit
    await asyncio.sleep(0)
    return _behave(request, _describe(request))


# -- class-based views ---------------------------------------------------------------


@method_decorator(charges_credit(scope="cbv"), name="dispatch")
class DispatchView(View):
    """Every method charged (decorated on dispatch)."""

    def post(self, request: Any) -> HttpResponse:
        return _behave(request, _describe(request))


@method_decorator(charges_credit(scope="cbv"), name="post")
class HandlerView(View):
    """Only POST charged (decorated on the handler); GET is free."""

    def get(self, request: Any) -> HttpResponse:
        return JsonResponse({"charge": repr(getattr(request, "job_credit", "absent"))})

    def post(self, request: Any) -> HttpResponse:
        return _behave(request, _describe(request))


@method_decorator(charges_credit(scope="acbv"), name="post")
class AsyncHandlerView(View):
    """An async class-based view, decorated on its async handler."""

    async def post(self, request: Any) -> HttpResponse:
        await asyncio.sleep(0)
        return _behave(request, _describe(request))


@method_decorator(charges_credit(scope="acbv"), name="dispatch")
class AsyncDispatchView(View):
    """An async class-based view decorated on its sync dispatch: the view
    returns a coroutine, which the decorator settles when it completes."""

    async def post(self, request: Any) -> HttpResponse:
        await asyncio.sleep(0)
        return _behave(request, _describe(request))


# -- Django REST framework (when installed) -----------------------------------------

try:
    from rest_framework import exceptions as drf_exceptions
    from rest_framework.decorators import api_view
    from rest_framework.response import Response
    from rest_framework.views import APIView
except ImportError:
    HAVE_DRF = False
else:
    HAVE_DRF = True

    class DrfView(APIView):
        """DRF: decorated on the handler, after DRF's authentication ran."""

        @method_decorator(charges_credit(scope="drf"))
        def post(self, request: Any) -> Response:
            if request.query_params.get("invalid"):
                raise drf_exceptions.ValidationError({"text": ["required"]})
            if request.query_params.get("fail"):
                raise drf_exceptions.APIException("backend down")  # answered 500
            return Response({**_describe(request), "user": request.user.pk})

    @api_view(["POST"])
    @charges_credit(scope="drf")
    def drf_function(request: Any) -> Response:
        return Response(_describe(request))
