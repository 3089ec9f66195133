"""The hypothesis model of DESIGN §2 (tests/test_model.py) run on RedisStore.

The Lua scripts re-implement the rules on the server, so they get the same
random sequences of charges, confirms, refunds, clock steps and prunes as the
pure Python stores. Each example gets a fresh key prefix, deleted afterwards.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from jobcredits_plugin.stores import BaseStore
from tests.stores.conftest import REDIS_DEFAULT, REDIS_URL_ENV, _redis_cleanup, _server_url
from tests.test_model import LedgerMachine

pytest.importorskip("redis", reason="the redis extra is not installed")


class RedisLedgerMachine(LedgerMachine):
    def make_store(self, settle_batch: int) -> BaseStore:
        from jobcredits_plugin.stores import RedisStore

        url = _server_url(REDIS_URL_ENV, REDIS_DEFAULT, "Redis")
        # A small prune batch so that pruning crosses script calls.
        self.redis_store = RedisStore.from_url(
            url, prefix=f"jcmodel:{uuid.uuid4().hex[:12]}", prune_batch=2
        )
        return self.redis_store

    def teardown(self) -> None:
        super().teardown()
        store: Any = getattr(self, "redis_store", None)
        if store is not None:
            store.close()
            _redis_cleanup(store)


TestLedgerOnRedis = RedisLedgerMachine.TestCase
TestLedgerOnRedis.settings = settings(
    max_examples=30,
    deadline=None,
    database=None,
    stateful_step_count=50,
    suppress_health_check=[HealthCheck.too_slow],
)
