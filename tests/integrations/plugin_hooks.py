"""A module of hook functions: a module is a plugin too, named by its own
import string ("tests.integrations.plugin_hooks")."""

from __future__ import annotations

from jobcredits_plugin import JobRecord, hookimpl

#: The job ids charged, by every ledger this module is registered on.
CHARGED: list[str] = []


@hookimpl
def on_charge(record: JobRecord) -> None:
    CHARGED.append(record.job_id)
