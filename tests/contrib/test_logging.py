"""LoggingPlugin: one record per event, readable as text and structured as
attributes; accounts hashed or redacted leave no trace of themselves; values
that failed validation never reach the log; a broken handler never breaks a
charge."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shlex
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobcredits_plugin import JobCreditsError, Ledger, MissingJobId, StoreUnavailable
from jobcredits_plugin.contrib.logging import (
    DEFAULT_LOGGER,
    REDACTED,
    LoggingPlugin,
    SlowStoreLogPlugin,
)
from jobcredits_plugin.stores import ClaimRequest, ClaimResult, MemoryStore
from jobcredits_plugin.testing import FakeClock, make_ledger

A = "alice@example.com"
KEY = b"k" * 32

#: Every attribute a LogRecord has on its own; what is left is the extra.
STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class DownStore(MemoryStore):
    """A memory store whose claims cannot reach their 'server'."""

    def claim(self, req: ClaimRequest) -> ClaimResult:
        raise ConnectionError("connection refused to redis://:hunter2@cache:6379")


def extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in STANDARD}


def logfmt(message: str) -> tuple[str, dict[str, str]]:
    """Parse ``jobcredits <event> key=value ...`` back (values may be
    double-quoted): the message must stay machine-readable."""
    head, event, *pairs = shlex.split(message, posix=True)
    assert head == "jobcredits"
    return event, dict(pair.split("=", 1) for pair in pairs)


def everything(record: logging.LogRecord) -> str:
    """All a handler could ever render of a record: its message, its
    arguments and every attribute (the extra included)."""
    return repr(vars(record)) + record.getMessage()


def advance(ledger: Ledger, seconds: float) -> None:
    """Move the fake clock of a ledger built by ``make``."""
    assert isinstance(ledger.clock, FakeClock)
    ledger.clock.advance(seconds)


@pytest.fixture
def make() -> Iterator[Callable[..., Ledger]]:
    """Builds ledgers on a fake clock with the given plugins, and closes them."""
    made: list[Ledger] = []

    def factory(*plugins: object, **kwargs: Any) -> Ledger:
        ledger = make_ledger(clock=FakeClock(), plugins=plugins, **kwargs)
        made.append(ledger)
        return ledger

    yield factory
    for ledger in made:
        ledger.close()


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog, capturing the plugin's default logger at every level."""
    caplog.set_level(logging.DEBUG, logger=DEFAULT_LOGGER)
    return caplog


