"""Hooks: when they fire, with what, in which order, and how failures and
odd implementations are isolated (DESIGN §2 "Every hook fires..." and §3 "Hooks")."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pluggy
import pytest

from jobcredits_plugin import JobRecord, Ledger, hookimpl
from jobcredits_plugin.hookspecs import PROJECT_NAME
from jobcredits_plugin.testing import FakeClock, RecordingPlugin, make_ledger

A = "acct-1"
J = "job-1"


class Boom(RuntimeError):
    pass


class Raising:
    """A plugin whose every hook raises."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def on_charge(self, record: JobRecord) -> None:
        self.calls += 1
        raise Boom("metrics backend down")

    @hookimpl
    def on_refund(self, record: JobRecord) -> None:
        self.calls += 1
        raise Boom("metrics backend down")


class Named:
    """A plugin that appends its name to a shared list on on_charge."""

    def __init__(self, name: str, seen: list[str]) -> None:
        self.name = name
        self.seen = seen

    @hookimpl
    def on_charge(self, record: JobRecord) -> None:
        self.seen.append(self.name)


# -- each hook, once per event ---------------------------------------------------------


def test_on_charge_fires_once_with_the_pending_record(
    ledger: Ledger, events: RecordingPlugin
) -> None:
    """on_charge fires once per new charge with the committed pending record."""
    c = ledger.charge(A, J, tier="pro")
    assert events.kinds() == ["charge"]
    (record,) = events.of("charge")
    assert record == c.record
    assert record.state == "pending"
    assert record.tier == "pro"


def test_on_reuse_fires_once_per_follow_up_with_uses_counted(
    ledger: Ledger, events: RecordingPlugin
) -> None:
    """on_reuse fires once per follow-up; its record already counts the call."""
    c = ledger.charge(A, J)
    ledger.confirm(A, J, charge_id=c.record.charge_id)
    ledger.charge(A, J)
    ledger.charge(A, J)
    assert events.kinds() == ["charge", "reuse", "reuse"]
    assert [r.uses for r in events.of("reuse")] == [2, 3]
    assert all(r.state == "charged" for r in events.of("reuse"))


def test_on_refund_fires_once_with_the_refunded_record(
    ledger: Ledger, events: RecordingPlugin
) -> None:
    """on_refund fires once, with state "refunded" and the refunded charge's id."""
    c = ledger.charge(A, J)
    ledger.refund(A, J)
    ledger.refund(A, J)
    assert events.kinds() == ["charge", "refund"]
    (record,) = events.of("refund")
    assert record.state == "refunded"
    assert record.charge_id == c.record.charge_id


def test_on_expire_fires_once_with_the_expired_record(
    ledger: Ledger, clock: FakeClock, events: RecordingPlugin
) -> None:
    """on_expire fires once for an expired charged record (here from prune)."""
    c = ledger.charge(A, J)
    ledger.confirm(A, J)
    clock.advance(3600)
    ledger.prune()
    ledger.prune()
    ledger.charge(A, "other")  # a later call settles nothing twice
    assert events.kinds() == ["charge", "expire", "charge"]
    (record,) = events.of("expire")
    assert record.charge_id == c.record.charge_id
    assert record.state == "charged"


def test_no_hook_fires_for_reads_or_no_op_writes(ledger: Ledger, events: RecordingPlugin) -> None:
    """lookup, snapshot, grant, balance, a confirm and a refund of nothing fire no hook."""
    ledger.lookup(A, J)
    ledger.snapshot()
    ledger.grant(A, 3)
    ledger.balance(A)
    ledger.confirm(A, J)
    ledger.refund(A, J)
    ledger.prune()
    assert events.events == []


def test_confirm_fires_no_hook(ledger: Ledger, events: RecordingPlugin) -> None:
    """confirm is not a billing event: the charge already fired on_charge."""
    ledger.charge(A, J)
    ledger.confirm(A, J)
    assert events.kinds() == ["charge"]


def test_hooks_fire_after_the_commit_without_the_store_lock(ledger: Ledger) -> None:
    """A hook sees its change already committed and may call the ledger back
    (the store's lock is not held while hooks run)."""
    seen: list[Any] = []

    class Reader:
        @hookimpl
        def on_charge(self, record: JobRecord) -> None:
            seen.append(ledger.lookup(record.account, record.job_id))
            seen.append(ledger.snapshot())
            seen.append(ledger.grant(record.account, 1))

    ledger.register(Reader())
    c = ledger.charge(A, J)
    assert seen == [c.record, [c.record], 1]


def test_hooks_fire_from_the_async_twins(clock: FakeClock, events: RecordingPlugin) -> None:
    """acharge, arefund and aprune fire the same hooks as their sync twins."""
    ledger = make_ledger(clock=clock, plugins=[events])

    async def scenario() -> None:
        await ledger.acharge(A, J)
        await ledger.aconfirm(A, J)
        await ledger.acharge(A, J)
        await ledger.arefund(A, J)
        await ledger.acharge(A, "old")
        await ledger.aconfirm(A, "old")
        clock.advance(3600)
        await ledger.aprune()

    asyncio.run(scenario())
    assert events.kinds() == ["charge", "reuse", "refund", "charge", "expire"]


