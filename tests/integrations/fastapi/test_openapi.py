"""The OpenAPI schema of an app with JobCredits installed: the job header and
the problem+json answers appear on the operations that charge, and only there."""

from typing import Annotated, Any

import pytest

pytest.importorskip("fastapi")

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from jobcredits_plugin import Charge, Ledger, header
from jobcredits_plugin.fastapi import JobCredits, charge_credit, charges_credit
from jobcredits_plugin.testing import make_ledger

PROBLEM_REF = {"$ref": "#/components/schemas/JobCreditsProblem"}


class Text(BaseModel):
    text: str


def build(ledger: Ledger, **kwargs: Any) -> FastAPI:
    """An app with a dependency route, a decorated route, a route-level
    dependency, a router-level one and a free route."""
    app = FastAPI()
    JobCredits(ledger, account=header("X-Account"), **kwargs).install(app)

    @app.post("/dep")
    async def dep(body: Text, charge: Annotated[Charge, Depends(charge_credit())]) -> None:
        return None

    @app.post("/dec")
    @charges_credit(header="X-Recap-Job-Id")
    def dec(body: Text, n: int = 1) -> dict[str, int]:
        return {"n": n}

    @app.get("/listed", dependencies=[Depends(charge_credit(on_missing="reject"))])
    async def listed() -> None:
        return None

    router = APIRouter(dependencies=[Depends(charge_credit(fail_open=True))])

    @router.get("/routed")
    async def routed() -> None:
        return None

    app.include_router(router)

    @app.get("/free")
    async def free() -> None:
        return None

    return app


def operation(schema: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    op: dict[str, Any] = schema["paths"][path][method]
    return op


def header_param(op: dict[str, Any], name: str) -> dict[str, Any] | None:
    for p in op.get("parameters", []):
        if p["in"] == "header" and p["name"] == name:
            return p  # type: ignore[no-any-return]
    return None


def test_dependency_route_documents_header_and_problem_answers(ledger: Ledger) -> None:
    """A route with the dependency lists the job header (optional by default)
    and the 400/401/409/503 problem+json answers, 409 and 503 with Retry-After."""
    op = operation(build(ledger).openapi(), "/dep", "post")
    param = header_param(op, "X-Job-Id")
    assert param is not None
    assert param["required"] is False
    assert param["schema"]["type"] == "string"
    for status in ("400", "401", "409", "503"):
        content = op["responses"][status]["content"]
        assert content == {"application/problem+json": {"schema": PROBLEM_REF}}
    assert "Retry-After" in op["responses"]["409"]["headers"]
    assert "Retry-After" in op["responses"]["503"]["headers"]
    assert "402" not in op["responses"]  # balances are off
    assert "422" in op["responses"]  # FastAPI's own answers stay
    success = op["responses"]["200"]["headers"]
    assert success["X-Job-Charge"]["schema"]["enum"] == ["charged", "reused", "refunded"]
    assert "X-Credits-Remaining" not in success


def test_balances_add_the_402_answer_and_credits_header() -> None:
    """With balances on, the 402 answer and the X-Credits-Remaining header are
    documented."""
    op = operation(build(make_ledger(balances=True)).openapi(), "/dep", "post")
    assert op["responses"]["402"]["content"] == {
        "application/problem+json": {"schema": PROBLEM_REF}
    }
    assert "X-Credits-Remaining" in op["responses"]["200"]["headers"]


def test_decorated_route_documents_its_header_and_keeps_its_parameters(ledger: Ledger) -> None:
    """A decorated route documents its own job header and answers, keeps its
    own parameters, and shows no request parameter."""
    op = operation(build(ledger).openapi(), "/dec", "post")
    assert header_param(op, "X-Recap-Job-Id") is not None
    assert header_param(op, "X-Job-Id") is None
    names = [(p["in"], p["name"]) for p in op["parameters"]]
    assert names == [("query", "n"), ("header", "X-Recap-Job-Id")]
    assert op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Text"
    }
    assert set(op["responses"]) >= {"200", "400", "401", "409", "422", "503"}


def test_route_and_router_dependencies_are_documented(ledger: Ledger) -> None:
    """Charging dependencies listed in a route's or a router's dependencies=
    are found; on_missing="reject" makes the header required, fail_open drops
    the 503 answer."""
    schema = build(ledger).openapi()
    listed = operation(schema, "/listed", "get")
    listed_param = header_param(listed, "X-Job-Id")
    assert listed_param is not None
    assert listed_param["required"] is True
    routed = operation(schema, "/routed", "get")
    assert header_param(routed, "X-Job-Id") is not None
    assert "503" not in routed["responses"]
    assert "409" in routed["responses"]


def test_free_route_is_left_alone(ledger: Ledger) -> None:
    """A route that does not charge gets no job header and no problem answers."""
    op = operation(build(ledger).openapi(), "/free", "get")
    assert "parameters" not in op
    assert set(op["responses"]) == {"200"}


def test_app_job_header_is_the_documented_default(ledger: Ledger) -> None:
    """JobCredits(job_header=...) is what the dependency routes document."""
    op = operation(build(ledger, job_header="X-Task").openapi(), "/dep", "post")
    assert header_param(op, "X-Task") is not None
    assert header_param(op, "X-Job-Id") is None


def test_problem_schema_is_a_component(ledger: Ledger) -> None:
    """The problem document's schema is defined once, under components."""
    problem = build(ledger).openapi()["components"]["schemas"]["JobCreditsProblem"]
    assert problem["type"] == "object"
    assert {"type", "title", "status", "detail", "code", "retry_after"} <= set(
        problem["properties"]
    )


def test_schema_is_built_once_and_cached(ledger: Ledger) -> None:
    """app.openapi() still caches: the second call returns the same schema,
    and the answers are not added twice."""
    app = build(ledger)
    first = app.openapi()
    assert app.openapi() is first
    params = header_param(operation(first, "/dep", "post"), "X-Job-Id")
    assert params is not None
    op = operation(first, "/dep", "post")
    assert [p["name"] for p in op["parameters"]].count("X-Job-Id") == 1


def test_responses_the_app_declares_are_kept(ledger: Ledger) -> None:
    """A status the route documents itself keeps the route's description."""
    app = FastAPI()
    JobCredits(ledger, account=header("X-Account")).install(app)

    @app.post("/run", responses={409: {"description": "Our own words"}})
    @charges_credit()
    async def run() -> None:
        return None

    op = operation(app.openapi(), "/run", "post")
    assert op["responses"]["409"] == {"description": "Our own words"}
    assert "401" in op["responses"]


def test_document_for_a_custom_openapi(ledger: Ledger) -> None:
    """An app with its own openapi() can call JobCredits.document on its schema."""
    app = FastAPI()
    ext = JobCredits(ledger, account=header("X-Account")).install(app)

    @app.post("/run")
    @charges_credit()
    async def run() -> None:
        return None

    schema = get_openapi(title="Custom", version="1.0", routes=app.routes)
    assert header_param(operation(schema, "/run", "post"), "X-Job-Id") is None
    ext.document(schema, app.routes)
    assert header_param(operation(schema, "/run", "post"), "X-Job-Id") is not None
    assert "JobCreditsProblem" in schema["components"]["schemas"]
