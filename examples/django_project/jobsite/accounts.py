"""Who pays: the account behind the request's API key."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def api_key_account(request: HttpRequest) -> str | None:
    """``Authorization: Bearer <key>`` -> the key's account; None (401) otherwise."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return settings.API_KEYS.get(key.strip())
