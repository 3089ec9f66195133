"""JobCredits(ledger, plugins=..., entry_points=...): plugins named where the
FastAPI adapter is set up, registered on the ledger it is handed. (Entry
points from a real installed distribution: tests/test_entry_points.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from jobcredits_plugin import ConfigurationError

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi import FastAPI  # noqa: E402

from jobcredits_plugin import Ledger, header  # noqa: E402
from jobcredits_plugin.fastapi import JobCredits, charges_credit  # noqa: E402
from jobcredits_plugin.testing import RecordingPlugin, make_ledger  # noqa: E402

from .. import plugin_hooks, plugin_targets  # noqa: E402
from ..plugin_targets import EVENTS, Counting  # noqa: E402

TARGETS = "tests.integrations.plugin_targets"


@pytest.fixture(autouse=True)
def _fresh_targets() -> Iterator[None]:
    plugin_targets.reset()
    plugin_hooks.CHARGED.clear()
    yield
    plugin_targets.reset()


def serve(ledger: Ledger, **options: Any) -> FastAPI:
    app = FastAPI()
    JobCredits(ledger, account=header("X-Account"), **options).install(app)

    @app.post("/run")
    @charges_credit(scope="summarize")
    async def run() -> dict[str, Any]:
        return {"ok": True}

    return app


def charge(app: FastAPI, *jobs: str) -> None:
    async def go() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            for job in jobs:
                r = await c.post("/run", headers={"X-Account": "acct", "X-Job-Id": job})
                assert r.status_code == 200, r.text

    asyncio.run(go())


def test_no_plugins_by_default() -> None:
    ledger = make_ledger()
    serve(ledger)
    assert ledger.plugin_manager.get_plugins() == set()


def test_a_plugin_object_receives_the_charge() -> None:
    """An object in plugins= is registered on the ledger and sees the charged
    request's on_charge, then the follow-up's on_reuse."""
    plugin = RecordingPlugin()
    app = serve(make_ledger(), plugins=[plugin])
    charge(app, "job-1", "job-1")
    assert plugin.kinds() == ["charge", "reuse"]


@pytest.mark.parametrize(
    "spec", [f"{TARGETS}:EVENTS", f"{TARGETS}.EVENTS", f"{TARGETS}:Namespace.PLUGIN"]
)
def test_an_import_string_names_a_plugin_object(spec: str) -> None:
    """Both separators, and a dotted attribute after the colon."""
    app = serve(make_ledger(), plugins=[spec])
    charge(app, "job-1")
    assert [*EVENTS.kinds(), *plugin_targets.Namespace.PLUGIN.kinds()] == ["charge"]


def test_a_module_of_hook_functions_is_a_plugin() -> None:
    app = serve(make_ledger(), plugins=["tests.integrations.plugin_hooks"])
    charge(app, "job-1")
    assert plugin_hooks.CHARGED == ["job-1"]


@pytest.mark.parametrize("spec", [f"{TARGETS}:Counting", f"{TARGETS}.Counting", Counting])
def test_a_class_is_instantiated(spec: Any) -> None:
    """A class, named or given, is instantiated with no arguments."""
    app = serve(make_ledger(), plugins=[spec])
    charge(app, "job-1")
    assert [c.charged for c in Counting.instances] == [["job-1"]]


def test_nothing_is_registered_twice() -> None:
    """The ledger may have the plugins already (Ledger(plugins=...)), and one
    ledger may be set up on several apps: an object already registered is
    skipped, and so is a class of which the ledger has an instance."""
    ledger = make_ledger(plugins=[EVENTS])
    for _ in range(2):
        serve(ledger, plugins=[EVENTS, f"{TARGETS}:EVENTS", Counting, f"{TARGETS}:Counting"])
    assert len(Counting.instances) == 1
    assert ledger.plugin_manager.get_plugins() == {EVENTS, Counting.instances[0]}
    charge(serve(ledger), "job-1")
    assert EVENTS.kinds() == ["charge"]
    assert Counting.instances[0].charged == ["job-1"]


@pytest.mark.parametrize(
    ("plugins", "fragment"),
    [
        (f"{TARGETS}:EVENTS", "plugins must be a list of plugins or import strings, not str"),
        ([f"{TARGETS}:NoSuchThing"], "has no attribute 'NoSuchThing'"),
        (["no_such_module.plugin"], "No module named 'no_such_module'"),
        ([f"{TARGETS}:not_a_plugin"], "implements no jobcredits hook"),
        ([None], "None (NoneType) is not a plugin"),
        ([f"{TARGETS}:NeedsArguments"], "constructor needs arguments"),
        ([f"{TARGETS}:Exploding"], "Exploding() failed"),
        ([f"{TARGETS}:BadSignature"], "does not register"),
    ],
)
def test_a_bad_entry_fails_at_setup_and_changes_nothing(plugins: Any, fragment: str) -> None:
    """A mistake raises ConfigurationError from JobCredits(...), naming the entry;
    the plugins listed before it are not left registered."""
    ledger = make_ledger()
    with pytest.raises(ConfigurationError, match="plugins") as info:
        JobCredits(
            ledger, plugins=[RecordingPlugin(), *plugins] if isinstance(plugins, list) else plugins
        )
    assert fragment in str(info.value)
    assert ledger.plugin_manager.get_plugins() == set()


def test_entry_points_must_be_a_bool() -> None:
    with pytest.raises(ConfigurationError, match="entry_points must be True or False"):
        JobCredits(make_ledger(), entry_points="yes")  # type: ignore[arg-type]


def test_entry_points_load_the_group_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Ledger] = []

    def fake_loader(ledger: Ledger, *, key: str) -> list[object]:
        seen.append(ledger)
        return []

    monkeypatch.setattr("jobcredits_plugin.fastapi.load_entry_points", fake_loader)
    ledger = make_ledger()
    JobCredits(make_ledger())
    JobCredits(ledger, entry_points=True)
    assert seen == [ledger]


def test_a_failing_entry_point_takes_back_the_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_loader(ledger: Ledger, *, key: str) -> list[object]:
        raise ConfigurationError(f"{key}: entry point 'x' does not load: boom")

    monkeypatch.setattr("jobcredits_plugin.fastapi.load_entry_points", failing_loader)
    ledger = make_ledger()
    with pytest.raises(ConfigurationError, match="entry_points: entry point 'x'"):
        JobCredits(ledger, plugins=[EVENTS], entry_points=True)
    assert ledger.plugin_manager.get_plugins() == set()
