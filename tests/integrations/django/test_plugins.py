"""settings.JOBCREDITS["PLUGINS"] and ["ENTRY_POINTS"]: the plugins of the
ledger built from the settings, and the system checks that refuse a bad
entry. (Entry points from a real installed distribution:
tests/test_entry_points.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("django")

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, override_settings

from jobcredits_plugin.django import get_ledger
from jobcredits_plugin.testing import RecordingPlugin

from .. import plugin_hooks, plugin_targets
from ..plugin_targets import EVENTS, Counting

ACCOUNT = "tests.integrations.django.views.account_from_header"
TARGETS = "tests.integrations.plugin_targets"


@pytest.fixture(autouse=True)
def _fresh_targets() -> Iterator[None]:
    plugin_targets.reset()
    plugin_hooks.CHARGED.clear()
    yield
    plugin_targets.reset()


def charge(job: str = "job-1") -> Any:
    response = Client().post("/charged", headers={"X-Account": "acct", "X-Job-Id": job})
    assert response.status_code == 200
    return response


def messages(**conf: Any) -> list[checks.CheckMessage]:
    with override_settings(DEBUG=True, JOBCREDITS={"ACCOUNT": ACCOUNT, **conf}):
        return [m for m in checks.run_checks() if m.id.startswith("jobcredits.")]


def test_a_plugin_object_receives_the_charged_request(jc_settings: Any) -> None:
    """An object in PLUGINS (not only a dotted path) is registered as it is,
    and sees the charged request's on_charge, then the follow-up's on_reuse."""
    plugin = RecordingPlugin()
    jc_settings(PLUGINS=[plugin])
    charge()
    charge()
    assert plugin.kinds() == ["charge", "reuse"]


@pytest.mark.parametrize(
    "spec", [f"{TARGETS}.EVENTS", f"{TARGETS}:EVENTS", f"{TARGETS}:Namespace.PLUGIN"]
)
def test_an_import_string_names_a_plugin(jc_settings: Any, spec: str) -> None:
    """Both separators, as in the other adapters; a dotted attribute after the colon."""
    jc_settings(PLUGINS=[spec])
    charge()
    assert [*EVENTS.kinds(), *plugin_targets.Namespace.PLUGIN.kinds()] == ["charge"]


def test_a_module_of_hook_functions_is_a_plugin(jc_settings: Any) -> None:
    jc_settings(PLUGINS=["tests.integrations.plugin_hooks"])
    charge()
    assert plugin_hooks.CHARGED == ["job-1"]


@pytest.mark.parametrize("spec", [f"{TARGETS}.Counting", f"{TARGETS}:Counting", Counting])
def test_a_class_is_instantiated_for_each_ledger(jc_settings: Any, spec: Any) -> None:
    """A class is instantiated with no arguments each time the ledger is
    built (a settings change builds a new one)."""
    jc_settings(PLUGINS=[spec])
    charge("job-1")
    jc_settings(PLUGINS=[spec], TTL=100)
    charge("job-2")
    assert [c.charged for c in Counting.instances] == [["job-1"], ["job-2"]]


def test_the_same_object_listed_twice_is_registered_once(jc_settings: Any) -> None:
    jc_settings(PLUGINS=[EVENTS, f"{TARGETS}:EVENTS"])
    charge()
    assert EVENTS.kinds() == ["charge"]


def test_entry_points_load_only_when_asked(
    jc_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENTRY_POINTS=True loads the `jobcredits_plugin` entry point group; the
    default does not."""
    seen: list[str] = []

    def fake_loader(ledger: Any, *, key: str) -> list[object]:
        seen.append(key)
        return []

    monkeypatch.setattr("jobcredits_plugin._plugins.load_entry_points", fake_loader)
    jc_settings()
    get_ledger()
    assert seen == []
    jc_settings(ENTRY_POINTS=True)
    get_ledger()
    assert seen == ["settings.JOBCREDITS['ENTRY_POINTS']"]


# -- the checks --------------------------------------------------------------------------


