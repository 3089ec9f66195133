"""The errors: HTTP status, stable code, RFC 9457 problem documents and
Retry-After headers (DESIGN §3, "Errors carry .status ... and a stable .code")."""

from __future__ import annotations

import http
import json

import pytest

import jobcredits_plugin
from jobcredits_plugin import (
    InsufficientCredits,
    InvalidAccount,
    InvalidArgument,
    InvalidJobId,
    JobCreditsError,
    JobExhausted,
    JobInProgress,
    MissingJobId,
    NotAuthenticated,
    StoreUnavailable,
)

TABLE = [
    (InvalidJobId, "invalid_job_id", 400),
    (InvalidAccount, "invalid_account", 400),
    (InvalidArgument, "invalid_argument", 400),
    (MissingJobId, "missing_job_id", 400),
    (NotAuthenticated, "not_authenticated", 401),
    (InsufficientCredits, "insufficient_credits", 402),
    (JobInProgress, "job_in_progress", 409),
    (JobExhausted, "job_exhausted", 409),
    (StoreUnavailable, "store_unavailable", 503),
]

ALL_ERRORS = [cls for cls, _, _ in TABLE]


@pytest.mark.parametrize(("cls", "code", "status"), TABLE, ids=[c for _, c, _ in TABLE])
def test_every_error_has_its_status_and_code(
    cls: type[JobCreditsError], code: str, status: int
) -> None:
    """Each error class and instance carries the documented HTTP status and code."""
    assert cls.status == status
    assert cls.code == code
    err = cls("something went wrong")
    assert err.status == status
    assert err.code == code
    assert isinstance(err, JobCreditsError)
    assert str(err) == "something went wrong"


def test_codes_are_unique() -> None:
    """No two error classes share a code, so clients can branch on it."""
    codes = [cls.code for cls in ALL_ERRORS]
    assert len(set(codes)) == len(codes)


def test_all_errors_are_exported() -> None:
    """Every error is importable from the package root and listed in __all__."""
    for cls in (JobCreditsError, *ALL_ERRORS):
        assert getattr(jobcredits_plugin, cls.__name__) is cls
        assert cls.__name__ in jobcredits_plugin.__all__


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_to_problem_has_the_rfc9457_fields_and_is_json(cls: type[JobCreditsError]) -> None:
    """to_problem() returns type, title, status, detail and code, and serialises
    to JSON unchanged."""
    err = cls("the detail")
    doc = err.to_problem()
    assert {"type", "title", "status", "detail", "code"} <= doc.keys()
    assert doc["status"] == cls.status
    assert doc["code"] == cls.code
    assert doc["detail"] == ("the detail" if cls.status < 500 else err.client_detail)
    # No base configured: about:blank, whose title is the status phrase (RFC 9457 §4.2.1).
    assert doc["type"] == "about:blank"
    assert doc["title"] == http.HTTPStatus(cls.status).phrase
    assert "instance" not in doc
    assert json.loads(json.dumps(doc)) == doc


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_detail_defaults_to_the_title(cls: type[JobCreditsError]) -> None:
    """An error raised without a message still has a human detail."""
    err = cls()
    assert err.detail == cls.title
    assert err.to_problem()["detail"] == err.client_detail


def test_to_problem_takes_an_instance_uri() -> None:
    """to_problem(instance=...) adds the RFC 9457 `instance` member."""
    doc = MissingJobId().to_problem(instance="/v1/summarize")
    assert doc["instance"] == "/v1/summarize"


def test_problem_types_differ_per_code_under_a_base() -> None:
    """With a configured base, each code has its own problem `type` URI: the
    base followed by the code, with the error's own title."""
    base = "https://api.example.com/problems/"
    docs = [cls().to_problem(type_base=base) for cls in ALL_ERRORS]
    assert len({doc["type"] for doc in docs}) == len(ALL_ERRORS)
    for cls, doc in zip(ALL_ERRORS, docs, strict=True):
        assert doc["type"] == base + cls.code
        assert doc["title"] == cls.title


