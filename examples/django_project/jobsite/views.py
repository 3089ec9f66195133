"""The two calls of a "summarize" job, and a free health check.

A client mints one id per job and sends it as ``X-Job-Id`` on both calls. The
first call charges the account one credit; the second rides free. A failed
first call (``?fail=1`` simulates an upstream outage) is refunded, so the
client's retry with the same id is charged again.
"""

from __future__ import annotations

import asyncio

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from jobcredits_plugin.django import charges_credit


def _receipt(request: HttpRequest, **result: object) -> dict[str, object]:
    charge = request.job_credit  # what this call paid, or rode on
    return {
        **result,
        "outcome": charge.outcome,
        "uses": charge.record.uses,
        "credits_left": charge.balance,
    }


@csrf_exempt  # an API authenticated by key, not by a session cookie
@require_POST  # outside the charge: a wrong method costs nothing
@charges_credit(scope="summarize")
def transcribe(request: HttpRequest) -> HttpResponse:
    if request.GET.get("fail"):
        return JsonResponse({"error": "upstream unavailable"}, status=502)  # refunded
    return JsonResponse(_receipt(request, transcript="hello world"))


@csrf_exempt
@require_POST
@charges_credit(scope="summarize")
async def analyze(request: HttpRequest) -> HttpResponse:
    await asyncio.sleep(0)  # stands for an async call to the model backend
    return JsonResponse(_receipt(request, summary="a greeting"))


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"ok": True})
