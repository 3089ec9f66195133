"""The original JavaScript module's behaviour, replayed against the ledger.

``OriginalJobCredits`` (``benchmarks/_original.py``, the port the benchmark
times too) is ``recap-relay/server/job-credits.js`` function by function
(lookupJob, markJobCharged, refundJob, snapshotJobs, a ``Map`` keyed by
``install_id|job_id``), with its ``Date.now()`` taken from a fake clock.
``original_call`` is how the relay used it: look the job up, and on a miss
charge a credit and mark the job. The tests drive both with the same steps
and compare what a client would see; the last tests show where the ledger
deliberately differs.
"""

from __future__ import annotations

from typing import Any

import pytest
from benchmarks._original import OriginalJobCredits

from jobcredits_plugin import (
    InvalidJobId,
    JobInProgress,
    Ledger,
    charges_credit,
    current_charge,
)
from jobcredits_plugin.testing import FakeClock, RecordingPlugin, make_ledger


def original_call(
    js: OriginalJobCredits, install_id: str, job_id: str, *, backend: str, tier: str
) -> tuple[str, str, str]:
    """How the relay used the module on each request: (outcome, backend, tier)."""
    existing = js.lookup_job(install_id, job_id)
    if existing is not None:
        return "reused", existing["backend"], existing["tier"]
    # ...commit a credit here...
    js.mark_job_charged(install_id, job_id, backend=backend, tier=tier)
    return "charged", backend, tier


def ledger_call(
    ledger: Ledger, account: str, job_id: str, *, backend: str, tier: str
) -> tuple[str, str, str]:
    """The same request on the ledger: charge, run (succeeds), confirm."""
    c = ledger.charge(account, job_id, backend=backend, tier=tier)
    if c.charged:
        ledger.confirm(account, job_id, charge_id=c.record.charge_id)
    assert c.record.backend is not None
    assert c.record.tier is not None
    return c.outcome, c.record.backend, c.record.tier


@pytest.fixture
def pair(clock: FakeClock) -> tuple[OriginalJobCredits, Ledger, RecordingPlugin]:
    events = RecordingPlugin()
    return OriginalJobCredits(clock), make_ledger(clock=clock, plugins=[events]), events


def test_replay_of_the_original_lifecycle(
    pair: tuple[OriginalJobCredits, Ledger, RecordingPlugin], clock: FakeClock
) -> None:
    """Step by step, the ledger answers like the original: the first call charges,
    the same (install, job) is free within the hour and keeps the first call's
    backend and tier, a refund makes the next call a new charge, and the job
    expires after an hour."""
    js, ledger, events = pair
    inst, job = "install-1", "0b5e6c1a-2f3d-4e5f-8a9b-0c1d2e3f4a5b"

    def both(backend: str = "openai", tier: str = "pro") -> tuple[str, str, str]:
        expected = original_call(js, inst, job, backend=backend, tier=tier)
        got = ledger_call(ledger, inst, job, backend=backend, tier=tier)
        assert got == expected
        return got

    # "transcribe": the first call reserves a credit
    assert both() == ("charged", "openai", "pro")
    # "analyze" with the same job id: free, with the first call's backend and tier
    clock.advance(30)
    assert both(backend="anthropic", tier="free") == ("reused", "openai", "pro")
    # still free just before the hour is up
    clock.advance(3600 - 30 - 1)
    assert both()[0] == "reused"
    # after the hour the job id has expired: a new job
    clock.advance(2)
    assert both(backend="anthropic")[:2] == ("charged", "anthropic")
    # the job fails: refund, then the same job id is treated as new
    js.refund_job(inst, job)
    assert ledger.refund(inst, job) is True
    assert js.lookup_job(inst, job) is None
    assert ledger.lookup(inst, job) is None
    assert both()[0] == "charged"
    assert both()[0] == "reused"
    assert events.kinds() == [
        "charge",
        "reuse",
        "reuse",
        "expire",
        "charge",
        "refund",
        "charge",
        "reuse",
    ]


def test_replay_refund_before_any_follow_up(
    pair: tuple[OriginalJobCredits, Ledger, RecordingPlugin],
) -> None:
    """A job refunded right after its first call is charged again on the next
    call, in both (refundJob is idempotent; so is refund)."""
    js, ledger, _ = pair
    assert original_call(js, "i", "j", backend="b", tier="t")[0] == "charged"
    c = ledger.charge("i", "j", backend="b", tier="t")
    assert c.charged
    js.refund_job("i", "j")
    js.refund_job("i", "j")
    assert ledger.refund("i", "j", charge_id=c.record.charge_id) is True
    assert ledger.refund("i", "j", charge_id=c.record.charge_id) is False
    assert original_call(js, "i", "j", backend="b", tier="t")[0] == "charged"
    assert ledger.charge("i", "j", backend="b", tier="t").charged


def test_replay_separate_jobs_and_installs_are_charged_separately(
    pair: tuple[OriginalJobCredits, Ledger, RecordingPlugin],
) -> None:
    """A different job id, or the same job id from another install, is a new charge."""
    js, ledger, _ = pair
    for inst, job in [("i1", "j1"), ("i1", "j2"), ("i2", "j1")]:
        expected = original_call(js, inst, job, backend="b", tier="t")
        assert ledger_call(ledger, inst, job, backend="b", tier="t") == expected
        assert expected[0] == "charged"


