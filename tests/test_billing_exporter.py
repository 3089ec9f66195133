"""examples/billing_exporter.py against a fake billing API that deduplicates
on Idempotency-Key: whatever fails on the way (a refused post, an answer lost
after the billing API stored the event, a killed exporter), every charge and
refund is billed exactly once."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from examples.billing_exporter import DeliveryError, export, main, post_entry

from jobcredits_plugin import JournalEntry, Ledger
from jobcredits_plugin.testing import FakeClock


class FakeBilling:
    """A usage-billing endpoint: stores each event once per Idempotency-Key,
    answers a duplicate 200 like the first time. ``fail_next`` refuses the
    next post (503, nothing stored); ``lose_next`` stores it, then drops the
    connection without an answer."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.posts = 0
        self.fail_next = False
        self.lose_next = False
        self.lock = threading.Lock()
        billing = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = self.headers["Idempotency-Key"]
                with billing.lock:
                    billing.posts += 1
                    assert body["idempotency_key"] == key
                    if billing.fail_next:
                        billing.fail_next = False
                        self.send_response(503)
                        self.end_headers()
                        return
                    billing.events.setdefault(key, body)
                    if billing.lose_next:
                        billing.lose_next = False
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/usage"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def billing() -> Iterator[FakeBilling]:
    fake = FakeBilling()
    yield fake
    fake.close()


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with Ledger.from_url(url, balances=True, clock=FakeClock(), lease=5) as ledger:
        ledger.grant("acct", 20)
        for i in range(6):
            c = ledger.charge("acct", f"job-{i}", cost=2)
            if i % 3 == 0:
                ledger.refund("acct", f"job-{i}", charge_id=c.record.charge_id)
            else:
                ledger.confirm("acct", f"job-{i}", charge_id=c.record.charge_id)
    return url


def billed(ledger: Ledger) -> dict[str, JournalEntry]:
    return {e.idempotency_key: e for e in ledger.journal(limit=1000) if e.kind != "grant"}


def test_every_charge_and_refund_is_billed_once(billing: FakeBilling, url: str) -> None:
    with Ledger.from_url(url) as ledger:
        n = export(ledger, "billing", lambda e: post_entry(e, billing.url, None))
        expected = billed(ledger)
        assert n == len(expected) == 8  # 6 charges, 2 refunds
        assert set(billing.events) == set(expected)
        quantities = sum(int(e["quantity"]) for e in billing.events.values())
        assert quantities == 2 * 4  # what the account really paid for
        assert ledger.cursors() == {"billing": max(e.seq for e in ledger.journal(limit=1000))}
        assert export(ledger, "billing", lambda e: post_entry(e, billing.url, None)) == 0


def test_a_refused_post_stops_before_the_entry_and_the_next_run_sends_it(
    billing: FakeBilling, url: str
) -> None:
    with Ledger.from_url(url) as ledger:
        billing.fail_next = True
        with pytest.raises(DeliveryError, match="HTTP 503"):
            export(ledger, "billing", lambda e: post_entry(e, billing.url, None))
        assert billing.events == {}
        assert export(ledger, "billing", lambda e: post_entry(e, billing.url, None)) == 8
        assert set(billing.events) == set(billed(ledger))


def test_a_lost_answer_is_sent_again_and_deduplicated(billing: FakeBilling, url: str) -> None:
    with Ledger.from_url(url) as ledger:
        sent: list[str] = []

        def deliver(entry: JournalEntry) -> None:
            sent.append(entry.idempotency_key)
            if len(sent) == 3:
                billing.lose_next = True
            post_entry(entry, billing.url, None, timeout=5)

        with pytest.raises(DeliveryError):
            export(ledger, "billing", deliver)
        assert len(billing.events) == 3  # the third was stored, its answer lost
        export(ledger, "billing", deliver)
        assert sent[2] == sent[3]  # sent again after the restart...
        assert set(billing.events) == set(billed(ledger))  # ...and billed once
        assert billing.posts == 9


def test_the_command_line(
    billing: FakeBilling, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--url", url, "--billing-url", billing.url]) == 0
    assert "delivered 8 entries" in capsys.readouterr().err
    billing.fail_next = True
    with Ledger.from_url(url) as ledger:
        ledger.charge("acct", "late")
    assert main(["--url", url, "--billing-url", billing.url]) == 1
    assert "will resend" in capsys.readouterr().err
    assert main(["--url", url, "--billing-url", billing.url]) == 0
    assert len(billing.events) == 9
