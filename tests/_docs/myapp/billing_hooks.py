"""A module of ``@hookimpl`` functions, as ``"myapp.billing_hooks"``."""

from __future__ import annotations

from jobcredits_plugin import JobRecord, hookimpl

REFUNDED: list[str] = []


@hookimpl
def on_refund(record: JobRecord) -> None:
    REFUNDED.append(record.job_id)
