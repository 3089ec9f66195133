"""The two calls of a "summarize" job, and a free health check.

A client mints one id per job and sends it as ``X-Job-Id`` on both calls. The
first call charges the account one credit; the second rides free. A failed
first call (``?fail=1`` simulates an upstream outage) is refunded, so the
client's retry with the same id is charged again.

``/v1/transcribe/free`` does the work of ``/v1/transcribe`` uncharged: the
baseline the system tests (``tests/system``) measure the decorator's cost
against.
"""

from __future__ import annotations

import os
import time

from django.conf import settings
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


def _transcript(request: HttpRequest) -> dict[str, object] | None:
    """The work itself, paid or not; None when the upstream failed."""
    if request.GET.get("fail"):
        return None
    time.sleep(getattr(settings, "SUMMARIZE_LATENCY", 0.0))
    return {"transcript": "hello world"}


@csrf_exempt  # an API authenticated by key, not by a session cookie
@require_POST  # outside the charge: a wrong method costs nothing
@charges_credit(scope="summarize")
def transcribe(request: HttpRequest) -> HttpResponse:
    result = _transcript(request)
    if result is None:
        return JsonResponse({"error": "upstream unavailable"}, status=502)  # refunded
    return JsonResponse(_receipt(request, **result))


@csrf_exempt
@require_POST
def transcribe_free(request: HttpRequest) -> HttpResponse:
    """The same work, uncharged: the baseline for measuring the decorator."""
    result = _transcript(request)
    if result is None:
        return JsonResponse({"error": "upstream unavailable"}, status=502)
    return JsonResponse({**result, "outcome": None})


@csrf_exempt
@require_POST
@charges_credit(scope="summarize")
def analyze(request: HttpRequest) -> HttpResponse:
    # A sync view, so that this example runs on Django 4.2 too: there Django's
    # own csrf_exempt and require_POST do not pass async views through (5.0
    # fixed that). On 5.0+ this may be an `async def`, charged the same way.
    return JsonResponse(_receipt(request, summary="a greeting"))


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"ok": True, "pid": os.getpid()})
