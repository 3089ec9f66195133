"""What a charging operation adds to an OpenAPI schema: the job header, the
``X-Job-Charge`` headers of its answers, and its problem+json answers.

Plain dictionaries in, plain dictionaries out: no framework is imported, so
the FastAPI adapter only finds its charging routes and hands each operation
here with the settings that apply to it.
"""

from __future__ import annotations

from typing import Any

from ._call import CREDITS_HEADER, JOB_CHARGE_HEADER
from ._problems import PROBLEM_CONTENT_TYPE

__all__ = ["PROBLEM_SCHEMA", "PROBLEM_SCHEMA_NAME", "document_operation"]

#: The name of the problem document's schema under ``components.schemas``.
PROBLEM_SCHEMA_NAME = "JobCreditsProblem"


def document_operation(
    operation: dict[str, Any],
    *,
    job_header: str,
    on_missing: str,
    fail_open: bool,
    balances: bool,
) -> None:
    """Add to ``operation`` (in place) what a charging endpoint answers;
    what the operation already documents is left as it is."""
    _add_job_header(operation.setdefault("parameters", []), job_header, on_missing)
    responses = operation.setdefault("responses", {})
    _add_success_headers(responses, job_header, balances)
    _add_problem_answers(responses, balances=balances, fail_open=fail_open)


def _add_job_header(parameters: list[Any], job_header: str, on_missing: str) -> None:
    """The job header as a header parameter, unless the operation has it."""
    if any(
        p.get("in") == "header" and str(p.get("name", "")).lower() == job_header.lower()
        for p in parameters
    ):
        return
    parameters.append(
        {
            "name": job_header,
            "in": "header",
            "required": on_missing == "reject",
            "schema": {"type": "string", "minLength": 1, "maxLength": 128},
            "description": (
                "The job this call belongs to, minted by the client once per job "
                "(a UUID fits): the job's first call is charged, its follow-ups "
                "ride free. "
                + (
                    "Required."
                    if on_missing == "reject"
                    else "Without it the call is a job of its own, under a fresh "
                    "id echoed in this header of the response."
                )
            ),
        }
    )


def _add_success_headers(responses: dict[str, Any], job_header: str, balances: bool) -> None:
    """The headers that say what a call cost, on each declared 2xx answer."""
    success_headers = {
        job_header: {
            "description": "The job id (a fresh one if the request sent none).",
            "schema": {"type": "string"},
        },
        JOB_CHARGE_HEADER: {
            "description": "What this call cost: charged, reused or refunded.",
            "schema": {"type": "string", "enum": ["charged", "reused", "refunded"]},
        },
    }
    if balances:
        success_headers[CREDITS_HEADER] = {
            "description": "The account's credits left after this call.",
            "schema": {"type": "integer"},
        }
    for status, declared in responses.items():
        if str(status).startswith("2") and isinstance(declared, dict):
            headers = declared.setdefault("headers", {})
            for name, spec in success_headers.items():
                headers.setdefault(name, spec)


def _add_problem_answers(responses: dict[str, Any], *, balances: bool, fail_open: bool) -> None:
    """The problem+json answers the charge may give, where none is declared:
    402 only with balances on, 503 only when the call does not fail open."""
    answers = dict(_PROBLEM_ANSWERS)
    if not balances:
        del answers["402"]
    if fail_open:
        del answers["503"]
    for status, (description, retry_after) in answers.items():
        if status in responses:
            continue
        response: dict[str, Any] = {
            "description": description,
            "content": {
                PROBLEM_CONTENT_TYPE: {
                    "schema": {"$ref": f"#/components/schemas/{PROBLEM_SCHEMA_NAME}"}
                }
            },
        }
        if retry_after:
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds after which a retry may succeed.",
                    "schema": {"type": "integer"},
                }
            }
        responses[status] = response


_PROBLEM_ANSWERS: dict[str, tuple[str, bool]] = {
    "400": ("Invalid job id, or none where the endpoint requires one (problem+json).", False),
    "401": ("No account for this call: it must be authenticated (problem+json).", False),
    "402": ("The account's credits are below the cost of a new job (problem+json).", False),
    "409": (
        "The job's first call is still running (retry after Retry-After), or the job "
        "has served all its calls (problem+json).",
        True,
    ),
    "503": ("The credit store is unavailable (retry after Retry-After; problem+json).", True),
}

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem document; branch on `code`.",
    "type": "object",
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "code": {
            "type": "string",
            "description": "invalid_job_id, missing_job_id, not_authenticated, "
            "insufficient_credits, job_in_progress, job_exhausted, store_unavailable, ...",
        },
        "retry_after": {"type": "integer"},
        "balance": {"type": "integer", "nullable": True},
        "cost": {"type": "integer", "nullable": True},
        "max_uses": {"type": "integer", "nullable": True},
    },
    "required": ["type", "title", "status", "code"],
}
