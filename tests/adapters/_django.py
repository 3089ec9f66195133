"""The contract app on Django: ``@charges_credit`` on sync or async function
views, routed by a URLconf made for the test, driven by Django's test
``Client`` (``AsyncClient`` for the async views).

Django is configured once per process, with the settings of
``tests/integrations/django`` (see ``settings.configure_once``); only
``ROOT_URLCONF`` is overridden, for the length of one test.
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import BadRequest, PermissionDenied
from django.http import Http404, HttpResponse, JsonResponse, StreamingHttpResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import path

from jobcredits_plugin import Ledger, current_charge, header
from jobcredits_plugin.django import charges_credit

from ._harness import (
    COST,
    SCOPE,
    Answer,
    AppClient,
    Behaviour,
    HandlerFailed,
    headers_of,
    run_status,
)

#: The HTTP exceptions Django answers 4xx, by status.
_HTTP_ERRORS: dict[int, type[Exception]] = {
    400: BadRequest,
    403: PermissionDenied,
    404: Http404,
}


def _run(request: Any, behaviour: Behaviour) -> HttpResponse:
    params = request.GET
    if "raise" in params:
        raise _HTTP_ERRORS[int(params["raise"])]()
    return JsonResponse(behaviour.saw(), status=run_status(params))


def _answer(response: Any, body: bytes) -> Answer:
    pairs = headers_of(response.headers.items())
    return Answer(response.status_code, pairs, body, current_charge())


def build(
    ledger: Ledger,
    behaviour: Behaviour,
    stack: contextlib.ExitStack,
    *,
    on_missing: str = "charge",
    fail_open: bool = False,
    asynchronous: bool = False,
) -> AppClient:
    charged = charges_credit(
        cost=COST,
        scope=SCOPE,
        ledger=ledger,
        account=header("X-Account"),
        on_missing=on_missing,  # type: ignore[arg-type]
        fail_open=fail_open,
    )
    if asynchronous:

        @charged
        async def run(request: Any) -> HttpResponse:
            await asyncio.sleep(0)
            return _run(request, behaviour)

        @charged
        async def fail(request: Any) -> HttpResponse:
            raise HandlerFailed("the handler failed")

        @charged
        async def stream(request: Any) -> StreamingHttpResponse:
            return StreamingHttpResponse(behaviour.achunks(), content_type="text/plain")

    else:

        @charged
        def run(request: Any) -> HttpResponse:
            return _run(request, behaviour)

        @charged
        def fail(request: Any) -> HttpResponse:
            raise HandlerFailed("the handler failed")

        @charged
        def stream(request: Any) -> StreamingHttpResponse:
            return StreamingHttpResponse(behaviour.chunks(), content_type="text/plain")

    urlconf = types.ModuleType("jobcredits_contract_urls")
    urlconf.urlpatterns = [  # type: ignore[attr-defined]
        path("run", run),
        path("raise", fail),
        path("stream", stream),
    ]
    stack.enter_context(override_settings(ROOT_URLCONF=urlconf))

    def send(method: str, path: str, headers: Mapping[str, str], raising: bool) -> Answer:
        client = Client(raise_request_exception=raising)
        response = client.generic(method, path, headers=dict(headers))
        try:
            body = b"".join(response.streaming_content) if response.streaming else response.content
        finally:
            response.close()
        return _answer(response, body)

    def asend(method: str, path: str, headers: Mapping[str, str], raising: bool) -> Answer:
        async def go() -> Answer:
            client = AsyncClient(raise_request_exception=raising)
            response = await client.generic(method, path, headers=dict(headers))
            try:
                if response.streaming and hasattr(response.streaming_content, "__aiter__"):
                    body = b"".join([chunk async for chunk in response.streaming_content])
                elif response.streaming:  # HEAD: the test client dropped the content
                    body = b"".join(response.streaming_content)
                else:
                    body = response.content
            finally:
                response.close()
            return _answer(response, body)

        return asyncio.run(go())

    return AppClient(asend if asynchronous else send, behaviour)