def test_valid_plugin_settings_pass_the_checks() -> None:
    """Objects, classes, modules and both import string forms: no message;
    the check imports, but instantiates nothing."""
    assert (
        messages(
            PLUGINS=[
                EVENTS,
                Counting,
                f"{TARGETS}:Counting",
                f"{TARGETS}.EVENTS",
                "tests.integrations.plugin_hooks",
            ],
            ENTRY_POINTS=True,
        )
        == []
    )
    assert Counting.instances == []


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        (f"{TARGETS}:NoSuchThing", "does not import: 'tests.integrations.plugin_targets' has no"),
        (f"{TARGETS}.NoSuchThing", "does not import"),
        ("no_such_module:plugin", "does not import: No module named 'no_such_module'"),
        (":plugin", "is not 'package.module:attribute'"),
        (f"{TARGETS}:not_a_plugin", "is not a plugin: it implements no jobcredits hook"),
        (f"{TARGETS}:NeedsArguments", "constructor needs arguments; name an instance"),
        (42, "42 (int) is not a plugin"),
    ],
)
def test_a_bad_entry_is_e006_naming_it(entry: Any, fragment: str) -> None:
    """One E006 per bad entry, whose message names the setting and the entry
    and says what is wrong; the hint says what an entry may be."""
    found = messages(PLUGINS=[f"{TARGETS}:EVENTS", entry])
    assert [m.id for m in found] == ["jobcredits.E006"]
    assert found[0].level == checks.ERROR
    assert found[0].msg.startswith("settings.JOBCREDITS['PLUGINS']: ")
    assert repr(entry) in found[0].msg
    assert fragment in found[0].msg
    assert "package.module:attribute" in found[0].hint


def test_every_bad_entry_is_reported() -> None:
    found = messages(PLUGINS=["no_such_module.a", f"{TARGETS}:EVENTS", "no_such_module.b"])
    assert [m.id for m in found] == ["jobcredits.E006", "jobcredits.E006"]
    assert "'no_such_module.a'" in found[0].msg
    assert "'no_such_module.b'" in found[1].msg


@pytest.mark.parametrize("plugins", [f"{TARGETS}:EVENTS", {"a": 1}, None, EVENTS])
def test_plugins_not_a_list_is_e006(plugins: Any) -> None:
    found = messages(PLUGINS=plugins)
    assert [m.id for m in found] == ["jobcredits.E006"]
    assert "settings.JOBCREDITS['PLUGINS'] must be a list" in found[0].msg
    if isinstance(plugins, str):
        assert found[0].hint == f"e.g. [{plugins!r}]"


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_entry_points_not_a_bool_is_e005(value: Any) -> None:
    found = messages(ENTRY_POINTS=value)
    assert [m.id for m in found] == ["jobcredits.E005"]
    assert "settings.JOBCREDITS['ENTRY_POINTS'] must be True or False" in found[0].msg


def test_a_bad_entry_fails_at_runtime_too(jc_settings: Any) -> None:
    """A server that never ran the checks refuses the same setting, naming
    the entry (ImproperlyConfigured), before any charge."""
    jc_settings(PLUGINS=["no_such_module:plugin"])
    with pytest.raises(ImproperlyConfigured, match=r"'no_such_module:plugin' does not import"):
        get_ledger()


def test_a_class_that_fails_to_instantiate_fails_the_ledger(jc_settings: Any) -> None:
    """The checks do not instantiate (a check must not start a metrics
    exporter); building the ledger does, and a failure is ImproperlyConfigured
    naming the class."""
    assert messages(PLUGINS=[f"{TARGETS}:Exploding"]) == []
    jc_settings(PLUGINS=[f"{TARGETS}:Exploding"])
    with pytest.raises(ImproperlyConfigured, match=r"Exploding\(\) failed: no metrics backend"):
        get_ledger()


def test_a_plugin_pluggy_refuses_fails_the_ledger(jc_settings: Any) -> None:
    jc_settings(PLUGINS=[f"{TARGETS}:BadSignature"])
    with pytest.raises(ImproperlyConfigured, match="does not register"):
        get_ledger()
