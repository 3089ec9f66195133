"""The usual answers of a store whose server decides the claim (Redis's
script, PostgreSQL's function) are built without replaying the rules
(``reuse_from_server``, ``charge_from_server``): whenever they give a result,
it must be exactly the one ``plan_claim`` gives for the same inputs, and they
must give one in the plain cases they exist for."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from jobcredits_plugin._records import CHARGED, PENDING, REFUNDED, JobRecord
from jobcredits_plugin.stores._rules import (
    ClaimRequest,
    charge_from_server,
    plan_claim,
    reuse_from_server,
)

times = st.floats(min_value=0, max_value=10_000, allow_nan=False)


@st.composite
def requests(draw: st.DrawFn) -> ClaimRequest:
    return ClaimRequest(
        "acct",
        "default",
        "job-1",
        "c-new",
        draw(st.integers(0, 5)),
        draw(st.none() | st.just("gold")),
        draw(st.none() | st.just("gpt")),
        draw(times),
        draw(st.floats(min_value=1, max_value=5_000)),
        draw(st.floats(min_value=1, max_value=100)),
        draw(st.none() | st.integers(1, 4)),
        draw(st.booleans()),
    )


@st.composite
def records(draw: st.DrawFn) -> JobRecord:
    charged_at = draw(times)
    cost = draw(st.integers(0, 5))
    return JobRecord(
        "acct",
        "default",
        "job-1",
        "c-old",
        draw(st.sampled_from([PENDING, CHARGED, REFUNDED])),
        cost,
        None,
        None,
        charged_at,
        charged_at + draw(st.floats(min_value=0, max_value=5_000)),
        draw(st.integers(1, 5)),
        charged_at + draw(st.floats(min_value=0, max_value=100)),
        draw(st.sampled_from([0, cost])),
    )


@given(existing=records(), balance=st.integers(0, 10), req=requests())
def test_a_reuse_without_the_replay_is_the_rules_reuse(
    existing: JobRecord, balance: int, req: ClaimRequest
) -> None:
    usual = reuse_from_server(existing.used_once_more(), balance, req)
    plain = (
        existing.state == CHARGED
        and req.now < existing.expires_at
        and (req.max_uses is None or existing.uses < req.max_uses)
    )
    assert (usual is not None) == plain
    if usual is not None:
        assert usual == plan_claim(existing, balance, req).result


@given(balance=st.integers(0, 10), req=requests())
def test_a_new_charge_without_the_replay_is_the_rules_charge(
    balance: int, req: ClaimRequest
) -> None:
    usual = charge_from_server(balance, req)
    assert (usual is not None) == (not req.balances or balance >= req.cost)
    if usual is not None:
        assert usual == plan_claim(None, balance, req).result
        assert usual.status == "charged"
