"""A torn append-only file never applies half a script (issue 13).

Redis writes each script's effects to its append-only file as one
``MULTI`` ... ``EXEC`` block. A ``SIGKILL`` (or a power loss) in the middle of
that write leaves the first commands of a block on disk without its ``EXEC``.
Redis 7.0 with its default ``aof-load-truncated yes`` cuts only the torn
command and keeps the block's ``MULTI`` and first commands; the writes after
the restart are appended behind them, and the next load runs the stranded
commands inside the following transaction. The fault suite met this: a
refund's ``INCRBY`` of the balance applied without its journal entry (books
off by the refund), and once a charge's record without its ``charge`` entry.

The settings docs/redis.md gives, ``aof-load-truncated no`` and
``redis-check-aof --fix`` before the restart, keep scripts whole. These tests
tear a real charge's block at a known place and check the ledger's books over
two restarts: the restart that repairs the file, and the one after, where the
default setting would run the stranded half.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from jobcredits_plugin import Ledger
from tests.system._faults import REDIS_CHECK_AOF, REDIS_SERVER, RedisServer, _TornAppendOnlyFile

redis = pytest.importorskip("redis", reason="the redis extra is not installed")

from jobcredits_plugin.stores import RedisStore  # noqa: E402

pytestmark = pytest.mark.slow

MULTI = b"*1\r\n$5\r\nMULTI\r\n"


@pytest.fixture
def server(tmp_path: Path) -> RedisServer:
    if REDIS_SERVER is None or REDIS_CHECK_AOF is None:
        message = "redis-server and redis-check-aof are needed"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)  # CI has Redis: a missing tool is a broken setup
        pytest.skip(message)
    return RedisServer(tmp_path / "redis")


def _command_ends(data: bytes, pos: int) -> list[int]:
    """Where each RESP command from offset ``pos`` on ends."""
    ends = []
    while pos < len(data):
        line_end = data.index(b"\r\n", pos)
        count, pos = int(data[pos + 1 : line_end]), line_end + 2
        for _ in range(count):
            size_end = data.index(b"\r\n", pos)
            pos = size_end + 2 + int(data[pos + 1 : size_end]) + 2
        ends.append(pos)
    return ends


def _tear_last_block(server: RedisServer, keep: int) -> bytes:
    """Cut the append-only file inside its last MULTI block: ``keep`` whole
    commands after the MULTI, then half of the next one. Returns the commands
    kept (to show what would be stranded)."""
    incr = sorted((server.directory / "appendonlydir").glob("*.incr.aof"))[-1]
    data = incr.read_bytes()
    multi = data.rindex(MULTI)
    ends = _command_ends(data, multi + len(MULTI))
    assert len(ends) > keep + 1, "the block has too few commands to tear"
    torn = ends[keep - 1] + (ends[keep] - ends[keep - 1]) // 2
    incr.write_bytes(data[:torn])
    return data[multi : ends[keep - 1]]


def _ledger(server: RedisServer, prefix: str) -> Ledger:
    store = RedisStore.from_url(server.url, prefix=prefix, retries=0)
    return Ledger(store, balances=True)


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_a_torn_charge_is_dropped_whole_over_two_restarts(server: RedisServer, keep: int) -> None:
    prefix = f"jcaof:{uuid.uuid4().hex[:8]}"
    server.start()
    try:
        ledger = _ledger(server, prefix)
        ledger.grant("acct", 10, grant_id="g-1")
        ledger.charge("acct", "job-1")  # whole: acknowledged before the kill
        ledger.confirm("acct", "job-1")
        ledger.charge("acct", "job-2")  # its block is torn below
        ledger.close()
        server.kill()
        stranded = _tear_last_block(server, keep)
        assert stranded.startswith(MULTI)
        assert len(_command_ends(stranded, len(MULTI))) == keep

        # The documented setting: the server refuses the torn tail ...
        with pytest.raises(_TornAppendOnlyFile):
            server.start(repair=False)
        # ... and redis-check-aof --fix cuts it before the unfinished MULTI.
        server.start()
        assert server.repairs == 1
        _check_books(server, prefix, granted=10, kinds=["grant", "charge"])

        # A write behind the repaired tail, then a restart: where the default
        # setting runs the stranded half of job-2's charge with this grant.
        ledger = _ledger(server, prefix)
        ledger.grant("acct", 5, grant_id="g-2")
        ledger.close()
        server.kill()
        server.start()
        assert server.repairs == 1, "the second start found the file whole"
        _check_books(server, prefix, granted=15, kinds=["grant", "charge", "grant"])
    finally:
        server.kill()


def _check_books(server: RedisServer, prefix: str, *, granted: int, kinds: list[str]) -> None:
    """job-1 charged once (1 credit), job-2 not at all, and the journal
    explains the balance entry by entry."""
    ledger = _ledger(server, prefix)
    try:
        assert ledger.lookup("acct", "job-2") is None
        assert ledger.lookup("acct", "job-1") is not None
        assert ledger.balance("acct") == granted - 1
        entries = ledger.journal(limit=100)
        assert [e.kind for e in entries] == kinds
        assert sum(e.delta for e in entries) == granted - 1
    finally:
        ledger.close()
