"""The adapter contract: DESIGN §2-3 at the web layer, the same for every
way users put the ledger in front of a view (Flask, Django, FastAPI, the WSGI
and ASGI middleware; see conftest.py).

Each test runs once per adapter, through that framework's own request
handling, on the same app (``_harness``). Where adapters differ by design
the test reads the adapter's :class:`~tests.adapters.conftest.Expect`.
What only one adapter has (its configuration, class-based views, OpenAPI,
route tables, dependencies failing validation, two calls of a job really
overlapping...) stays in tests/integrations, tests/test_wsgi.py and
tests/test_asgi.py.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from jobcredits_plugin import Ledger
from jobcredits_plugin.stores import MemoryStore
from jobcredits_plugin.testing import FakeClock, RecordingPlugin, make_ledger

from ._harness import (
    ACCT,
    CHUNKS,
    COST,
    JOB,
    PROBLEM,
    SCOPE,
    Answer,
    HandlerFailed,
    StreamBroke,
)
from .conftest import Adapter, MakeClient


def state(ledger: Ledger, job: str = JOB) -> str | None:
    record = ledger.lookup(ACCT, job, scope=SCOPE)
    return None if record is None else record.state


def assert_problem(
    adapter: Adapter, answer: Answer, status: int, code: str, path: str = "/run"
) -> dict[str, Any]:
    """An RFC 9457 answer: the status, the content type, the code, the path;
    no charge header (nothing was charged); its length where the adapter
    gives it (``Expect``)."""
    assert answer.status == status
    assert answer.header("Content-Type") == PROBLEM
    length = str(len(answer.body)) if adapter.expect.problem_length else None
    assert answer.header("Content-Length") == length
    doc: dict[str, Any] = answer.json()
    assert (doc["status"], doc["code"], doc["instance"]) == (status, code, path)
    assert answer.header("X-Job-Charge") is None
    return doc


@contextlib.contextmanager
def raises_through_groups(kind: type[BaseException], match: str) -> Iterator[None]:
    """``pytest.raises(kind, match=match)``, also when the exception arrives
    alone in an exception group: older Starlette (0.27, FastAPI 0.100's)
    streams a body in an anyio task group, which wraps what the body raised."""
    with pytest.raises(BaseException) as info:
        yield
    raised: Any = info.value
    while isinstance(getattr(raised, "exceptions", None), tuple) and len(raised.exceptions) == 1:
        raised = raised.exceptions[0]
    assert isinstance(raised, kind), repr(info.value)
    assert re.search(match, str(raised)), str(raised)


class UnreachableStore(MemoryStore):
    """A store whose backend cannot be reached: every claim fails as a
    driver's would."""

    def claim(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("backend unreachable")


def closed_ledger() -> Ledger:
    ledger = make_ledger()
    ledger.close()
    return ledger


#: Two ways a store is down: a closed ledger, a backend that does not answer.
DOWN = {"closed": closed_ledger, "unreachable": lambda: Ledger(UnreachableStore())}


# -- charged once, then free -------------------------------------------------------------


def test_first_call_charges_then_follow_up_is_free(
    make_client: MakeClient, ledger: Ledger, events: RecordingPlugin
) -> None:
    """The first call of a job is charged and confirmed, the next one with
    the same id rides free; both say so, echo the job id, give the balance
    (which moved once) and keep the app's own headers; the handler saw each
    call's Charge, which does not outlive the request; each event's hook
    fired once."""
    client = make_client()
    first = client.post()
    assert first.status == 200
    assert first.json() == {"outcome": "charged"}
    assert first.header("Content-Type") == "application/json"
    assert (first.header("X-Job-Charge"), first.header("X-Job-Id")) == ("charged", JOB)
    assert first.header("X-Credits-Remaining") == str(10 - COST)
    assert first.charge_after is None
    assert state(ledger) == "charged"

    second = client.post()
    assert second.status == 200
    assert second.json() == {"outcome": "reused"}
    assert (second.header("X-Job-Charge"), second.header("X-Job-Id")) == ("reused", JOB)
    assert second.header("X-Credits-Remaining") == str(10 - COST)
    assert second.charge_after is None

    record = ledger.lookup(ACCT, JOB, scope=SCOPE)
    assert record is not None
    assert (record.state, record.uses, record.cost) == ("charged", 2, COST)
    assert ledger.balance(ACCT) == 10 - COST
    assert events.kinds() == ["charge", "reuse"]
    seen = client.behaviour.seen
    assert [c.outcome if c else None for c in seen] == ["charged", "reused"]
    assert [(c.record.job_id, c.record.scope) if c else None for c in seen] == [(JOB, SCOPE)] * 2


def test_balances_off_sends_no_credits_header(make_client: MakeClient) -> None:
    """With balances off, X-Job-Charge but no X-Credits-Remaining."""
    answer = make_client(make_ledger()).post()
    assert answer.header("X-Job-Charge") == "charged"
    assert answer.header("X-Credits-Remaining") is None


def test_another_job_is_charged_again(make_client: MakeClient, ledger: Ledger) -> None:
    """Another job id is another job: charged again, and the balance says so."""
    client = make_client()
    first, second = client.post(job="job-a"), client.post(job="job-b")
    assert (first.header("X-Job-Charge"), second.header("X-Job-Charge")) == ("charged", "charged")
    assert first.header("X-Credits-Remaining") == str(10 - COST)
    assert second.header("X-Credits-Remaining") == str(10 - 2 * COST)
    assert ledger.balance(ACCT) == 10 - 2 * COST


# -- what counts as failure ------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
def test_a_5xx_answer_refunds(
    make_client: MakeClient, ledger: Ledger, events: RecordingPlugin, status: int
) -> None:
    """A 5xx answer refunds the charge: the header says so, the balance is
    back, and the next call of the job is a new charge."""
    client = make_client()
    answer = client.post(f"/run?status={status}")
    assert answer.status == status
    assert answer.header("X-Job-Charge") == "refunded"
    assert answer.header("X-Credits-Remaining") == "10"
    assert state(ledger) is None
    assert ledger.balance(ACCT) == 10
    assert events.kinds() == ["charge", "refund"]
    assert client.post().header("X-Job-Charge") == "charged"


@pytest.mark.parametrize("status", [201, 302, 400, 404, 422, 429, 499])
def test_an_answer_below_500_confirms(make_client: MakeClient, ledger: Ledger, status: int) -> None:
    """An answer below 500 served the call, a 4xx the client's mistake:
    confirmed, not refunded."""
    answer = make_client().post(f"/run?status={status}")
    assert answer.status == status
    assert answer.header("X-Job-Charge") == "charged"
    assert state(ledger) == "charged"
    assert ledger.balance(ACCT) == 10 - COST


@pytest.mark.parametrize("status", [400, 403, 404])
def test_a_4xx_http_exception_confirms(
    make_client: MakeClient, adapter: Adapter, ledger: Ledger, status: int
) -> None:
    """The framework's own 4xx exception (``abort(404)``, ``Http404``,
    ``HTTPException(404)``) confirms like a 4xx answer; whether its answer
    carries X-Job-Charge depends on who builds it (``Expect``)."""
    answer = make_client().post(f"/run?raise={status}")
    assert answer.status == status
    assert answer.header("X-Job-Charge") == adapter.expect.http_error_charge
    assert state(ledger) == "charged"
    assert ledger.balance(ACCT) == 10 - COST


def test_a_raised_exception_refunds_and_reaches_the_caller(
    make_client: MakeClient, ledger: Ledger, events: RecordingPlugin
) -> None:
    """A handler that raises refunds the charge; the exception goes on (to
    the test client, as it would to the server)."""
    with pytest.raises(HandlerFailed, match="the handler failed"):
        make_client().post("/raise")
    assert state(ledger) is None
    assert ledger.balance(ACCT) == 10
    assert events.kinds() == ["charge", "refund"]


def test_a_raised_exception_is_answered_500(
    make_client: MakeClient, adapter: Adapter, ledger: Ledger, events: RecordingPlugin
) -> None:
    """Answered rather than propagated, it is a 500 (the framework's page,
    or the server's behind a middleware), refunded; only Flask's page
    carries X-Job-Charge (``Expect``)."""
    answer = make_client().post("/raise", raise_exceptions=False)
    assert answer.status == 500
    assert answer.header("X-Job-Charge") == adapter.expect.raised_page_charge
    assert state(ledger) is None
    assert ledger.balance(ACCT) == 10
    assert events.kinds() == ["charge", "refund"]


def test_a_failing_follow_up_refunds_nothing(
    make_client: MakeClient, ledger: Ledger, events: RecordingPlugin
) -> None:
    """A follow-up did not pay: its 5xx leaves the job charged."""
    client = make_client()
    assert client.post().header("X-Job-Charge") == "charged"
    answer = client.post("/run?status=502")
    assert answer.status == 502
    assert answer.header("X-Job-Charge") == "reused"
    assert state(ledger) == "charged"
    assert ledger.balance(ACCT) == 10 - COST
    assert events.kinds() == ["charge", "reuse"]


# -- the headers tell what really happened ----------------------------------------------


def test_headers_say_refunded_when_a_prune_refunded_the_charge_meanwhile(
    make_client: MakeClient, ledger: Ledger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """A handler that outlives its lease, whose charge a prune refunded
    meanwhile, answers X-Job-Charge: refunded with the refunded balance,
    not "charged": the confirm matched nothing."""
    client = make_client()

    def outlive() -> None:
        clock.advance(ledger.lease + 1)
        assert [r.job_id for r in ledger.prune()] == [JOB]

    client.behaviour.during = outlive
    answer = client.post()
    assert answer.status == 200
    assert answer.header("X-Job-Charge") == "refunded"
    assert answer.header("X-Credits-Remaining") == "10"
    assert ledger.balance(ACCT) == 10
    assert state(ledger) is None
    assert events.kinds() == ["charge", "refund"]


def test_headers_after_a_takeover_give_the_balance_as_it_is(
    make_client: MakeClient, ledger: Ledger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """The job's next call took the outliving call's job over (refunding it,
    then charging itself): the outliving call answers refunded, and its
    X-Credits-Remaining is the balance read again, with the new charge in it."""
    client = make_client()

    def taken_over() -> None:
        clock.advance(ledger.lease + 1)
        assert ledger.charge(ACCT, JOB, scope=SCOPE, cost=COST).charged

    client.behaviour.during = taken_over
    answer = client.post()
    assert answer.header("X-Job-Charge") == "refunded"
    assert answer.header("X-Credits-Remaining") == str(10 - COST)
    assert ledger.balance(ACCT) == 10 - COST
    assert state(ledger) == "pending"  # the new charge, not the outliving call's
    assert events.kinds() == ["charge", "refund", "charge"]


# -- refused calls: problem+json --------------------------------------------------------


def test_no_account_is_401(make_client: MakeClient, adapter: Adapter, ledger: Ledger) -> None:
    """The account callable returned None: 401, the handler never runs."""
    client = make_client()
    assert_problem(adapter, client.post(account=None), 401, "not_authenticated")
    assert client.behaviour.seen == []
    assert ledger.snapshot() == []


@pytest.mark.parametrize("job", ["not a valid id!", "x" * 129])
def test_an_invalid_job_id_is_400(
    make_client: MakeClient, adapter: Adapter, ledger: Ledger, job: str
) -> None:
    """A job id outside [A-Za-z0-9._:-]{1,128}: 400, nothing recorded."""
    client = make_client()
    assert_problem(adapter, client.post(job=job), 400, "invalid_job_id")
    assert client.behaviour.seen == []
    assert ledger.snapshot() == []


def test_a_missing_job_id_is_charged_under_a_minted_one(
    make_client: MakeClient, ledger: Ledger
) -> None:
    """on_missing="charge" (the default): the call is a job of its own under
    a fresh id, echoed in X-Job-Id; the client's next call with it is free."""
    client = make_client()
    first = client.post(job=None)
    minted = first.header("X-Job-Id")
    assert minted is not None
    assert str(uuid.UUID(minted)) == minted
    assert first.header("X-Job-Charge") == "charged"
    assert first.json() == {"outcome": "charged"}
    again = client.post(job=minted)
    assert again.header("X-Job-Charge") == "reused"
    assert again.json() == {"outcome": "reused"}
    assert ledger.balance(ACCT) == 10 - COST


def test_a_missing_job_id_rejected_is_400(
    make_client: MakeClient, adapter: Adapter, ledger: Ledger
) -> None:
    """on_missing="reject": a call without a job id is 400 missing_job_id."""
    client = make_client(on_missing="reject")
    assert_problem(adapter, client.post(job=None), 400, "missing_job_id")
    assert client.behaviour.seen == []
    assert ledger.snapshot() == []
    assert client.post().header("X-Job-Charge") == "charged"


def test_insufficient_credits_is_402(
    make_client: MakeClient, adapter: Adapter, ledger: Ledger
) -> None:
    """Balance below the cost: 402 with the balance and the cost, no
    Retry-After; nothing recorded, the handler never runs."""
    ledger.grant("poor", 1)
    client = make_client()
    answer = client.post(account="poor")
    doc = assert_problem(adapter, answer, 402, "insufficient_credits")
    assert (doc["balance"], doc["cost"]) == (1, COST)
    assert answer.header("Retry-After") is None
    assert ledger.lookup("poor", JOB, scope=SCOPE) is None
    assert client.behaviour.seen == []


def test_a_job_in_progress_is_409_with_retry_after(
    make_client: MakeClient, adapter: Adapter, ledger: Ledger
) -> None:
    """A call of a job whose first call is still pending: 409 with
    Retry-After (the 60 s lease left, capped at 5 by default); the handler
    never runs. (Two calls really overlapping: each adapter's own tests.)"""
    ledger.charge(ACCT, JOB, scope=SCOPE, cost=COST)
    client = make_client()
    answer = client.post()
    doc = assert_problem(adapter, answer, 409, "job_in_progress")
    assert answer.header("Retry-After") == "5"
    assert doc["retry_after"] == 5
    assert client.behaviour.seen == []


def test_a_job_exhausted_is_409_without_retry_after(
    make_client: MakeClient, adapter: Adapter
) -> None:
    """max_uses reached: 409 job_exhausted, and no Retry-After (retrying
    cannot help)."""
    client = make_client(make_ledger(max_uses=1))
    assert client.post().status == 200
    answer = client.post()
    assert_problem(adapter, answer, 409, "job_exhausted")
    assert answer.header("Retry-After") is None
    assert len(client.behaviour.seen) == 1


@pytest.mark.parametrize("down", list(DOWN))
def test_a_store_down_is_503_with_retry_after(
    make_client: MakeClient, adapter: Adapter, down: str
) -> None:
    """The store is unreachable: 503 with Retry-After; the handler never runs."""
    client = make_client(DOWN[down]())
    answer = client.post()
    assert_problem(adapter, answer, 503, "store_unavailable")
    assert answer.header("Retry-After") == "1"
    assert client.behaviour.seen == []


@pytest.mark.parametrize("down", list(DOWN))
def test_fail_open_serves_uncharged_and_says_so_in_the_log(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture, down: str
) -> None:
    """fail_open with the store down: the handler runs with no charge, the
    answer has no X-Job-Charge and echoes the job id, and the free pass is
    logged."""
    client = make_client(DOWN[down](), fail_open=True)
    with caplog.at_level(logging.WARNING, logger="jobcredits_plugin"):
        answer = client.post()
    assert answer.status == 200
    assert answer.json() == {"outcome": None}
    assert answer.header("X-Job-Charge") is None
    assert answer.header("X-Credits-Remaining") is None
    assert answer.header("X-Job-Id") == JOB
    assert client.behaviour.seen == [None]
    assert "UNCHARGED" in caplog.text


# -- streamed bodies, HEAD, OPTIONS -------------------------------------------------------


def test_a_streamed_body_is_confirmed_at_its_first_byte(
    make_client: MakeClient, ledger: Ledger
) -> None:
    """A streamed response is settled when its body produces its first byte:
    pending while the body prepares it (an empty chunk is none), charged
    once it is out, before the rest of the body."""
    client = make_client()
    states: list[str | None] = []
    client.behaviour.on_chunk = lambda: states.append(state(ledger))
    answer = client.request("GET", "/stream")
    assert answer.status == 200
    assert answer.body == b"".join(CHUNKS)
    assert answer.header("X-Job-Charge") == "charged"
    assert states == ["pending", "pending", "charged"]
    assert state(ledger) == "charged"
    assert ledger.balance(ACCT) == 10 - COST


def test_a_stream_failing_before_its_first_byte_refunds(
    make_client: MakeClient, ledger: Ledger, events: RecordingPlugin
) -> None:
    """A body that raises before producing a byte (pending until then)
    served nothing (the server answers 500): refunded."""
    client = make_client()
    states: list[str | None] = []
    client.behaviour.on_chunk = lambda: states.append(state(ledger))
    client.behaviour.breaks = "before"
    with raises_through_groups(StreamBroke, "before its first byte"):
        client.request("GET", "/stream")
    assert states == ["pending"]
    assert state(ledger) is None
    assert ledger.balance(ACCT) == 10
    assert events.kinds() == ["charge", "refund"]


def test_a_stream_failing_after_its_first_byte_stays_charged(
    make_client: MakeClient, ledger: Ledger, events: RecordingPlugin
) -> None:
    """Once the first byte is out the client was answered: a later failure
    of the body leaves the charge standing."""
    client = make_client()
    client.behaviour.breaks = "after"
    with raises_through_groups(StreamBroke, "after its first byte"):
        client.request("GET", "/stream")
    assert state(ledger) == "charged"
    assert ledger.balance(ACCT) == 10 - COST
    assert events.kinds() == ["charge"]


def test_head_is_charged_and_confirmed(make_client: MakeClient, ledger: Ledger) -> None:
    """HEAD on a charged route is a charged call like GET, confirmed."""
    answer = make_client().request("HEAD", "/stream")
    assert answer.status == 200
    assert answer.header("X-Job-Charge") == "charged"
    assert state(ledger) == "charged"


def test_options_charges_only_where_the_view_runs(
    make_client: MakeClient, adapter: Adapter, ledger: Ledger
) -> None:
    """OPTIONS on a charged POST route is answered by the framework (Flask),
    refused (FastAPI: 405) or not routed (middleware) without a charge; a
    Django function view runs for every method, so it is charged
    (``Expect``)."""
    answer = make_client().request("OPTIONS", "/run")
    if adapter.expect.options_charged:
        assert answer.header("X-Job-Charge") == "charged"
        assert state(ledger) == "charged"
    else:
        assert answer.header("X-Job-Charge") is None
        assert ledger.snapshot() == []
