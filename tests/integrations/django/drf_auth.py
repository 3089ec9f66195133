"""DRF authentication for the tests, in a module of its own: DRF imports it
while ``rest_framework.views`` is being imported, so it cannot live in
views.py (which imports ``rest_framework.views``)."""

from __future__ import annotations

from typing import Any

from rest_framework.authentication import BaseAuthentication


class FakeUser:
    """Just enough of a Django user for the default account."""

    def __init__(self, pk: int | None) -> None:
        self.pk = pk
        self.is_authenticated = pk is not None


class TokenAuthentication(BaseAuthentication):
    """``Authorization: Token user-<pk>`` authenticates user <pk>."""

    def authenticate(self, request: Any) -> tuple[FakeUser, str] | None:
        auth = request.META.get("HTTP_AUTHORIZATION", "")
        if not auth.startswith("Token user-"):
            return None
        return FakeUser(int(auth.removeprefix("Token user-"))), auth
