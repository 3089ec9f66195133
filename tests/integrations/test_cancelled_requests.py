"""Issue 13, item 9, through the adapters: a request cancelled mid-claim (the
client went away, the server cancelled the request task) must not leave a
pending charge that answers the client's retry 409 for the whole lease.

The ASGI apps are driven directly (no server): a ``receive`` that reports
``http.disconnect`` once the client is gone, and the request task cancelled
as a server does when the connection drops. The claim is held in flight by
the gated store of the store suite.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, MutableMapping
from pathlib import Path
from typing import Annotated, Any, cast

import pytest

pytest.importorskip("fastapi")

from fastapi import Depends, FastAPI
from fastapi.responses import StreamingResponse

from jobcredits_plugin import Charge, Ledger
from jobcredits_plugin.asgi import JobCreditsMiddleware
from jobcredits_plugin.fastapi import JobCredits, charge_credit
from jobcredits_plugin.stores import BaseStore, SQLiteStore
from jobcredits_plugin.testing import FakeClock, RecordingPlugin
from tests.stores.test_cancelled_claims import GatedStore

Message = MutableMapping[str, Any]
App = Callable[..., Coroutine[Any, Any, None]]


class Client:
    """One HTTP request to an ASGI app: the client can hang up (``http.disconnect``)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.gone = asyncio.Event()
        self.sent: list[Message] = []
        self._body_read = False

    def scope(self, path: str) -> dict[str, Any]:
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"test"), (b"x-job-id", self.job_id.encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("test", 80),
            "state": {},
        }

    async def receive(self) -> Message:
        if not self._body_read:
            self._body_read = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int | None:
        for message in self.sent:
            if message["type"] == "http.response.start":
                return int(message["status"])
        return None

    def header(self, name: str) -> str | None:
        for message in self.sent:
            if message["type"] == "http.response.start":
                for key, value in message.get("headers", ()):
                    if key.decode().lower() == name.lower():
                        return str(value.decode())
        return None


async def _call(app: App, path: str, job_id: str) -> Client:
    client = Client(job_id)
    await app(client.scope(path), client.receive, client.send)
    return client


async def _settled(events: RecordingPlugin, count: int) -> None:
    for _ in range(500):
        if len(events.kinds()) >= count:
            return
        await asyncio.sleep(0.01)


def _ledger(tmp_path: Path, events: RecordingPlugin) -> tuple[Ledger, GatedStore]:
    gated = GatedStore(SQLiteStore(tmp_path / "jobs.db", timeout=30), commit_first=False)
    ledger = Ledger(cast(BaseStore, gated), clock=FakeClock(), plugins=[events], balances=True)
    ledger.grant("acct", 5)
    return ledger, gated


#: Set by a test to hold the endpoint after it was charged (case c).
Hold = dict[str, asyncio.Event]


def _fastapi_app(ledger: Ledger, hold: Hold) -> App:
    app = FastAPI()
    JobCredits(ledger, account=lambda request: "acct").install(app)

    @app.post("/run")
    async def run(charge: Annotated[Charge, Depends(charge_credit())]) -> dict[str, str]:
        if "endpoint" in hold:
            hold["entered"].set()
            await hold["endpoint"].wait()
        return {"outcome": charge.outcome}

    @app.post("/stream")
    async def stream(charge: Annotated[Charge, Depends(charge_credit())]) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            hold["entered"].set()
            await hold["endpoint"].wait()  # the first byte never comes
            yield b"late"

        return StreamingResponse(body())

    return cast(App, app)


def _middleware_app(ledger: Ledger, hold: Hold) -> App:
    async def inner(scope: Any, receive: Any, send: Any) -> None:
        if "endpoint" in hold:
            hold["entered"].set()
            await hold["endpoint"].wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return cast(
        App,
        JobCreditsMiddleware(inner, ledger, routes={"POST /run": 1}, account=lambda scope: "acct"),
    )


ADAPTERS = {"fastapi": _fastapi_app, "asgi-middleware": _middleware_app}