# -- a raising hook ----------------------------------------------------------------------


@pytest.mark.parametrize("raising_first", [True, False], ids=["raising-first", "raising-last"])
def test_a_raising_hook_is_logged_and_isolated(
    clock: FakeClock, caplog: pytest.LogCaptureFixture, raising_first: bool
) -> None:
    """A hook that raises is logged with its traceback, the change stays committed,
    the caller gets its normal result and every other plugin still gets the event."""
    events = RecordingPlugin()
    bad = Raising()
    # pluggy calls the last registered implementation first
    plugins = [events, bad] if raising_first else [bad, events]
    ledger = make_ledger(clock=clock, balances=True, plugins=plugins)
    ledger.grant(A, 5)
    with caplog.at_level(logging.ERROR, logger="jobcredits_plugin"):
        c = ledger.charge(A, J)
        assert ledger.refund(A, J) is True
    assert c.charged
    assert bad.calls == 2
    assert events.kinds() == ["charge", "refund"]
    assert ledger.balance(A) == 5  # debited, then credited back: nothing undone
    assert ledger.lookup(A, J) is None
    errors = [r for r in caplog.records if r.name == "jobcredits_plugin"]
    assert len(errors) == 2
    assert all(r.levelno == logging.ERROR for r in errors)
    assert all(r.exc_info is not None and r.exc_info[0] is Boom for r in errors)
    assert "on_charge" in errors[0].getMessage()
    assert "on_refund" in errors[1].getMessage()


def test_a_raising_hook_does_not_undo_a_charge(ledger: Ledger) -> None:
    """After a raising on_charge the job is charged: the next call reuses it."""
    ledger.register(Raising())
    c = ledger.charge(A, J)
    ledger.confirm(A, J, charge_id=c.record.charge_id)
    assert ledger.charge(A, J).outcome == "reused"


# -- order and argument handling ---------------------------------------------------------


def test_hooks_run_in_pluggys_order(ledger: Ledger) -> None:
    """Implementations run in pluggy's order: last registered first, tryfirst
    before and trylast after the rest."""
    seen: list[str] = []

    class First(Named):
        @hookimpl(tryfirst=True)
        def on_charge(self, record: JobRecord) -> None:
            self.seen.append(self.name)

    class Last(Named):
        @hookimpl(trylast=True)
        def on_charge(self, record: JobRecord) -> None:
            self.seen.append(self.name)

    ledger.register(Last("last", seen))
    ledger.register(Named("one", seen))
    ledger.register(First("first", seen))
    ledger.register(Named("two", seen))
    ledger.charge(A, J)
    assert seen == ["first", "two", "one", "last"]


def test_implementation_with_fewer_arguments_is_called(ledger: Ledger) -> None:
    """A hookimpl that asks for no `record` argument is still called."""
    calls: list[str] = []

    class NoArgs:
        @hookimpl
        def on_charge(self) -> None:
            calls.append("charge")

        @hookimpl
        def on_refund(self) -> None:
            calls.append("refund")

    ledger.register(NoArgs())
    ledger.charge(A, J)
    ledger.refund(A, J)
    assert calls == ["charge", "refund"]


def test_module_level_functions_work_as_plugins(ledger: Ledger) -> None:
    """Any object with @hookimpl attributes is a plugin, e.g. a namespace of functions."""
    seen: list[str] = []

    @hookimpl
    def on_charge(record: JobRecord) -> None:
        seen.append(record.job_id)

    ledger.register(SimpleNamespace(on_charge=on_charge))
    ledger.charge(A, J)
    assert seen == [J]


# -- registration ----------------------------------------------------------------------------


def test_plugins_argument_registers_plugins(clock: FakeClock) -> None:
    """Ledger(plugins=[...]) registers each plugin."""
    a, b = RecordingPlugin(), RecordingPlugin()
    ledger = make_ledger(clock=clock, plugins=[a, b])
    ledger.charge(A, J)
    assert a.kinds() == ["charge"]
    assert b.kinds() == ["charge"]
    assert ledger.plugin_manager.is_registered(a)


def test_register_and_unregister(clock: FakeClock) -> None:
    """register() starts events flowing to a plugin (returning its name),
    unregister() stops them."""
    ledger = make_ledger(clock=clock)
    events = RecordingPlugin()
    name = ledger.register(events, name="recorder")
    assert name == "recorder"
    ledger.charge(A, "j1")
    ledger.unregister(events)
    ledger.charge(A, "j2")
    assert [r.job_id for r in events.of("charge")] == ["j1"]
    assert not ledger.plugin_manager.is_registered(events)


def test_registering_the_same_plugin_twice_is_refused(ledger: Ledger) -> None:
    """A plugin registered twice would get every event twice; pluggy refuses it."""
    p = RecordingPlugin()
    ledger.register(p)
    with pytest.raises(ValueError):
        ledger.register(p)


