"""JOBCREDITS_PLUGINS and JOBCREDITS_ENTRY_POINTS: the plugins of the ledger the
Flask extension builds. (Entry points from a real installed distribution:
tests/test_entry_points.py.)"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobcredits_plugin import ConfigurationError

flask = pytest.importorskip("flask")

from jobcredits_plugin import header  # noqa: E402
from jobcredits_plugin.flask import JobCredits, charges_credit, get_ledger  # noqa: E402
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


def make_app(**config: Any) -> flask.Flask:
    """An app whose one view charges; the account comes from X-Account."""
    app = flask.Flask(__name__)
    app.testing = True  # on memory://: no InProcessStoreWarning in testing mode
    app.config.update(JOBCREDITS_ACCOUNT=header("X-Account"), **config)
    JobCredits(app)

    @app.post("/run")
    @charges_credit(scope="summarize")
    def run() -> Any:
        return {"ok": True}

    return app


def charge(app: flask.Flask, job: str = "job-1") -> Any:
    response = app.test_client().post("/run", headers={"X-Account": "acct", "X-Job-Id": job})
    assert response.status_code == 200
    return response


def test_plugins_default_to_none() -> None:
    """Without the keys the ledger has no plugin and loads no entry point."""
    app = make_app()
    assert app.config["JOBCREDITS_PLUGINS"] == ()
    assert app.config["JOBCREDITS_ENTRY_POINTS"] is False
    assert get_ledger(app).plugin_manager.get_plugins() == set()


def test_a_plugin_object_receives_the_charge() -> None:
    """An object in JOBCREDITS_PLUGINS is registered as it is and sees the
    charged request's on_charge (and the follow-up's on_reuse)."""
    plugin = RecordingPlugin()
    app = make_app(JOBCREDITS_PLUGINS=[plugin])
    charge(app)
    charge(app)
    assert plugin.kinds() == ["charge", "reuse"]
    assert plugin.of("charge")[0].scope == "summarize"


@pytest.mark.parametrize("spec", [f"{TARGETS}:EVENTS", f"{TARGETS}.EVENTS"])
def test_an_import_string_names_a_plugin_object(spec: str) -> None:
    """Both separators: "package.module:attribute" and "package.module.attribute"."""
    app = make_app(JOBCREDITS_PLUGINS=[spec])
    charge(app)
    assert EVENTS.kinds() == ["charge"]
    assert get_ledger(app).plugin_manager.is_registered(EVENTS)


def test_an_import_string_may_name_a_dotted_attribute_and_a_module() -> None:
    """After the colon the attribute may be dotted; a module of hook
    functions is a plugin too."""
    app = make_app(
        JOBCREDITS_PLUGINS=[f"{TARGETS}:Namespace.PLUGIN", "tests.integrations.plugin_hooks"]
    )
    charge(app)
    assert plugin_targets.Namespace.PLUGIN.kinds() == ["charge"]
    assert plugin_hooks.CHARGED == ["job-1"]


@pytest.mark.parametrize("spec", [f"{TARGETS}:Counting", f"{TARGETS}.Counting", Counting])
def test_a_class_is_instantiated_once_per_app(spec: Any) -> None:
    """A class (named or given) is instantiated with no arguments, once for
    each app's ledger: two apps never share its state."""
    one, two = make_app(JOBCREDITS_PLUGINS=[spec]), make_app(JOBCREDITS_PLUGINS=[spec])
    assert len(Counting.instances) == 2
    charge(one, "job-1")
    charge(two, "job-2")
    assert [c.charged for c in Counting.instances] == [["job-1"], ["job-2"]]


def test_the_same_object_listed_twice_is_registered_once() -> None:
    """pluggy refuses to register an object twice; the extension registers it once."""
    app = make_app(JOBCREDITS_PLUGINS=[EVENTS, f"{TARGETS}:EVENTS"])
    charge(app)
    assert EVENTS.kinds() == ["charge"]


def test_plugins_from_a_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """from_prefixed_env() reads JSON: a list of import strings, and "true"."""
    monkeypatch.setenv("FLASK_JOBCREDITS_PLUGINS", f'["{TARGETS}:EVENTS"]')
    monkeypatch.setenv("FLASK_JOBCREDITS_ENTRY_POINTS", "false")
    app = flask.Flask(__name__)
    app.config.from_prefixed_env()
    app.config["JOBCREDITS_ACCOUNT"] = header("X-Account")
    app.testing = True
    JobCredits(app)
    assert get_ledger(app).plugin_manager.is_registered(EVENTS)


