"""Feed the ledger's journal to a billing API, each entry exactly once.

The ledger writes a journal entry in the same atomic step as every charge and
refund, so nothing is lost when a worker dies between the commit and its
hooks. This exporter reads the journal through a named cursor, posts every
charge and refund to a usage-billing endpoint, and advances the cursor only
after the billing API has accepted the entry. A crash between the post and
the advance makes the next run post the entry again; the request carries the
entry's ``idempotency_key`` in the ``Idempotency-Key`` header (and in the
body), which the billing API uses to drop the duplicate. Delivered at least
once, counted exactly once.

    JOBCREDITS_URL=postgresql://app@db/app \\
    BILLING_URL=https://billing.example.com/v1/usage-events \\
    BILLING_TOKEN=... \\
    python examples/billing_exporter.py --follow

Stdlib only (``urllib``), so it runs wherever the ledger does; swap
:func:`post_entry` for your billing provider's client (Stripe meter events
take the key as ``identifier``, Lago events as ``transaction_id``, OpenMeter's
CloudEvents as ``id``; check your provider's documentation).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable

from jobcredits_plugin import JournalEntry, Ledger

#: The entries that move money. Grants are credits the app sold or gave
#: (billed when sold, by the shop), expiries and reuses move nothing.
BILLED = ("charge", "refund")


class DeliveryError(Exception):
    """The billing API did not accept an entry; it will be sent again."""


def payload(entry: JournalEntry) -> dict[str, object]:
    """The usage event for one entry: a charge bills its cost, a refund
    credits it back (a negative quantity)."""
    return {
        "idempotency_key": entry.idempotency_key,
        "customer": entry.account,
        "event": f"jobcredits.{entry.kind}",
        "quantity": entry.cost if entry.kind == "charge" else -entry.cost,
        "timestamp": entry.at,
        "properties": {
            "scope": entry.scope,
            "job_id": entry.job_id,
            "charge_id": entry.charge_id,
            "tier": entry.tier,
            "backend": entry.backend,
        },
    }


def post_entry(entry: JournalEntry, url: str, token: str | None, timeout: float = 10.0) -> None:
    """POST one entry; return once the billing API accepted it (2xx), also
    when it says it had it already (a duplicate of an earlier attempt)."""
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"the billing URL must be http(s), not {url!r}")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url,
        data=json.dumps(payload(entry)).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Idempotency-Key": entry.idempotency_key,
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            response.read()
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"{entry.idempotency_key}: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DeliveryError(f"{entry.idempotency_key}: {exc}") from exc


def export(
    ledger: Ledger,
    cursor_name: str,
    deliver: Callable[[JournalEntry], None],
    *,
    batch: int = 100,
    follow: bool = False,
    poll: float = 1.0,
    stop: threading.Event | None = None,
) -> int:
    """Deliver every billed entry after the cursor, advancing the cursor past
    each one once it is delivered (entries that are not billed are passed
    over). Returns how many were delivered; a failed delivery raises
    :class:`DeliveryError` with the cursor still before that entry."""
    stop = stop or threading.Event()
    cursor = ledger.cursor(cursor_name)
    delivered = 0
    while not stop.is_set():
        page = cursor.read(limit=batch)
        for entry in page:
            if entry.kind in BILLED:
                deliver(entry)
                delivered += 1
            cursor.advance(entry)
        if len(page) == batch:
            continue
        if not follow:
            break
        stop.wait(poll)
    return delivered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Feed the journal to a billing API.")
    parser.add_argument("--url", default=os.environ.get("JOBCREDITS_URL"))
    parser.add_argument("--billing-url", default=os.environ.get("BILLING_URL"))
    parser.add_argument("--cursor", default="billing")
    parser.add_argument("--follow", action="store_true")
    parser.add_argument("--poll", type=float, default=1.0)
    args = parser.parse_args(argv)
    if not args.url or not args.billing_url:
        parser.error("need --url (or JOBCREDITS_URL) and --billing-url (or BILLING_URL)")
    token = os.environ.get("BILLING_TOKEN")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Ledger.from_url(args.url) as ledger:
        try:
            n = export(
                ledger,
                args.cursor,
                lambda entry: post_entry(entry, args.billing_url, token),
                follow=args.follow,
                poll=args.poll,
                stop=stop,
            )
        except DeliveryError as exc:
            # Exit non-zero: the supervisor (systemd, cron, Kubernetes)
            # restarts us and the entry is sent again.
            print(f"billing_exporter: {exc}; will resend from the cursor", file=sys.stderr)
            return 1
    print(f"billing_exporter: delivered {n} entries", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