def test_replay_snapshot_lists_the_live_jobs(
    pair: tuple[OriginalJobCredits, Ledger, RecordingPlugin], clock: FakeClock
) -> None:
    """snapshot lists the live jobs with their backend, tier and charge time, and
    drops expired ones, like snapshotJobs."""
    js, ledger, _ = pair
    original_call(js, "i1", "j1", backend="b1", tier="t1")
    ledger_call(ledger, "i1", "j1", backend="b1", tier="t1")
    clock.advance(1800)
    original_call(js, "i2", "j2", backend="b2", tier="t2")
    ledger_call(ledger, "i2", "j2", backend="b2", tier="t2")

    def views() -> tuple[list[Any], list[Any]]:
        original = [
            (s["key"], s["backend"], s["tier"], s["charged_at"] / 1000) for s in js.snapshot_jobs()
        ]
        ours = [
            (f"{r.account}|{r.job_id}", r.backend, r.tier, r.charged_at) for r in ledger.snapshot()
        ]
        return original, ours

    original, ours = views()
    assert ours == original
    assert len(ours) == 2
    clock.advance(1801)  # j1 is now over an hour old
    original, ours = views()
    assert ours == original
    assert [k for k, *_ in ours] == ["i2|j2"]


def test_replay_missing_ids_charge_every_call(clock: FakeClock) -> None:
    """The original never deduplicates a call without a job id (lookupJob returns
    null): every such call is charged. The decorator's default on_missing="charge"
    does the same, each call under a fresh job id."""
    js = OriginalJobCredits(clock)
    assert original_call(js, "i", "", backend="b", tier="t")[0] == "charged"
    assert original_call(js, "i", "", backend="b", tier="t")[0] == "charged"

    ledger = make_ledger(clock=clock)

    @charges_credit(ledger, account=lambda req: req["install"], job_id=lambda req: req["job"])
    def relay(req: dict[str, str]) -> str | None:
        c = current_charge()
        return c.outcome if c is not None else None

    assert relay({"install": "i", "job": ""}) == "charged"
    assert relay({"install": "i", "job": ""}) == "charged"


# -- where we deliberately differ ---------------------------------------------------------------


def test_original_key_collides_and_ours_does_not(clock: FakeClock) -> None:
    """The original joins install and job with "|", so install "a|b" + job "c"
    and install "a" + job "b|c" share one entry: the second rides free on the
    first's charge. Our key keeps the parts apart. Our default job id pattern
    forbids "|" (so the colliding job id is refused outright); with a pattern
    that admits it, the two are still separate jobs, each charged."""
    js = OriginalJobCredits(clock)
    assert js.key("a|b", "c") == js.key("a", "b|c")
    assert original_call(js, "a|b", "c", backend="b", tier="t")[0] == "charged"
    assert original_call(js, "a", "b|c", backend="b", tier="t")[0] == "reused"  # the bug

    strict = make_ledger(clock=clock)
    assert strict.charge("a|b", "c").charged  # accounts may contain "|"
    with pytest.raises(InvalidJobId):
        strict.charge("a", "b|c")

    lenient = make_ledger(clock=clock, job_id_pattern=r"[a-z|]+")
    first = lenient.charge("a|b", "c")
    lenient.confirm("a|b", "c")
    second = lenient.charge("a", "b|c")
    assert first.charged
    assert second.charged
    assert first.record.charge_id != second.record.charge_id
    assert {r.key for r in lenient.snapshot()} == {
        ("a|b", "default", "c"),
        ("a", "default", "b|c"),
    }


def test_original_snapshot_shows_refunded_jobs_ours_does_not(
    pair: tuple[OriginalJobCredits, Ledger, RecordingPlugin],
) -> None:
    """snapshotJobs keeps refunded entries (flagged) until they age out; our
    snapshot lists live jobs only."""
    js, ledger, _ = pair
    original_call(js, "i", "j", backend="b", tier="t")
    ledger_call(ledger, "i", "j", backend="b", tier="t")
    js.refund_job("i", "j")
    ledger.refund("i", "j")
    assert [s["refunded"] for s in js.snapshot_jobs()] == [True]
    assert ledger.snapshot() == []


def test_original_lets_a_concurrent_second_call_through_ours_says_in_progress(
    pair: tuple[OriginalJobCredits, Ledger, RecordingPlugin],
) -> None:
    """Between lookupJob and markJobCharged a second call can also miss and be
    charged again (the lookup/mark race). Our charge is one atomic step: the
    second call sees the pending first one and gets JobInProgress."""
    js, ledger, _ = pair
    # two requests look the job up before either marks it
    assert js.lookup_job("i", "j") is None
    assert js.lookup_job("i", "j") is None  # both would commit a credit
    js.mark_job_charged("i", "j", backend="b", tier="t")
    js.mark_job_charged("i", "j", backend="b", tier="t")

    assert ledger.charge("i", "j").charged
    with pytest.raises(JobInProgress):
        ledger.charge("i", "j")


def test_expiry_boundary_is_half_open(
    pair: tuple[OriginalJobCredits, Ledger, RecordingPlugin], clock: FakeClock
) -> None:
    """At exactly one hour the original still counts the job live (it prunes
    charged_at < now - 1h); ours treats [charged_at, charged_at + ttl) as the
    window. Either side of the boundary, both agree."""
    js, ledger, _ = pair
    original_call(js, "i", "j", backend="b", tier="t")
    ledger_call(ledger, "i", "j", backend="b", tier="t")
    clock.advance(3600)
    assert js.lookup_job("i", "j") is not None
    assert ledger.lookup("i", "j") is None
    clock.set(clock() - 1)
    assert js.lookup_job("i", "j") is not None
    assert ledger.lookup("i", "j") is not None
    clock.advance(2)
    assert js.lookup_job("i", "j") is None
    assert ledger.lookup("i", "j") is None
