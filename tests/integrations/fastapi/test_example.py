"""examples/fastapi_app.py, the app of the FastAPI quickstart, driven in-process."""

import asyncio
from typing import Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from examples.fastapi_app import create_app  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from jobcredits_plugin import InProcessStoreWarning, Ledger  # noqa: E402

# The quickstart runs on memory:// on purpose (one process, demo credits); that it
# warns is checked once, below.
pytestmark = pytest.mark.filterwarnings("ignore::jobcredits_plugin.InProcessStoreWarning")

ADA = {"X-Api-Key": "key-ada"}


@pytest.mark.filterwarnings("error::jobcredits_plugin.InProcessStoreWarning")
def test_the_quickstart_on_memory_warns_about_workers() -> None:
    with pytest.warns(InProcessStoreWarning, match="uvicorn --workers 2"):
        create_app("memory://")


def session(app: FastAPI, *requests: tuple[str, str, dict[str, str]]) -> list[Any]:
    """Send the requests in order (JSON body {"text": ...}) on one client."""

    async def go() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            out = []
            for method, path, headers in requests:
                body = {"text": "one two three"} if method == "POST" else None
                out.append(await c.request(method, path, headers=headers, json=body))
            return out

    return asyncio.run(go())


def test_a_job_is_charged_once_across_both_endpoints() -> None:
    """/v1/summarize (dependency) then /v1/analyze (decorator) with one job id:
    charged once, the second call reused, the credits debited once."""
    job = {**ADA, "X-Job-Id": "job-1"}
    summarize, analyze, credits = session(
        create_app("memory://"),
        ("POST", "/v1/summarize", job),
        ("POST", "/v1/analyze", job),
        ("GET", "/v1/credits", ADA),
    )
    assert summarize.json() == {"summary": "one two three", "charge": "charged", "credits": 99}
    assert analyze.json() == {"words": 3, "charge": "reused"}
    assert (summarize.headers["X-Job-Charge"], analyze.headers["X-Job-Charge"]) == (
        "charged",
        "reused",
    )
    assert analyze.headers["X-Credits-Remaining"] == "99"
    assert credits.json() == {"account": "acct-ada", "credits": 99}


def test_a_502_refunds_and_the_retry_is_charged_again() -> None:
    """?fail=true answers 502 and refunds; the retry with the same job id is a
    new charge."""
    job = {**ADA, "X-Job-Id": "job-2"}
    failed, retried, credits = session(
        create_app("memory://"),
        ("POST", "/v1/summarize?fail=true", job),
        ("POST", "/v1/summarize", job),
        ("GET", "/v1/credits", ADA),
    )
    assert failed.status_code == 502
    assert failed.headers["X-Job-Charge"] == "refunded"
    assert failed.headers["X-Credits-Remaining"] == "100"
    assert retried.headers["X-Job-Charge"] == "charged"
    assert credits.json()["credits"] == 99


def test_the_decorated_endpoint_refunds_its_502_too() -> None:
    """/v1/analyze?fail=true also answers 502 and refunds."""
    (failed,) = session(
        create_app("memory://"), ("POST", "/v1/analyze?fail=true", {**ADA, "X-Job-Id": "j"})
    )
    assert failed.status_code == 502
    assert failed.headers["X-Job-Charge"] == "refunded"


def test_unknown_api_key_is_401_and_exhausted_credits_402() -> None:
    """An unknown API key answers 401; an account out of credits gets 402 on a
    new job (acct-bob starts with 3)."""
    bob = {"X-Api-Key": "key-bob"}
    responses = session(
        create_app("memory://"),
        ("POST", "/v1/summarize", {"X-Api-Key": "nope", "X-Job-Id": "j"}),
        *[("POST", "/v1/summarize", {**bob, "X-Job-Id": f"bob-{i}"}) for i in range(4)],
    )
    assert responses[0].status_code == 401
    assert responses[0].headers["Content-Type"] == "application/problem+json"
    assert [r.status_code for r in responses[1:]] == [200, 200, 200, 402]
    assert responses[4].json()["code"] == "insufficient_credits"


def test_ledger_url_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """create_app() reads JOBCREDITS_URL; a shared store gets no demo grants
    (the operator grants once)."""
    db = tmp_path / "jobs.db"
    url = f"sqlite:///{db}"
    with Ledger.from_url(url, balances=True) as ledger:
        ledger.grant("acct-ada", 5)
    monkeypatch.setenv("JOBCREDITS_URL", url)
    (response,) = session(create_app(), ("POST", "/v1/summarize", {**ADA, "X-Job-Id": "j"}))
    assert response.headers["X-Credits-Remaining"] == "4"
    with Ledger.from_url(url, balances=True) as ledger:
        assert ledger.balance("acct-ada") == 4
        assert [r.job_id for r in ledger.snapshot()] == ["j"]


def test_openapi_documents_both_endpoints() -> None:
    """Both paid endpoints show the job header and the 402 answer in the schema."""
    schema = create_app("memory://").openapi()
    for path in ("/v1/summarize", "/v1/analyze"):
        op = schema["paths"][path]["post"]
        assert any(p["name"] == "X-Job-Id" for p in op["parameters"])
        assert "402" in op["responses"]
    assert "402" not in schema["paths"]["/v1/credits"]["get"]["responses"]


def charges_counted(text: str, scope: str) -> float:
    """The jobcredits_charges_total samples of one scope in a /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "jobcredits_charges_total" and sample.labels.get("scope") == scope
    )


def test_metrics_count_the_charges() -> None:
    """/metrics serves the counters of the plugin JobCredits(plugins=...)
    registers: a job across both endpoints is one charge."""
    pytest.importorskip("prometheus_client", reason="the prometheus extra is not installed")
    job = {**ADA, "X-Job-Id": "job-m"}
    before, _, _, after = session(
        create_app("memory://"),
        ("GET", "/metrics", {}),
        ("POST", "/v1/summarize", job),
        ("POST", "/v1/analyze", job),
        ("GET", "/metrics", {}),
    )
    assert charges_counted(before.text, "summarize") == 0
    assert after.status_code == 200
    assert after.headers["Content-Type"].startswith("text/plain")
    assert charges_counted(after.text, "summarize") == 1
    assert 'jobcredits_charges_total{scope="summarize",tier=""} 1.0' in after.text
    assert 'jobcredits_reuses_total{scope="summarize"} 1.0' in after.text


def test_each_app_counts_its_own_calls() -> None:
    """Every app the factory builds has its own registry."""
    pytest.importorskip("prometheus_client", reason="the prometheus extra is not installed")
    session(create_app("memory://"), ("POST", "/v1/summarize", {**ADA, "X-Job-Id": "j"}))
    (page,) = session(create_app("memory://"), ("GET", "/metrics", {}))
    assert charges_counted(page.text, "summarize") == 0


def test_metrics_without_prometheus_client_is_404(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the prometheus extra the app still works, and /metrics says what
    to install."""
    import examples.fastapi_app as example

    monkeypatch.setattr(example, "PrometheusMetrics", None)
    charged, page = session(
        example.create_app("memory://"),
        ("POST", "/v1/summarize", {**ADA, "X-Job-Id": "j"}),
        ("GET", "/metrics", {}),
    )
    assert charged.status_code == 200
    assert page.status_code == 404
    assert "jobcredits-plugin[prometheus]" in page.text


def test_metrics_is_not_in_the_schema() -> None:
    """/metrics is for Prometheus, not for the API's clients."""
    assert "/metrics" not in create_app("memory://").openapi()["paths"]