def test_each_ledger_has_its_own_plugin_manager(clock: FakeClock) -> None:
    """Two ledgers never share plugins: one's plugin does not see the other's events."""
    one, two = make_ledger(clock=clock), make_ledger(clock=clock)
    assert one.plugin_manager is not two.plugin_manager
    assert one.plugin_manager.project_name == PROJECT_NAME
    events = RecordingPlugin()
    one.register(events)
    two.charge(A, J)
    assert events.events == []
    one.charge(A, J)
    assert events.kinds() == ["charge"]
    assert not two.plugin_manager.is_registered(events)


def test_check_pending_raises_for_a_typo_hook_name(ledger: Ledger) -> None:
    """A plugin implementing an unknown hook (a typo) registers, but
    check_pending() raises PluginValidationError naming it."""

    class Typo:
        @hookimpl
        def on_charged(self, record: JobRecord) -> None:
            raise AssertionError("never called")

    ledger.register(Typo())
    with pytest.raises(pluggy.PluginValidationError, match="on_charged"):
        ledger.check_pending()
    ledger.charge(A, J)  # and it does not break charging


def test_check_pending_accepts_optional_hooks_from_newer_versions(ledger: Ledger) -> None:
    """@hookimpl(optionalhook=True) for a hook this version lacks registers and
    passes check_pending()."""

    class Newer:
        @hookimpl(optionalhook=True)
        def on_journal_entry(self, entry: object) -> None:
            raise AssertionError("never called")

        @hookimpl
        def on_charge(self, record: JobRecord) -> None:
            self.charged = record

    plugin = Newer()
    ledger.register(plugin)
    ledger.check_pending()
    c = ledger.charge(A, J)
    assert plugin.charged == c.record


def test_check_pending_passes_for_known_hooks(ledger: Ledger) -> None:
    """The bundled RecordingPlugin implements only known hooks."""
    ledger.check_pending()


def test_wrapper_implementations_are_skipped(
    ledger: Ledger, events: RecordingPlugin, caplog: pytest.LogCaptureFixture
) -> None:
    """hookwrapper and wrapper implementations have nothing to wrap in a
    notification: they are skipped and do not break the other hooks."""
    entered: list[str] = []

    class OldStyle:
        @hookimpl(hookwrapper=True)
        def on_charge(self, record: JobRecord) -> Iterator[None]:
            entered.append("hookwrapper")
            yield

    class NewStyle:
        @hookimpl(wrapper=True)
        def on_charge(self, record: JobRecord) -> Iterator[None]:
            entered.append("wrapper")
            return (yield)

    ledger.register(OldStyle())
    ledger.register(NewStyle())
    with caplog.at_level(logging.ERROR, logger="jobcredits_plugin"):
        c = ledger.charge(A, J)
    assert c.charged
    assert events.kinds() == ["charge"]
    assert entered == []
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


# -- entry points --------------------------------------------------------------------------


class EntryPointPlugin(RecordingPlugin):
    """The plugin a fake installed distribution declares."""


@pytest.fixture
def fake_distribution(monkeypatch: pytest.MonkeyPatch) -> EntryPointPlugin:
    """Make importlib.metadata report one installed distribution declaring a
    plugin in the `jobcredits_plugin` group (and one in an unrelated group)."""
    plugin = EntryPointPlugin()

    def must_not_load() -> object:
        raise AssertionError("an entry point of another group was loaded")

    dist = SimpleNamespace(
        metadata={"name": "fake-jobcredits-metrics"},
        version="1.0",
        entry_points=[
            SimpleNamespace(name="fake-metrics", group="jobcredits_plugin", load=lambda: plugin),
            SimpleNamespace(name="other", group="pytest11", load=must_not_load),
        ],
    )
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: [dist])
    return plugin


def test_entry_points_true_loads_the_group(
    fake_distribution: EntryPointPlugin, clock: FakeClock
) -> None:
    """Ledger(entry_points=True) registers the plugins of the `jobcredits_plugin`
    entry point group, under their entry point name."""
    ledger = make_ledger(clock=clock, entry_points=True)
    assert ledger.plugin_manager.get_plugin("fake-metrics") is fake_distribution
    ledger.charge(A, J)
    assert fake_distribution.kinds() == ["charge"]


def test_a_plugin_both_passed_and_declared_registers_once(
    fake_distribution: EntryPointPlugin, clock: FakeClock
) -> None:
    """An app that passes a plugin object its distribution also declares gets it
    once (pluggy's own loader would register it again and raise)."""
    ledger = make_ledger(clock=clock, plugins=[fake_distribution], entry_points=True)
    ledger.charge(A, J)
    assert fake_distribution.kinds() == ["charge"]


def test_entry_points_are_not_loaded_by_default(
    fake_distribution: EntryPointPlugin, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """Without entry_points=True no installed plugin is loaded or sees events."""
    calls: list[str] = []
    real = importlib.metadata.distributions

    def spy() -> Any:
        calls.append("distributions")
        return real()

    monkeypatch.setattr(importlib.metadata, "distributions", spy)
    ledger = make_ledger(clock=clock)
    Ledger()
    Ledger.from_url("memory://")
    assert calls == []
    assert ledger.plugin_manager.get_plugin("fake-metrics") is None
    ledger.charge(A, J)
    assert fake_distribution.events == []
