"""Entry points from a real installed distribution: tests/plugin_dist.

That tiny distribution (``jobcredits-test-plugin``) declares, as a third-party
plugin package would::

    [project.entry-points.jobcredits_plugin]
    counter = "jobcredits_test_plugin:plugin"

tox installs it into every test environment. These tests prove that
``Ledger(entry_points=True)`` and each adapter's setting for it load that
plugin, that its hook fires on a charge, and that nothing loads it unasked.
Without the distribution they skip, saying how to install it, except on CI
(``CI=true``), where they fail: CI must never pass them by not running them.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import os
from collections.abc import Iterator
from typing import Any

import pytest

from jobcredits_plugin import Ledger, header
from jobcredits_plugin.testing import make_ledger

DIST = "jobcredits-test-plugin"
GROUP = "jobcredits_plugin"
#: The entry point's object, by import string.
DIST_PLUGIN = "jobcredits_test_plugin:plugin"


@pytest.fixture
def counter() -> Iterator[Any]:
    """The plugin object the installed distribution's entry point names,
    with its counts reset (one object serves every ledger that loads it)."""
    try:
        importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        message = (
            f"the test plugin distribution {DIST!r} is not installed: run "
            "`python -m pip install tests/plugin_dist` (tox installs it) to run the "
            "entry point tests"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + " (CI=true: the entry point tests must run)")
        pytest.skip(message)
    plugin = importlib.import_module("jobcredits_test_plugin").plugin
    plugin.reset()
    yield plugin
    plugin.reset()


def test_the_distribution_declares_its_plugin(counter: Any) -> None:
    """The installed metadata has the entry point, in the group the ledger reads."""
    eps = [
        (ep.name, ep.value)
        for ep in importlib.metadata.distribution(DIST).entry_points
        if ep.group == GROUP
    ]
    assert eps == [("counter", "jobcredits_test_plugin:plugin")]


def test_entry_points_true_loads_the_installed_plugin(counter: Any) -> None:
    """Ledger(entry_points=True) registers the plugin under its entry point
    name, and its on_charge fires on a charge (once: a follow-up is a reuse)."""
    with Ledger(entry_points=True) as ledger:
        assert ledger.plugin_manager.get_plugin("counter") is counter
        ledger.charge("acct", "job-1")
        ledger.confirm("acct", "job-1")
        ledger.charge("acct", "job-1")
    assert counter.charged == [("acct", "default", "job-1")]


def test_the_refund_hook_fires_too(counter: Any) -> None:
    with Ledger.from_url("memory://", entry_points=True) as ledger:
        ledger.charge("acct", "job-1", scope="summarize")
        assert ledger.refund("acct", "job-1", scope="summarize")
    assert counter.refunded == [("acct", "summarize", "job-1")]


def test_nothing_loads_the_installed_plugin_unasked(counter: Any) -> None:
    """Installed code sees no billing event unless the app asks for it."""
    for ledger in (Ledger(), Ledger.from_url("memory://"), make_ledger()):
        with ledger:
            assert ledger.plugin_manager.get_plugin("counter") is None
            assert not ledger.plugin_manager.is_registered(counter)
            ledger.charge("acct", "job-1")
    assert counter.charges == 0


def test_each_ledger_registers_the_plugin_once(counter: Any) -> None:
    """Two ledgers each load the one plugin object: each charge is counted once."""
    with Ledger(entry_points=True) as one, Ledger(entry_points=True) as two:
        one.charge("acct", "job-1")
        two.charge("acct", "job-2")
    assert counter.charges == 2


# -- the adapters' settings ------------------------------------------------------------------


def test_flask_entry_points_setting(counter: Any) -> None:
    """JOBCREDITS_ENTRY_POINTS=True loads it; a charged request fires its hook.
    Listed in JOBCREDITS_PLUGINS as well, it is still registered once."""
    flask = pytest.importorskip("flask")
    from jobcredits_plugin.flask import JobCredits, charges_credit, get_ledger

    def make_app(**config: Any) -> Any:
        app = flask.Flask(__name__)
        app.testing = True  # on memory://: no InProcessStoreWarning in testing mode
        app.config.update(JOBCREDITS_ACCOUNT=header("X-Account"), **config)
        JobCredits(app)

        @app.post("/run")
        @charges_credit(scope="summarize")
        def run() -> Any:
            return {"ok": True}

        return app

    plain = make_app()
    assert get_ledger(plain).plugin_manager.get_plugin("counter") is None
    for n, config in enumerate(
        [
            {"JOBCREDITS_ENTRY_POINTS": True},
            {"JOBCREDITS_ENTRY_POINTS": "true", "JOBCREDITS_PLUGINS": [DIST_PLUGIN]},
        ]
    ):
        app = make_app(**config)
        assert get_ledger(app).plugin_manager.is_registered(counter)
        r = app.test_client().post("/run", headers={"X-Account": "acct", "X-Job-Id": f"j{n}"})
        assert r.status_code == 200
    plain.test_client().post("/run", headers={"X-Account": "acct", "X-Job-Id": "unseen"})
    assert counter.charged == [("acct", "summarize", "j0"), ("acct", "summarize", "j1")]


def test_django_entry_points_setting(counter: Any) -> None:
    """JOBCREDITS["ENTRY_POINTS"] = True: the ledger built from the settings
    (what get_ledger() builds) loads it; the default does not."""
    pytest.importorskip("django")
    from jobcredits_plugin.django import _conf

    configs = {}
    for name, raw in {
        "plain": {},
        "entry_points": {"ENTRY_POINTS": True},
        "both": {"ENTRY_POINTS": True, "PLUGINS": [DIST_PLUGIN]},
    }.items():
        config, problems = _conf.read(raw)
        assert problems == []
        assert config is not None
        configs[name] = config
    for name, config in configs.items():
        with _conf.build_ledger(config) as ledger:
            ledger.charge("acct", name)
    assert counter.charged == [("acct", "default", "entry_points"), ("acct", "default", "both")]


def test_fastapi_entry_points_argument(counter: Any) -> None:
    """JobCredits(ledger, entry_points=True) loads it onto the ledger it is
    handed (once, whatever the ledger had already); a charged request fires
    its hook."""
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from fastapi import FastAPI

    from jobcredits_plugin.fastapi import JobCredits, charges_credit

    def serve(ledger: Ledger, **options: Any) -> Any:
        app = FastAPI()
        JobCredits(ledger, account=header("X-Account"), **options).install(app)

        @app.post("/run")
        @charges_credit(scope="summarize")
        async def run() -> dict[str, bool]:
            return {"ok": True}

        return app

    async def call(app: Any, job: str) -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            r = await c.post("/run", headers={"X-Account": "acct", "X-Job-Id": job})
            assert r.status_code == 200, r.text

    plain = make_ledger()
    asyncio.run(call(serve(plain), "unseen"))
    assert plain.plugin_manager.get_plugin("counter") is None
    ledgers = {
        "asked": make_ledger(),
        "loaded-already": make_ledger(entry_points=True),
        "listed-already": make_ledger(plugins=[counter]),
    }
    for job, ledger in ledgers.items():
        asyncio.run(call(serve(ledger, entry_points=True), job))
        assert sum(p is counter for p in ledger.plugin_manager.get_plugins()) == 1
    assert [job for _, _, job in counter.charged] == list(ledgers)
