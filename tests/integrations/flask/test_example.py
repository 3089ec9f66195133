"""The quickstart app of docs/flask.md (examples/flask_app.py) does what the docs say."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flask")

from examples.flask_app import DEMO_CREDITS, create_app

from jobcredits_plugin import InProcessStoreWarning
from jobcredits_plugin.flask import get_ledger

# The quickstart runs on memory:// on purpose (one process, demo credits); that it
# warns is checked once, below.
pytestmark = pytest.mark.filterwarnings("ignore::jobcredits_plugin.InProcessStoreWarning")

ADA = {"X-Api-Key": "key-ada"}


@pytest.mark.filterwarnings("error::jobcredits_plugin.InProcessStoreWarning")
def test_the_quickstart_on_memory_warns_about_workers() -> None:
    with pytest.warns(InProcessStoreWarning, match="JOBCREDITS_URL"):
        create_app("memory://")


BOB = {"X-Api-Key": "key-bob"}


@pytest.fixture
def client() -> Any:
    return create_app("memory://").test_client()


def summarize(client: Any, key: dict[str, str], job: str, query: str = "") -> Any:
    return client.post(
        f"/v1/summarize{query}", headers={**key, "X-Job-Id": job}, json={"text": "hello world"}
    )


def test_first_call_charges_and_follow_ups_are_free(client: Any) -> None:
    """The first call of a job costs one credit, the job's next calls are free."""
    first = summarize(client, ADA, "job-1")
    assert first.status_code == 200
    assert first.json == {
        "summary": "hello world",
        "charge": "charged",
        "tier": "standard",
        "credits_left": DEMO_CREDITS["acct-ada"] - 1,
    }
    assert first.headers["X-Job-Charge"] == "charged"
    for _ in range(2):
        again = summarize(client, ADA, "job-1")
        assert again.json["charge"] == "reused"
        assert again.headers["X-Credits-Remaining"] == str(DEMO_CREDITS["acct-ada"] - 1)


def test_a_failed_call_is_refunded_and_the_retry_charged(client: Any) -> None:
    """?fail=1 answers 502 and refunds; the retry with the same job id is charged."""
    failed = summarize(client, ADA, "job-2", "?fail=1")
    assert failed.status_code == 502
    assert failed.headers["X-Job-Charge"] == "refunded"
    assert failed.headers["X-Credits-Remaining"] == str(DEMO_CREDITS["acct-ada"])
    retry = summarize(client, ADA, "job-2")
    assert retry.json["charge"] == "charged"


def test_the_account_comes_from_the_api_key(client: Any) -> None:
    """No or an unknown API key: 401 problem+json; the key decides who pays."""
    for headers in ({}, {"X-Api-Key": "stolen"}):
        r = summarize(client, headers, "job-3")
        assert r.status_code == 401
        assert r.headers["Content-Type"] == "application/problem+json"
    summarize(client, BOB, "job-3")
    ledger = get_ledger(client.application)
    assert ledger.balance("acct-bob") == DEMO_CREDITS["acct-bob"] - 1
    assert ledger.balance("acct-ada") == DEMO_CREDITS["acct-ada"]


def test_running_out_of_credits_is_402(client: Any) -> None:
    """Bob's three credits pay for three jobs; the fourth job is 402."""
    for n in range(DEMO_CREDITS["acct-bob"]):
        assert summarize(client, BOB, f"bob-{n}").status_code == 200
    r = summarize(client, BOB, "bob-last")
    assert r.status_code == 402
    assert r.json["code"] == "insufficient_credits"
    assert summarize(client, BOB, "bob-0").json["charge"] == "reused"  # old jobs still ride


def test_tier_is_recorded_with_the_charge(client: Any) -> None:
    """?tier= is what the first call paid for; a follow-up asking another tier still
    sees the first call's."""
    assert summarize(client, ADA, "job-4", "?tier=pro").json["tier"] == "pro"
    assert summarize(client, ADA, "job-4", "?tier=cheap").json["tier"] == "pro"


def test_url_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """create_app() reads JOBCREDITS_URL; on a shared store it grants nothing at start."""
    db = tmp_path / "jobs.db"
    monkeypatch.setenv("JOBCREDITS_URL", f"sqlite:///{db}")
    app = create_app()
    ledger = get_ledger(app)
    try:
        assert db.exists()
        assert ledger.balance("acct-ada") == 0
        assert summarize(app.test_client(), ADA, "job-5").status_code == 402
    finally:
        ledger.close()


def charges_counted(text: str, scope: str) -> float:
    """The jobcredits_charges_total samples of one scope in a /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "jobcredits_charges_total" and sample.labels.get("scope") == scope
    )


def test_metrics_count_the_charges(client: Any) -> None:
    """/metrics serves the Prometheus counters of the plugin JOBCREDITS_PLUGINS
    registers: a job of two calls is one charge."""
    pytest.importorskip("prometheus_client", reason="the prometheus extra is not installed")
    assert charges_counted(client.get("/metrics").text, "summarize") == 0
    summarize(client, ADA, "job-m")
    summarize(client, ADA, "job-m")
    page = client.get("/metrics")
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/plain")
    assert "X-Job-Charge" not in page.headers  # free
    assert charges_counted(page.text, "summarize") == 1
    assert 'jobcredits_charges_total{scope="summarize",tier="standard"} 1.0' in page.text


def test_each_app_counts_its_own_calls() -> None:
    """Every app the factory builds has its own registry: no "Duplicated
    timeseries", and one app's charges do not show in another's /metrics."""
    pytest.importorskip("prometheus_client", reason="the prometheus extra is not installed")
    one, two = create_app("memory://").test_client(), create_app("memory://").test_client()
    summarize(one, ADA, "job-1")
    assert charges_counted(one.get("/metrics").text, "summarize") == 1
    assert charges_counted(two.get("/metrics").text, "summarize") == 0


def test_metrics_without_prometheus_client_is_404(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the prometheus extra the app still works, and /metrics says what
    to install."""
    import examples.flask_app as example

    monkeypatch.setattr(example, "PrometheusMetrics", None)
    client = example.create_app("memory://").test_client()
    assert summarize(client, ADA, "job-1").status_code == 200
    assert client.application.config["JOBCREDITS_PLUGINS"] == []
    page = client.get("/metrics")
    assert page.status_code == 404
    assert "jobcredits-plugin[prometheus]" in page.text
