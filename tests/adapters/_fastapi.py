"""The contract app on FastAPI: ``JobCredits(...).install(app)`` with the
``Depends(charge_credit())`` dependency or the ``@charges_credit`` decorator,
driven as an ASGI server would (the framework-free driver of ``_harness``)."""

import contextlib
from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse

from jobcredits_plugin import Charge, Ledger, header
from jobcredits_plugin.fastapi import JobCredits, charge_credit, charges_credit

from ._harness import (
    COST,
    SCOPE,
    Answer,
    AppClient,
    Behaviour,
    HandlerFailed,
    asgi_request,
    run_status,
)

# No ``from __future__ import annotations`` here: FastAPI reads the
# endpoints' annotations, which name objects local to build().


def _run(request: Request, behaviour: Behaviour) -> JSONResponse:
    params = request.query_params
    if "raise" in params:
        raise HTTPException(int(params["raise"]), "the client's mistake")
    return JSONResponse(behaviour.saw(), status_code=run_status(params))


def build(
    ledger: Ledger,
    behaviour: Behaviour,
    stack: contextlib.ExitStack,
    *,
    on_missing: str = "charge",
    fail_open: bool = False,
    style: str = "depends",
) -> AppClient:
    app = FastAPI()
    JobCredits(
        ledger, account=header("X-Account"), on_missing=on_missing, fail_open=fail_open
    ).install(app)

    def stream() -> StreamingResponse:
        return StreamingResponse(behaviour.chunks(), media_type="text/plain")

    if style == "depends":
        Charged = Annotated[Charge | None, Depends(charge_credit(cost=COST, scope=SCOPE))]

        @app.post("/run")
        async def run(request: Request, charge: Charged) -> JSONResponse:
            return _run(request, behaviour)

        @app.post("/raise")
        async def fail(charge: Charged) -> None:
            raise HandlerFailed("the handler failed")

        @app.api_route("/stream", methods=["GET", "HEAD"])
        async def dstream(charge: Charged) -> StreamingResponse:
            return stream()

    else:
        charged = charges_credit(cost=COST, scope=SCOPE)

        @app.post("/run")
        @charged
        async def run(request: Request) -> JSONResponse:
            return _run(request, behaviour)

        @app.post("/raise")
        @charged
        async def fail() -> None:
            raise HandlerFailed("the handler failed")

        @app.api_route("/stream", methods=["GET", "HEAD"])
        @charged
        async def dstream() -> StreamingResponse:
            return stream()

    def send(method: str, path: str, headers: Mapping[str, str], raising: bool) -> Answer:
        return asgi_request(app, method, path, headers, raise_exceptions=raising)

    return AppClient(send, behaviour)
