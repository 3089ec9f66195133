"""The contract app on Flask: the extension and ``@charges_credit`` on sync
or ``async def`` views, driven by Flask's test client."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import flask

from jobcredits_plugin import Ledger, current_charge, header
from jobcredits_plugin.flask import JobCredits, charges_credit

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


def _run(behaviour: Behaviour) -> Any:
    params = flask.request.args
    if "raise" in params:
        flask.abort(int(params["raise"]))
    return behaviour.saw(), run_status(params)


def build(
    ledger: Ledger,
    behaviour: Behaviour,
    stack: contextlib.ExitStack,
    *,
    on_missing: str = "charge",
    fail_open: bool = False,
    asynchronous: bool = False,
) -> AppClient:
    app = flask.Flask(__name__)
    app.config.update(
        JOBCREDITS_ACCOUNT=header("X-Account"),
        JOBCREDITS_ON_MISSING=on_missing,
        JOBCREDITS_FAIL_OPEN=fail_open,
    )
    JobCredits(app, ledger)
    charged = charges_credit(cost=COST, scope=SCOPE)

    def stream() -> flask.Response:
        return flask.Response(behaviour.chunks(), mimetype="text/plain")

    if asynchronous:

        @app.post("/run")
        @charged
        async def arun() -> Any:
            return _run(behaviour)

        @app.post("/raise")
        @charged
        async def araise() -> Any:
            raise HandlerFailed("the handler failed")

        @app.get("/stream")
        @charged
        async def astream() -> flask.Response:
            return stream()

    else:

        @app.post("/run")
        @charged
        def run() -> Any:
            return _run(behaviour)

        @app.post("/raise")
        @charged
        def fail() -> Any:
            raise HandlerFailed("the handler failed")

        @app.get("/stream")
        @charged
        def sstream() -> flask.Response:
            return stream()

    def send(method: str, path: str, headers: Mapping[str, str], raising: bool) -> Answer:
        app.testing = raising  # testing: exceptions propagate to the caller
        response = app.test_client().open(path, method=method, headers=dict(headers))
        try:
            body = response.get_data()
        finally:
            response.close()
        pairs = headers_of(response.headers.items())
        return Answer(response.status_code, pairs, body, current_charge())

    return AppClient(send, behaviour)