def ours(records: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The records of the plugin's default logger in the current test phase."""
    return [r for r in records.records if r.name == DEFAULT_LOGGER]


# -- one record per event ------------------------------------------------------------


def test_charge_is_one_info_record_with_message_and_attributes(
    make: Callable[..., Ledger], records: pytest.LogCaptureFixture
) -> None:
    ledger = make(LoggingPlugin())
    charge = ledger.charge(A, "job-1", scope="summarize", tier="pro", cost=3)
    (record,) = ours(records)
    assert record.levelno == logging.INFO
    cid = charge.record.charge_id
    assert record.getMessage() == (
        f"jobcredits charge account={A} scope=summarize job_id=job-1 charge_id={cid} "
        "tier=pro cost=3 uses=1 outcome=charged"
    )
    assert extra(record) == {
        "jobcredits_event": "charge",
        "jobcredits_outcome": "charged",
        "jobcredits_account": A,
        "jobcredits_scope": "summarize",
        "jobcredits_job_id": "job-1",
        "jobcredits_charge_id": cid,
        "jobcredits_state": "pending",
        "jobcredits_tier": "pro",
        "jobcredits_backend": None,
        "jobcredits_cost": 3,
        "jobcredits_debited": 0,
        "jobcredits_uses": 1,
        "jobcredits_charged_at": charge.record.charged_at,
        "jobcredits_expires_at": charge.record.expires_at,
    }


def test_each_event_is_logged_once(
    make: Callable[..., Ledger], records: pytest.LogCaptureFixture
) -> None:
    ledger = make(LoggingPlugin())
    ledger.charge(A, "job-1")
    ledger.confirm(A, "job-1")  # not an event: nothing logged
    ledger.charge(A, "job-1")
    ledger.refund(A, "job-1")
    ledger.refund(A, "job-1")  # idempotent: no second event
    ledger.charge(A, "job-2")
    ledger.confirm(A, "job-2")
    advance(ledger, ledger.ttl + 1)
    ledger.prune()
    ledger.prune()
    seen = [(r.jobcredits_event, r.jobcredits_job_id, r.levelno) for r in ours(records)]  # type: ignore[attr-defined]
    assert seen == [
        ("charge", "job-1", logging.INFO),
        ("reuse", "job-1", logging.INFO),
        ("refund", "job-1", logging.INFO),
        ("charge", "job-2", logging.INFO),
        ("expire", "job-2", logging.INFO),
    ]
    outcomes = [logfmt(r.getMessage())[1]["outcome"] for r in ours(records)]
    assert outcomes == ["charged", "reused", "refunded", "charged", "expired"]


def test_lease_takeover_logs_the_refund_then_the_new_charge(
    make: Callable[..., Ledger], records: pytest.LogCaptureFixture
) -> None:
    ledger = make(LoggingPlugin())
    first = ledger.charge(A, "job-1")
    advance(ledger, ledger.lease + 1)
    second = ledger.charge(A, "job-1")
    got = [(r.jobcredits_event, r.jobcredits_charge_id) for r in ours(records)]  # type: ignore[attr-defined]
    assert got == [
        ("charge", first.record.charge_id),
        ("refund", first.record.charge_id),
        ("charge", second.record.charge_id),
    ]


def test_levels_are_configurable_and_disabled_levels_log_nothing(
    make: Callable[..., Ledger], records: pytest.LogCaptureFixture
) -> None:
    ledger = make(LoggingPlugin(level=logging.DEBUG, reject_level=logging.ERROR))
    ledger.charge(A, "job-1")
    with pytest.raises(JobCreditsError):
        ledger.charge(A, "job-1")  # in progress
    assert [r.levelno for r in ours(records)] == [logging.DEBUG, logging.ERROR]

    records.clear()
    records.set_level(logging.CRITICAL, logger=DEFAULT_LOGGER)
    ledger.charge(A, "job-2")
    with pytest.raises(JobCreditsError):
        ledger.charge(A, "job-2")
    assert ours(records) == []


def test_logger_may_be_given_by_name_or_object(
    make: Callable[..., Ledger], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    by_name = LoggingPlugin("acme.billing")
    by_object = LoggingPlugin(logging.getLogger("acme.audit"))
    ledger = make(by_name, by_object)
    ledger.charge(A, "job-1")
    assert sorted(r.name for r in caplog.records) == ["acme.audit", "acme.billing"]
    assert LoggingPlugin().logger is logging.getLogger("jobcredits_plugin.events")


# -- rejections --------------------------------------------------------------------


def test_rejection_is_a_warning_with_code_and_status(
    make: Callable[..., Ledger], records: pytest.LogCaptureFixture
) -> None:
    ledger = make(LoggingPlugin(), max_uses=1)
    ledger.charge(A, "job-1", scope="summarize")
    ledger.confirm(A, "job-1", scope="summarize")
    with pytest.raises(JobCreditsError):
        ledger.charge(A, "job-1", scope="summarize")
    record = ours(records)[-1]
    assert record.levelno == logging.WARNING
    event, fields = logfmt(record.getMessage())
    assert event == "reject"
    assert fields == {
        "account": A,
        "scope": "summarize",
        "job_id": "job-1",
        "cost": "1",
        "code": "job_exhausted",
        "status": "409",
        "outcome": "rejected",
    }
    assert record.jobcredits_code == "job_exhausted"  # type: ignore[attr-defined]
    assert record.jobcredits_retry_after is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("account", "job_id", "scope", "cost"),
    [
        pytest.param(A, "evil id\u2028forged=1", "default", 1, id="job_id"),
        pytest.param("evil\x00account", "job-1", "default", 1, id="account"),
        pytest.param(A, "job-1", "<script>alert(1)</script>", 1, id="scope"),
        pytest.param(A, "job-1", "default", "1; DROP TABLE", id="cost"),
    ],
)
def test_a_value_that_failed_validation_is_never_logged(
    make: Callable[..., Ledger],
    records: pytest.LogCaptureFixture,
    account: str,
    job_id: str,
    scope: str,
    cost: Any,
) -> None:
    ledger = make(LoggingPlugin())
    with pytest.raises(JobCreditsError):
        ledger.charge(account, job_id, scope=scope, cost=cost)
    (record,) = ours(records)
    text = everything(record)
    for value, name in [(account, "account"), (job_id, "job_id"), (scope, "scope")]:
        if value not in (A, "job-1", "default"):
            assert value not in text
            assert repr(value)[1:-1] not in text
            assert getattr(record, f"jobcredits_{name}") is None
    if cost != 1:
        assert "DROP" not in text
        assert record.jobcredits_cost is None  # type: ignore[attr-defined]


def test_error_detail_is_not_logged(
    make: Callable[..., Ledger], records: pytest.LogCaptureFixture
) -> None:
    # A store error's message may hold its URL and password.
    ledger = make(LoggingPlugin(), store=DownStore())
    with pytest.raises(StoreUnavailable):
        ledger.charge(A, "job-1")
    (record,) = ours(records)
    assert record.jobcredits_code == "store_unavailable"  # type: ignore[attr-defined]
    assert "hunter2" not in everything(record)
    assert record.exc_info is None


def test_adapter_rejections_are_logged_too(
    make: Callable[..., Ledger], records: pytest.LogCaptureFixture
) -> None:
    ledger = make(LoggingPlugin())
    ledger.report_rejection(MissingJobId(), account=A, scope="summarize")
    (record,) = ours(records)
    _, fields = logfmt(record.getMessage())
    assert fields["code"] == "missing_job_id"
    assert fields["job_id"] == "-"
    assert record.jobcredits_job_id is None  # type: ignore[attr-defined]


# -- slow store calls --------------------------------------------------------------


def test_store_calls_are_not_logged_nor_timed_by_default(
    make: Callable[..., Ledger], records: pytest.LogCaptureFixture
) -> None:
    ledger = make(LoggingPlugin())
    assert ledger.plugin_manager.hook.on_store_call.get_hookimpls() == []
    ledger.charge(A, "job-1")
    assert [r.jobcredits_event for r in ours(records)] == ["charge"]  # type: ignore[attr-defined]


def test_slow_store_calls_are_logged_when_asked(
    make: Callable[..., Ledger], records: pytest.LogCaptureFixture
) -> None:
    ledger = make(LoggingPlugin(slow_store_seconds=0.0))
    assert len(ledger.plugin_manager.hook.on_store_call.get_hookimpls()) == 1
    ledger.charge(A, "job-1")
    slow, charge = ours(records)
    assert slow.levelno == logging.WARNING
    event, fields = logfmt(slow.getMessage())
    assert event == "slow_store_call"
    assert fields["operation"] == "claim"
    assert fields["error"] == "-"
    assert slow.jobcredits_seconds >= 0  # type: ignore[attr-defined]
    assert charge.jobcredits_event == "charge"  # type: ignore[attr-defined]


def test_slow_store_call_reports_the_error_type_only(
    make: Callable[..., Ledger], records: pytest.LogCaptureFixture
) -> None:
    ledger = make(LoggingPlugin(slow_store_seconds=0.0), store=DownStore())
    with pytest.raises(StoreUnavailable):
        ledger.charge(A, "job-1")
    slow, reject = ours(records)
    assert slow.jobcredits_error == "StoreUnavailable"  # type: ignore[attr-defined]
    assert slow.jobcredits_outcome == "error"  # type: ignore[attr-defined]
    assert "hunter2" not in everything(slow)
    assert reject.jobcredits_code == "store_unavailable"  # type: ignore[attr-defined]


def test_fast_store_calls_stay_quiet(
    make: Callable[..., Ledger], records: pytest.LogCaptureFixture
) -> None:
    ledger = make(LoggingPlugin(slow_store_seconds=60.0))
    ledger.charge(A, "job-1")
    assert [r.jobcredits_event for r in ours(records)] == ["charge"]  # type: ignore[attr-defined]


def test_slow_store_log_is_a_plugin_of_its_own(
    make: Callable[..., Ledger], records: pytest.LogCaptureFixture
) -> None:
    """SlowStoreLogPlugin alone logs slow store calls and no events; the
    LoggingPlugin shortcut builds one on its own logger, and without the
    shortcut a LoggingPlugin has no on_store_call at all (nothing hidden)."""
    ledger = make(SlowStoreLogPlugin(0.0, level=logging.INFO))
    assert len(ledger.plugin_manager.hook.on_store_call.get_hookimpls()) == 1
    ledger.charge(A, "job-1")
    (slow,) = ours(records)
    assert slow.levelno == logging.INFO
    assert slow.jobcredits_event == "slow_store_call"  # type: ignore[attr-defined]
    assert slow.jobcredits_operation == "claim"  # type: ignore[attr-defined]
    assert not hasattr(LoggingPlugin(), "on_store_call")
    shortcut = LoggingPlugin("acme.billing", slow_store_seconds=0.5)
    assert isinstance(shortcut.slow_store, SlowStoreLogPlugin)
    assert shortcut.slow_store.logger is shortcut.logger
    assert shortcut.slow_store.seconds == 0.5
    assert "seconds=0.5" in repr(shortcut.slow_store)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"seconds": -1}, ValueError), ({"seconds": "1"}, ValueError), ({"level": "W"}, TypeError)],
)
def test_slow_store_log_refuses_bad_arguments(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        SlowStoreLogPlugin(**{"seconds": 1.0, **kwargs})


# -- privacy -------------------------------------------------------------------------


def _provoke_every_event(ledger: Ledger) -> None:
    ledger.charge(A, "job-1")
    ledger.confirm(A, "job-1")
    ledger.charge(A, "job-1")
    ledger.refund(A, "job-1")
    ledger.charge(A, "job-2")
    ledger.confirm(A, "job-2")
    with pytest.raises(JobCreditsError):
        ledger.charge(A, "job-3", cost=-1)
    advance(ledger, ledger.ttl + 1)
    ledger.prune()


def test_hashed_accounts_never_appear_anywhere_in_a_record(
    make: Callable[..., Ledger], records: pytest.LogCaptureFixture
) -> None:
    ledger = make(LoggingPlugin(accounts="hash", hash_key=KEY))
    _provoke_every_event(ledger)
    logged = ours(records)
    assert [r.jobcredits_event for r in logged] == [  # type: ignore[attr-defined]
        "charge",
        "reuse",
        "refund",
        "charge",
        "reject",
        "expire",
    ]
    expected = hashlib.blake2b(A.encode(), digest_size=8, key=KEY).hexdigest()
    for record in logged:
        assert A not in everything(record)
        assert "alice" not in everything(record)
        assert record.jobcredits_account == expected  # type: ignore[attr-defined]
        assert logfmt(record.getMessage())[1]["account"] == expected
        assert record.args in ((), None)


def test_hashes_depend_on_the_key_and_follow_one_account(
    make: Callable[..., Ledger], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    keyed = LoggingPlugin("a", accounts="hash", hash_key="secret")
    other_key = LoggingPlugin("b", accounts="hash", hash_key="another secret")
    unkeyed = LoggingPlugin("c", accounts="hash")
    ledger = make(keyed, other_key, unkeyed)
    ledger.charge(A, "job-1")
    ledger.charge(A, "job-2")
    ledger.charge("bob@example.com", "job-3")
    by_logger: dict[str, list[str]] = {}
    for record in caplog.records:
        by_logger.setdefault(record.name, []).append(record.jobcredits_account)  # type: ignore[attr-defined]
    for hashes in by_logger.values():
        assert hashes[0] == hashes[1] != hashes[2]  # one account: one value
        assert all(len(h) == 16 for h in hashes)
    assert len({hashes[0] for hashes in by_logger.values()}) == 3
    # unkeyed: anyone can recompute it (which is why a key is recommended)
    assert by_logger["c"][0] == hashlib.blake2b(A.encode(), digest_size=8).hexdigest()


def test_redacted_accounts_never_appear_anywhere_in_a_record(
    make: Callable[..., Ledger], records: pytest.LogCaptureFixture
) -> None:
    ledger = make(LoggingPlugin(accounts="redact"))
    _provoke_every_event(ledger)
    for record in ours(records):
        assert A not in everything(record)
        assert record.jobcredits_account == REDACTED  # type: ignore[attr-defined]
        assert logfmt(record.getMessage())[1]["account"] == REDACTED
        assert record.jobcredits_job_id.startswith("job-")  # type: ignore[attr-defined]


def test_job_ids_can_be_hashed_or_redacted_too(
    make: Callable[..., Ledger], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    ledger = make(
        LoggingPlugin("h", job_ids="hash", hash_key=KEY), LoggingPlugin("r", job_ids="redact")
    )
    ledger.charge(A, "job-secret")
    for record in caplog.records:
        assert "job-secret" not in everything(record)
    got = {r.name: r.jobcredits_job_id for r in caplog.records}  # type: ignore[attr-defined]
    assert got == {
        "h": hashlib.blake2b(b"job-secret", digest_size=8, key=KEY).hexdigest(),
        "r": REDACTED,
    }


def test_hashed_accounts_stay_hidden_through_a_formatter(make: Callable[..., Ledger]) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        logging.Formatter("%(levelname)s %(message)s account=%(jobcredits_account)s")
    )
    logger = logging.getLogger("test.privacy.formatter")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        ledger = make(LoggingPlugin(logger, accounts="hash", hash_key=KEY))
        _provoke_every_event(ledger)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().count("jobcredits ") == 6
    assert "alice" not in stream.getvalue()


# -- the message stays parseable ------------------------------------------------------


@pytest.mark.parametrize(
    "account",
    [
        "x outcome=refunded",
        'quote " and \\ backslash',
        "100% sure",
        "-",
        "unicode \u00e9t\u00e9 \u4e2d",
    ],
)
def test_awkward_accounts_are_quoted_and_cannot_forge_fields(
    make: Callable[..., Ledger], records: pytest.LogCaptureFixture, account: str
) -> None:
    ledger = make(LoggingPlugin())
    ledger.charge(account, "job-1")
    (record,) = ours(records)
    message = record.getMessage()
    assert "\n" not in message
    assert "\u2028" not in message
    _, fields = logfmt(message)
    assert fields["outcome"] == "charged"
    assert json.loads(message.split("account=", 1)[1].split(" scope=", 1)[0]) == account
    assert record.jobcredits_account == account  # type: ignore[attr-defined]


# -- rendering: structlog and JSON ---------------------------------------------------


@pytest.fixture
def capture() -> Iterator[Callable[[logging.Formatter], tuple[logging.Logger, io.StringIO]]]:
    """A logger of its own whose one handler renders with a given formatter."""
    attached: list[tuple[logging.Logger, logging.Handler]] = []

    def factory(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        logger = logging.getLogger(f"test.render.{len(attached)}.{id(stream)}")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        attached.append((logger, handler))
        return logger, stream

    yield factory
    for logger, handler in attached:
        logger.removeHandler(handler)


def test_structlog_processor_formatter_renders_the_fields_as_json(
    make: Callable[..., Ledger], capture: Any
) -> None:
    structlog = pytest.importorskip("structlog")
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
    )
    logger, stream = capture(formatter)
    ledger = make(LoggingPlugin(logger, accounts="hash", hash_key=KEY))
    charge = ledger.charge(A, "job-1", tier="pro")
    with pytest.raises(JobCreditsError):
        ledger.charge(A, "job-1")
    charged, rejected = (json.loads(line) for line in stream.getvalue().splitlines())
    digest = hashlib.blake2b(A.encode(), digest_size=8, key=KEY).hexdigest()
    assert charged["event"].startswith(f"jobcredits charge account={digest} ")
    assert charged["level"] == "info"
    assert charged["jobcredits_event"] == "charge"
    assert charged["jobcredits_account"] == digest
    assert charged["jobcredits_job_id"] == "job-1"
    assert charged["jobcredits_charge_id"] == charge.record.charge_id
    assert charged["jobcredits_tier"] == "pro"
    assert charged["jobcredits_backend"] is None
    assert charged["jobcredits_cost"] == 1
    assert rejected["level"] == "warning"
    assert rejected["jobcredits_code"] == "job_in_progress"
    assert rejected["jobcredits_retry_after"] == 60
    assert "alice" not in stream.getvalue()


def test_structlog_extra_adder_can_pick_fields(make: Callable[..., Ledger], capture: Any) -> None:
    structlog = pytest.importorskip("structlog")
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.ExtraAdder(allow=["jobcredits_event", "jobcredits_job_id"])
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
    )
    logger, stream = capture(formatter)
    ledger = make(LoggingPlugin(logger))
    ledger.charge(A, "job-1")
    (line,) = stream.getvalue().splitlines()
    assert set(json.loads(line)) == {"event", "jobcredits_event", "jobcredits_job_id"}


class JsonFormatter(logging.Formatter):
    """What JSON formatters (python-json-logger and the like) do: the message
    plus every non-standard attribute of the record."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"level": record.levelname, "logger": record.name, "message": record.getMessage()}
        doc.update(extra(record))
        return json.dumps(doc)


def test_a_json_formatter_renders_every_field(make: Callable[..., Ledger], capture: Any) -> None:
    logger, stream = capture(JsonFormatter())
    ledger = make(LoggingPlugin(logger, accounts="redact"))
    ledger.charge(A, "job-1")
    ledger.refund(A, "job-1")
    charged, refunded = (json.loads(line) for line in stream.getvalue().splitlines())
    assert charged["jobcredits_event"] == "charge"
    assert charged["jobcredits_account"] == REDACTED
    assert refunded["jobcredits_state"] == "refunded"
    assert refunded["message"].endswith("outcome=refunded")
    # every value is a JSON primitive: no handler has to know our types
    assert all(isinstance(v, (str, int, float, type(None))) for v in refunded.values())


# -- a broken handler never breaks a charge ---------------------------------------------


class RaisingHandler(logging.Handler):
    """A custom handler whose emit raises: nothing in logging catches that."""

    def emit(self, record: logging.LogRecord) -> None:
        raise RuntimeError("log shipper down")


class BrokenStream(io.StringIO):
    def write(self, s: str) -> int:
        raise OSError("disk full")


@pytest.fixture
def handler_on() -> Iterator[Callable[[str, logging.Handler], None]]:
    attached: list[tuple[logging.Logger, logging.Handler]] = []

    def attach(name: str, handler: logging.Handler) -> None:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        attached.append((logger, handler))

    yield attach
    for logger, handler in attached:
        logger.removeHandler(handler)


@pytest.mark.parametrize("raise_exceptions", [True, False])
@pytest.mark.parametrize("where", [DEFAULT_LOGGER, ""], ids=["events-logger", "root-logger"])
def test_a_raising_handler_does_not_break_a_charge(
    make: Callable[..., Ledger],
    handler_on: Callable[[str, logging.Handler], None],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    raise_exceptions: bool,
    where: str,
) -> None:
    # On the root logger the handler also serves the ledger's own logger, so
    # the ledger's isolation of raising hooks would hit it again: the plugin
    # must catch the error itself.
    monkeypatch.setattr(logging, "raiseExceptions", raise_exceptions)
    caplog.set_level(logging.INFO, logger=DEFAULT_LOGGER)
    handler_on(where, RaisingHandler())
    ledger = make(LoggingPlugin())
    charge = ledger.charge(A, "job-1")
    assert charge.charged
    assert ledger.confirm(A, "job-1", charge_id=charge.record.charge_id) is not None
    assert not ledger.charge(A, "job-1").charged
    err = capsys.readouterr().err
    if raise_exceptions:
        assert err.count("a logging handler raised") == 2
        assert "log shipper down" in err
    else:
        assert err == ""


@pytest.mark.parametrize("raise_exceptions", [True, False])
def test_a_standard_handler_failing_goes_through_handle_error(
    make: Callable[..., Ledger],
    handler_on: Callable[[str, logging.Handler], None],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    raise_exceptions: bool,
) -> None:
    # StreamHandler.emit catches its own failure and calls handleError, which
    # prints "--- Logging error ---" while logging.raiseExceptions is true and
    # is silent otherwise; the plugin never sees an exception.
    monkeypatch.setattr(logging, "raiseExceptions", raise_exceptions)
    caplog.set_level(logging.INFO, logger=DEFAULT_LOGGER)
    handler_on(DEFAULT_LOGGER, logging.StreamHandler(BrokenStream()))
    ledger = make(LoggingPlugin())
    assert ledger.charge(A, "job-1").charged
    err = capsys.readouterr().err
    if raise_exceptions:
        assert "--- Logging error ---" in err
        assert "disk full" in err
        assert "a logging handler raised" not in err
    else:
        assert err == ""


# -- arguments ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"accounts": "sha256"}, ValueError),
        ({"job_ids": "hide"}, ValueError),
        ({"hash_key": b"x" * 65}, ValueError),
        ({"hash_key": 42}, TypeError),
        ({"level": "INFO"}, TypeError),
        ({"reject_level": True}, TypeError),
        ({"slow_store_seconds": -1}, ValueError),
        ({"slow_store_seconds": "1"}, ValueError),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        LoggingPlugin(**kwargs)


def test_plugin_passes_check_pending(make: Callable[..., Ledger]) -> None:
    ledger = make(LoggingPlugin(), LoggingPlugin("x", slow_store_seconds=1.0))
    ledger.check_pending()
    assert "accounts='plain'" in repr(LoggingPlugin())
