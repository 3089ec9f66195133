"""The ledger in the Django admin: jobs, balances, the journal and its cursors.

Every list is read-only: a row changed by hand would bypass the rules, the
journal and the hooks that every change of the ledger goes through. The one
write is the balances' "Grant credits" action, which calls
:meth:`Ledger.grant <jobcredits_plugin.Ledger.grant>` on the project's ledger
(``get_ledger()``), so that the grant is journaled and counted like any
other; a grant id drawn when the form is shown makes a form sent twice (a
reload, a double click) credit once.

The lists read the database of the ledger's own alias (``django://ALIAS``),
which need not be ``default``. With another kind of store in
``JOBCREDITS["URL"]``, these tables are unused and the action refuses.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from typing import Any

from django import forms  # type: ignore[import-untyped]
from django.contrib import admin, messages  # type: ignore[import-untyped]
from django.contrib.admin import helpers  # type: ignore[import-untyped]
from django.template.response import TemplateResponse  # type: ignore[import-untyped]

from .._errors import JobCreditsError
from .._validation import MAX_CREDITS
from ._conf import get_ledger
from ._store import DjangoStore
from .models import Balance, Job, JournalCursor, JournalEntry

__all__ = [
    "BalanceAdmin",
    "GrantForm",
    "JobAdmin",
    "JournalCursorAdmin",
    "JournalEntryAdmin",
    "grant_credits",
]


def _ledger_alias() -> str | None:
    """The database alias of the project's DjangoStore, or None when the
    settings name another kind of store."""
    store = get_ledger().store
    return store.using if isinstance(store, DjangoStore) else None


def _time(field: str, description: str) -> Any:
    """A list column showing a float time (seconds since the epoch) as UTC."""

    def show(self: Any, obj: Any) -> str:
        when = datetime.datetime.fromtimestamp(getattr(obj, field), tz=datetime.timezone.utc)
        return when.isoformat(timespec="seconds").replace("+00:00", "Z")

    return admin.display(description=description, ordering=field)(show)


class _ReadOnly(admin.ModelAdmin):  # type: ignore[misc]
    """A list of the ledger's rows: viewed, never added, edited or deleted here."""

    def get_queryset(self, request: Any) -> Any:
        queryset = super().get_queryset(request)
        alias = _ledger_alias()
        return queryset if alias is None else queryset.using(alias)

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


class JobAdmin(_ReadOnly):
    """The jobs: what each account is being charged for, pending or charged."""

    list_display = (
        "job_id",
        "account",
        "scope",
        "state",
        "cost",
        "uses",
        "charged",
        "expires",
        "tier",
        "backend",
    )
    list_filter = ("state", "scope", "account")
    search_fields = ("job_id",)
    ordering = ("-charged_at",)
    charged = _time("charged_at", "charged at")
    expires = _time("expires_at", "expires at")


class GrantForm(forms.Form):  # type: ignore[misc]
    """What to grant each selected account."""

    amount = forms.IntegerField(
        min_value=-MAX_CREDITS,
        max_value=MAX_CREDITS,
        help_text="Credits to add to each selected account (negative: take away, never "
        "below zero).",
    )
    # Drawn when the form is shown: the same form sent twice grants once.
    grant_id = forms.CharField(widget=forms.HiddenInput, max_length=128)


def grant_credits(modeladmin: BalanceAdmin, request: Any, queryset: Any) -> Any:
    """The "Grant credits" action: a form, then one ledger grant per account."""
    accounts = list(queryset.order_by("account").values_list("account", flat=True))
    if "apply" in request.POST:
        form = GrantForm(request.POST)
        if form.is_valid():
            modeladmin.grant(request, accounts, form.cleaned_data)
            return None  # back to the list
    else:
        form = GrantForm(initial={"grant_id": f"admin-{uuid.uuid4().hex}"})
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": "Grant credits",
        "opts": modeladmin.model._meta,
        "form": form,
        "accounts": accounts,
        "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        "action": "grant_credits",
    }
    return TemplateResponse(request, "jobcredits/admin/grant_credits.html", context)


class BalanceAdmin(_ReadOnly):
    """Balances, and the action that grants credits through the ledger."""

    list_display = ("account", "credits")
    search_fields = ("account",)
    ordering = ("account",)
    actions = (
        admin.action(description="Grant credits (through the ledger)", permissions=["grant"])(
            grant_credits
        ),
    )

    def has_grant_permission(self, request: Any) -> bool:
        """Granting changes balances: it takes the change permission of balances."""
        return bool(request.user.has_perm("jobcredits.change_balance"))

    def grant(self, request: Any, accounts: list[str], data: dict[str, Any]) -> None:
        ledger = get_ledger()
        if _ledger_alias() is None:
            self.message_user(
                request,
                "JOBCREDITS['URL'] does not name a django:// store: these balances are not "
                "the ledger's, nothing was granted",
                messages.ERROR,
            )
            return
        report: Callable[..., None] = self.message_user
        for account in accounts:
            try:
                after = ledger.grant(account, data["amount"], grant_id=data["grant_id"])
            except JobCreditsError as exc:
                report(request, f"{account}: nothing granted: {exc}", messages.ERROR)
            else:
                report(request, f"{account}: balance {after}", messages.SUCCESS)


class JournalEntryAdmin(_ReadOnly):
    """The journal: one entry per change, in order (entries not yet numbered
    by a reader show no seq)."""

    list_display = (
        "seq",
        "kind",
        "account",
        "scope",
        "job_id",
        "cost",
        "delta",
        "balance",
        "when",
    )
    list_filter = ("kind",)
    search_fields = ("account", "job_id", "charge_id")
    ordering = ("-id",)
    when = _time("at", "at")


class JournalCursorAdmin(_ReadOnly):
    """The journal's readers and how far each has read."""

    list_display = ("name", "position", "updated")
    ordering = ("name",)
    updated = _time("updated_at", "updated at")


admin.site.register(Job, JobAdmin)
admin.site.register(Balance, BalanceAdmin)
admin.site.register(JournalEntry, JournalEntryAdmin)
admin.site.register(JournalCursor, JournalCursorAdmin)