@pytest.mark.parametrize(
    ("plugins", "fragment"),
    [
        (f"{TARGETS}:EVENTS", "must be a list of plugins or import strings, not str"),
        ([f"{TARGETS}:NoSuchThing"], "'tests.integrations.plugin_targets:NoSuchThing' does not"),
        (["no_such_module:plugin"], "No module named 'no_such_module'"),
        (["no_such_module.plugin"], "No module named 'no_such_module'"),
        ([f"{TARGETS}.no_such_thing"], "has no attribute 'no_such_thing'"),
        ([":plugin"], "is not 'package.module:attribute'"),
        ([f"{TARGETS}:not_a_plugin"], "implements no jobcredits hook"),
        ([42], "42 (int) is not a plugin"),
        ([f"{TARGETS}:NeedsArguments"], "constructor needs arguments; name an instance"),
        ([f"{TARGETS}:Exploding"], "Exploding() failed: no metrics backend"),
        ([f"{TARGETS}:BadSignature"], "does not register"),
    ],
)
def test_a_bad_entry_fails_init_app_naming_it(plugins: Any, fragment: str, tmp_path: Path) -> None:
    """A mistake in JOBCREDITS_PLUGINS raises ConfigurationError (a ValueError) in
    init_app, naming the key and the entry; no store is left behind."""
    db = tmp_path / "jobs.db"
    app = flask.Flask(__name__)
    app.config.update(
        JOBCREDITS_URL=f"sqlite:///{db}",
        JOBCREDITS_PLUGINS=plugins,
        JOBCREDITS_ACCOUNT=header("X-Account"),
    )
    with pytest.raises(ConfigurationError, match="JOBCREDITS_PLUGINS") as info:
        JobCredits(app)
    assert fragment in str(info.value)
    assert "jobcredits" not in app.extensions
    if fragment != "does not register":  # caught before the store is opened
        assert not db.exists()


@pytest.mark.parametrize("value", ["maybe", 2, None])
def test_a_bad_entry_points_flag_fails_init_app(value: Any) -> None:
    app = flask.Flask(__name__)
    app.config["JOBCREDITS_ENTRY_POINTS"] = value
    with pytest.raises(ConfigurationError, match="JOBCREDITS_ENTRY_POINTS must be a boolean"):
        JobCredits(app)


def test_entry_points_flag_loads_the_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """JOBCREDITS_ENTRY_POINTS=True (or "1" from the environment) loads the
    `jobcredits_plugin` entry points, and only then (with a real installed
    plugin: tests/test_entry_points.py)."""
    seen: list[str] = []

    def fake_loader(ledger: Any, *, key: str) -> list[object]:
        seen.append(key)
        return []

    monkeypatch.setattr("jobcredits_plugin._plugins.load_entry_points", fake_loader)
    make_app(JOBCREDITS_ENTRY_POINTS="1")
    make_app()
    assert seen == ["JOBCREDITS_ENTRY_POINTS"]


def test_a_passed_ledger_keeps_its_own_plugins(caplog: pytest.LogCaptureFixture) -> None:
    """Like JOBCREDITS_TTL, the plugin keys describe the ledger the extension
    builds: a ledger passed in is used as the app built it (its own plugins,
    nothing registered twice when one ledger serves several apps), and the
    ignored keys are logged."""
    own = RecordingPlugin()
    ledger = make_ledger(plugins=[own])
    shared = JobCredits(ledger=ledger)
    apps = [flask.Flask(f"app{n}") for n in range(2)]
    for app in apps:
        app.config.update(JOBCREDITS_PLUGINS=[EVENTS], JOBCREDITS_ACCOUNT=header("X-Account"))
        with caplog.at_level(logging.WARNING, logger="jobcredits_plugin"):
            shared.init_app(app)
    assert ledger.plugin_manager.get_plugins() == {own}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "JOBCREDITS_PLUGINS and JOBCREDITS_ENTRY_POINTS are ignored" in warnings[0]


def test_a_passed_ledger_without_plugin_keys_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="jobcredits_plugin"):
        JobCredits(flask.Flask(__name__), make_ledger(), account=header("X-Account"))
    assert caplog.records == []