def _assert_refunded_then_charged(events: RecordingPlugin) -> None:
    assert events.kinds() == ["charge", "refund", "charge"]
    first, second = events.of("charge")
    (refunded,) = events.of("refund")
    assert refunded.charge_id == first.charge_id
    assert second.charge_id != first.charge_id


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_request_cancelled_mid_claim_then_retry_is_charged(tmp_path: Path, adapter: str) -> None:
    """(b) The client hangs up and the server cancels the request task while
    the claim is in flight; the claim commits afterwards. The charge is
    refunded by its id and the client's retry is charged, not 409."""
    events = RecordingPlugin()
    ledger, gated = _ledger(tmp_path, events)
    app = ADAPTERS[adapter](ledger, {})

    async def scenario() -> Client:
        client = Client("job-1")
        task = asyncio.create_task(app(client.scope("/run"), client.receive, client.send))
        await asyncio.wait_for(gated.entered.wait(), 10)
        client.gone.set()  # http.disconnect from now on
        task.cancel()  # what the server does with the request of a dropped connection
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.sent == []
        gated.gate.set()
        await asyncio.wait_for(gated.committed.wait(), 10)
        await _settled(events, 2)
        return await _call(app, "/run", "job-1")

    retry = asyncio.run(scenario())
    assert retry.status == 200
    assert retry.header("X-Job-Charge") == "charged"
    assert retry.header("X-Credits-Remaining") == "4"
    _assert_refunded_then_charged(events)
    assert ledger.balance("acct") == 4
    ledger.close()


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_request_cancelled_after_charge_then_retry_is_charged(tmp_path: Path, adapter: str) -> None:
    """(c) The cancellation arrives after the claim answered (the Charge was
    handed over), while the endpoint runs, before any response: the adapter's
    failure path refunds it, and a second cancellation arriving meanwhile does
    not lose the refund (it is a blocking call, with no await to interrupt)."""
    events = RecordingPlugin()
    ledger, gated = _ledger(tmp_path, events)
    gated.gated = 0  # the claim answers at once
    hold: Hold = {"entered": asyncio.Event(), "endpoint": asyncio.Event()}
    app = ADAPTERS[adapter](ledger, hold)

    async def scenario() -> Client:
        client = Client("job-1")
        task = asyncio.create_task(app(client.scope("/run"), client.receive, client.send))
        await asyncio.wait_for(hold["entered"].wait(), 10)
        assert events.kinds() == ["charge"]
        client.gone.set()
        task.cancel()
        await asyncio.sleep(0)
        task.cancel()  # again, while the adapter settles
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert client.status is None  # nothing was answered
        await _settled(events, 2)
        del hold["endpoint"]  # the retry is not held
        return await _call(app, "/run", "job-1")

    retry = asyncio.run(scenario())
    assert retry.status == 200
    assert retry.header("X-Job-Charge") == "charged"
    _assert_refunded_then_charged(events)
    assert ledger.balance("acct") == 4
    ledger.close()


def test_streamed_response_cut_by_disconnect_before_first_byte(tmp_path: Path) -> None:
    """(c) A FastAPI StreamingResponse whose client disconnects after the
    response start but before the first byte: Starlette cancels the body
    (listen_for_disconnect) and the app returns without finishing the
    response. Nothing was served, so the call is refunded and the retry is
    charged."""
    events = RecordingPlugin()
    ledger, gated = _ledger(tmp_path, events)
    gated.gated = 0
    hold: Hold = {"entered": asyncio.Event(), "endpoint": asyncio.Event()}
    app = _fastapi_app(ledger, hold)

    async def scenario() -> tuple[Client, Client]:
        client = Client("job-1")
        task = asyncio.create_task(app(client.scope("/stream"), client.receive, client.send))
        await asyncio.wait_for(hold["entered"].wait(), 10)
        client.gone.set()  # the stream's disconnect listener cancels the body
        await asyncio.wait_for(task, 10)
        await _settled(events, 2)
        hold["endpoint"].set()
        return client, await _call(app, "/stream", "job-1")

    first, retry = asyncio.run(scenario())
    # The start goes on as the app sent it (to a client that is gone), saying
    # what the call cost: nothing.
    assert first.header("X-Job-Charge") == "refunded"
    assert not any(m["type"] == "http.response.body" for m in first.sent)
    assert retry.status == 200
    assert retry.header("X-Job-Charge") == "charged"
    _assert_refunded_then_charged(events)
    ledger.close()
