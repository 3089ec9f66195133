"""The account callables the pages name (``myapp.auth.current_account``, ``myapp.auth:account_of``):
the account an ``X-Api-Key`` header belongs to."""

from __future__ import annotations

from typing import Any

KEYS = {"key-ada": "acct-ada"}


def current_account(request: Any) -> str | None:
    return KEYS.get(request.headers.get("X-Api-Key", ""))


account_of = current_account
