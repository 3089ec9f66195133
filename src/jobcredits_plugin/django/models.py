"""The tables of :class:`~jobcredits_plugin.django.DjangoStore`, as Django models.

They are the ledger's storage, kept in the project's own database so that
``manage.py migrate`` creates them and the admin can show them; they are not
an API for writing. Every change goes through the ledger (``get_ledger()``,
:class:`~jobcredits_plugin.Ledger`), whose store decides it with the same
rules as every other store, journals it and fires its hooks once: a row
edited by hand or through ``Model.save()`` bypasses all three.

The fields mirror the other stores' columns: the three parts of a job's key
apart (never joined into one string), times as float seconds since the epoch
(the ledger's clock, which tests fake), credits as 64-bit integers.
"""

from __future__ import annotations

from django.db import models  # type: ignore[import-untyped]

from .._validation import ACCOUNT_MAX, CURSOR_NAME_MAX, JOB_ID_MAX, LABEL_MAX, SCOPE_MAX

__all__ = ["Balance", "GrantId", "Job", "JournalCursor", "JournalEntry", "JournalState"]

#: charge ids are 32 hex digits, grant ids' stored form 64 (a sha256).
CHARGE_ID_MAX = 64
#: the longest kind: "charge", "refund", "expire", "reuse", "grant"; states likewise.
KIND_MAX = 16


class Job(models.Model):  # type: ignore[misc]
    """A job's record (:class:`~jobcredits_plugin.JobRecord`), one per live key.

    ``deadline`` is when the record next needs attention (its lease end while
    pending, its expiry once charged): the one indexed time that ``prune``
    scans. A refunded record is deleted at once, so no row is ever
    ``refunded``.
    """

    account = models.CharField(max_length=ACCOUNT_MAX)
    scope = models.CharField(max_length=SCOPE_MAX)
    job_id = models.CharField(max_length=JOB_ID_MAX)
    charge_id = models.CharField(max_length=CHARGE_ID_MAX)
    state = models.CharField(max_length=KIND_MAX)
    cost = models.BigIntegerField()
    tier = models.CharField(max_length=LABEL_MAX, null=True, blank=True)
    backend = models.CharField(max_length=LABEL_MAX, null=True, blank=True)
    charged_at = models.FloatField()
    expires_at = models.FloatField()
    lease_until = models.FloatField()
    uses = models.BigIntegerField()
    debited = models.BigIntegerField()
    deadline = models.FloatField(db_index=True)

    class Meta:
        db_table = "jobcredits_job"
        constraints = [  # noqa: RUF012 - Django reads Meta's attributes
            models.UniqueConstraint(
                fields=["account", "scope", "job_id"], name="jobcredits_job_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.account} / {self.scope} / {self.job_id} ({self.state})"


class Balance(models.Model):  # type: ignore[misc]
    """An account's credits. A row also serves as the account's lock: every
    operation that reads a balance to decide or to journal holds it."""

    account = models.CharField(max_length=ACCOUNT_MAX, unique=True)
    credits = models.BigIntegerField()

    class Meta:
        db_table = "jobcredits_balance"

    def __str__(self) -> str:
        return f"{self.account}: {self.credits}"


class GrantId(models.Model):  # type: ignore[misc]
    """A grant id remembered for ``GRANT_ID_RETENTION`` (see ``Store.grant``)."""

    account = models.CharField(max_length=ACCOUNT_MAX)
    grant_id = models.CharField(max_length=CHARGE_ID_MAX)
    amount = models.BigIntegerField()
    balance = models.BigIntegerField()
    at = models.FloatField(db_index=True)

    class Meta:
        db_table = "jobcredits_grant_id"
        constraints = [  # noqa: RUF012
            models.UniqueConstraint(fields=["account", "grant_id"], name="jobcredits_grant_key"),
        ]


class JournalEntry(models.Model):  # type: ignore[misc]
    """One journal entry (:class:`~jobcredits_plugin.JournalEntry`).

    Written with ``seq`` NULL in the transaction of the change; a reader
    numbers the committed rows under the :class:`JournalState` row's lock, in
    the order of ``id``. So ``seq`` is only ever given to a committed row, and
    a row that commits later gets a higher one: a reader never sees seq
    ``n + 1`` while ``n`` could still appear. (``id`` alone would not do: on a
    database with concurrent writers, ids are drawn before their
    transactions commit, in another order.)
    """

    id = models.BigAutoField(primary_key=True)
    seq = models.BigIntegerField(null=True, blank=True, unique=True)
    kind = models.CharField(max_length=KIND_MAX)
    account = models.CharField(max_length=ACCOUNT_MAX)
    scope = models.CharField(max_length=SCOPE_MAX, null=True, blank=True)
    job_id = models.CharField(max_length=JOB_ID_MAX, null=True, blank=True)
    charge_id = models.CharField(max_length=CHARGE_ID_MAX)
    cost = models.BigIntegerField()
    tier = models.CharField(max_length=LABEL_MAX, null=True, blank=True)
    backend = models.CharField(max_length=LABEL_MAX, null=True, blank=True)
    delta = models.BigIntegerField()
    balance = models.BigIntegerField()
    at = models.FloatField()

    class Meta:
        db_table = "jobcredits_journal_entry"
        verbose_name_plural = "journal entries"

    def __str__(self) -> str:
        return f"#{self.seq} {self.kind} {self.account} {self.delta:+d}"


class JournalCursor(models.Model):  # type: ignore[misc]
    """A named reader's position in the journal (the last ``seq`` it finished)."""

    name = models.CharField(max_length=CURSOR_NAME_MAX, unique=True)
    position = models.BigIntegerField()
    updated_at = models.FloatField()

    class Meta:
        db_table = "jobcredits_journal_cursor"

    def __str__(self) -> str:
        return f"{self.name} at {self.position}"


class JournalState(models.Model):  # type: ignore[misc]
    """One row: the last ``seq`` handed out (kept apart from the journal, so
    that a trim that empties it never lets ``seq`` go back). Its lock also
    serialises the journal's numbering, trims and cursor moves."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_seq = models.BigIntegerField(default=0)

    class Meta:
        db_table = "jobcredits_journal_state"