def test_no_problem_type_points_at_the_library_documentation() -> None:
    """Without a base the type is about:blank: no third party's host reaches an
    app's customers."""
    for cls in ALL_ERRORS:
        assert cls().to_problem()["type"] == "about:blank"
        assert cls().to_problem(type_base="about:blank")["type"] == "about:blank"


@pytest.mark.parametrize(
    "err",
    [
        InvalidJobId(),
        InvalidAccount(),
        InvalidArgument(),
        MissingJobId(),
        NotAuthenticated(),
        InsufficientCredits(balance=0, cost=1),
        JobExhausted(max_uses=3),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_other_than_in_progress_and_unavailable_have_no_retry_after(
    err: JobCreditsError,
) -> None:
    """Only 409 job_in_progress and 503 carry Retry-After; 409 job_exhausted does not."""
    assert err.retry_after is None
    assert err.headers() == {}
    assert "retry_after" not in err.to_problem()


def test_job_in_progress_retry_after_is_whole_seconds_rounded_up() -> None:
    """JobInProgress turns the lease left into a Retry-After of whole seconds,
    rounded up and at least 1."""
    uncapped = {"retry_after_max": None}
    assert JobInProgress(retry_after=49.2).headers(**uncapped) == {"Retry-After": "50"}
    assert JobInProgress(retry_after=50).retry_after == 50
    assert JobInProgress(retry_after=0.01).headers() == {"Retry-After": "1"}
    assert JobInProgress(retry_after=0).retry_after == 1
    doc = JobInProgress(retry_after=7.5).to_problem(**uncapped)
    assert doc["retry_after"] == 8
    assert json.loads(json.dumps(doc)) == doc


def test_retry_after_is_capped_at_five_seconds_unless_told() -> None:
    """A 409 for a job whose first call holds a 60 s lease says Retry-After 5 (the
    default cap), in the header and the body alike; the cap is a parameter."""
    err = JobInProgress(retry_after=60)
    assert err.headers() == {"Retry-After": "5"}
    assert err.to_problem()["retry_after"] == 5
    assert err.headers(retry_after_max=20) == {"Retry-After": "20"}
    assert err.to_problem(retry_after_max=20)["retry_after"] == 20
    assert err.headers(retry_after_max=None) == {"Retry-After": "60"}
    assert JobInProgress(retry_after=2).headers(retry_after_max=20) == {"Retry-After": "2"}


def test_store_unavailable_has_retry_after() -> None:
    """StoreUnavailable answers 503 with a Retry-After (1 s unless told)."""
    assert StoreUnavailable().headers() == {"Retry-After": "1"}
    assert StoreUnavailable(retry_after=4.2).headers() == {"Retry-After": "5"}
    assert StoreUnavailable().to_problem()["retry_after"] == 1


def test_insufficient_credits_problem_carries_balance_and_cost() -> None:
    """The 402 problem tells the client its balance and the cost it fell short of."""
    doc = InsufficientCredits("short", balance=2, cost=5).to_problem()
    assert doc["balance"] == 2
    assert doc["cost"] == 5
    assert json.loads(json.dumps(doc)) == doc


def test_job_exhausted_problem_carries_max_uses() -> None:
    """The job_exhausted problem tells the client how many uses a job has."""
    doc = JobExhausted(max_uses=3).to_problem()
    assert doc["max_uses"] == 3
    assert doc["status"] == 409


def test_invalid_argument_is_a_value_error() -> None:
    """Bad-value errors are ValueErrors, the others are not."""
    for cls in (InvalidArgument, InvalidJobId, InvalidAccount):
        assert issubclass(cls, ValueError)
    for cls in (
        MissingJobId,
        NotAuthenticated,
        InsufficientCredits,
        JobInProgress,
        JobExhausted,
        StoreUnavailable,
    ):
        assert not issubclass(cls, ValueError)
