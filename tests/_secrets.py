"""A canary secret and the checks that it never shows where it must not.

Tests put :data:`CANARY` wherever a credential can sit in a store URL (the
userinfo password, libpq's ``password``/``sslpassword``/``passfile``, a
Redis ``?password=``) and then assert that nothing a client or an operator's
terminal sees contains it, nor the internals a 5xx body must not name.
"""

from __future__ import annotations

from collections.abc import Iterable

#: A password no real message contains by chance.
CANARY = "Hunter2Canary7q"
#: The other parts of an unreachable PostgreSQL server's URL that a client
#: must not learn from a 5xx body (the host and port are the URL's).
USER = "jobuser"
DATABASE = "jobsdb"
HOST = "127.0.0.1"
PORT = "1"

#: An unreachable PostgreSQL server (nothing listens on port 1), with the
#: canary in every place libpq takes a secret from.
POSTGRES_URL = (
    f"postgresql://{USER}:{CANARY}@{HOST}:{PORT}/{DATABASE}"
    f"?password={CANARY}&sslpassword={CANARY}&connect_timeout=2"
)
#: An unreachable Redis server, the canary as the userinfo password.
REDIS_URL = f"redis://{USER}:{CANARY}@{HOST}:{PORT}/0"
#: What a client may never see in a 5xx answer (on top of the canary).
INTERNALS = (CANARY, USER, DATABASE, f"{HOST}", "postgresql://", "5432", "port 1", "psycopg")


def assert_no_secret(*texts: object) -> None:
    """None of ``texts`` (str or bytes or anything printable) holds the canary."""
    for text in texts:
        shown = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        assert CANARY not in shown, f"the secret leaked: {shown!r}"


def assert_nothing_internal(*texts: object, internals: Iterable[str] = INTERNALS) -> None:
    """None of ``texts`` names the canary nor any part of the store's address."""
    for text in texts:
        shown = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        for part in internals:
            assert part not in shown, f"{part!r} leaked into {shown!r}"
