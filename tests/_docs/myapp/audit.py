"""A hook plugin class with a no-argument constructor, as ``"myapp.audit:AuditTrail"``."""

from __future__ import annotations

from jobcredits_plugin import JobRecord, hookimpl


class AuditTrail:
    def __init__(self) -> None:
        self.charged: list[str] = []

    @hookimpl
    def on_charge(self, record: JobRecord) -> None:
        self.charged.append(record.job_id)
