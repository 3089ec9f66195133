"""Calling a ledger's hook implementations: each in isolation, cheaply.

pluggy stops at the first implementation that raises, and looks the
implementations up on every call. A billing event must reach every plugin (a
metrics bug must not hide it from the audit log), and an unobserved charge
should spend next to nothing on hooks, so the ledger calls the implementations
itself, from a cache that registering or unregistering a plugin invalidates.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import pluggy

from .stores import Event

__all__ = ["Hooks", "PluginManager"]

log = logging.getLogger("jobcredits_plugin")

#: One hook implementation, ready to call: (function, which of the spec's
#: arguments it takes as indexes, None when it takes all of them in order,
#: plugin name).
Impl = tuple[Callable[..., Any], "tuple[int, ...] | None", str]


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, counting registrations so that :class:`Hooks` knows
    when its cache of implementations is stale."""

    generation = 0

    def register(self, plugin: object, name: str | None = None) -> str | None:
        self.generation += 1
        return super().register(plugin, name)

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        self.generation += 1
        return super().unregister(plugin, name)


#: The hook each kind of event fires (looked up, not concatenated, per event).
_HOOK_OF = {kind: "on_" + kind for kind in ("charge", "reuse", "refund", "expire")}


class Hooks:
    """The hook calls of one ledger, over its own plugin manager."""

    def __init__(self, pm: PluginManager) -> None:
        self._pm = pm
        self._cache: dict[str, tuple[Impl, ...]] = {}
        self._generation = -1

    def impls(self, hook_name: str) -> tuple[Impl, ...]:
        """The implementations of one hook, in pluggy's calling order (LIFO,
        tryfirst first), cached until a plugin is registered or unregistered."""
        if self._generation == self._pm.generation:
            impls = self._cache.get(hook_name)
            if impls is not None:
                return impls
        return self._load(hook_name)

    def _load(self, hook_name: str) -> tuple[Impl, ...]:
        pm = self._pm
        if self._generation != pm.generation:
            self._cache = {}
            self._generation = pm.generation
        impls = self._cache.get(hook_name)
        if impls is None:
            caller = getattr(pm.hook, hook_name)
            spec = tuple(caller.spec.argnames) if caller.spec is not None else ()
            found = []
            for impl in reversed(caller.get_hookimpls()):
                if impl.hookwrapper or impl.wrapper:
                    continue  # notifications have no result to wrap
                names = tuple(impl.argnames)
                picks = None if names == spec else tuple(spec.index(n) for n in names)
                found.append((impl.function, picks, impl.plugin_name))
            impls = self._cache[hook_name] = tuple(found)
        return impls

    def notify(self, hook_name: str, impls: tuple[Impl, ...], values: tuple[Any, ...]) -> None:
        """Call each implementation with the spec's argument ``values``, each
        in isolation: pluggy would stop at the first one that raises, and a
        metrics bug must not hide the event from the audit log plugin.

        An ``Exception`` is logged and skipped. A ``BaseException`` (a
        cancellation, ``KeyboardInterrupt``, ``SystemExit``) must reach the
        caller, but only after every other implementation has seen the event:
        the first one is re-raised once all of them ran.
        """
        interrupt: BaseException | None = None
        for function, picks, plugin_name in impls:
            try:
                if picks is None:
                    function(*values)
                else:
                    function(*[values[i] for i in picks])
            except Exception:
                # Logging can raise too (a broken handler): the change is
                # committed, so nothing may escape to the caller from here.
                with contextlib.suppress(Exception):
                    log.exception(
                        "jobcredits hook %s of plugin %r raised; it was skipped "
                        "(whatever it reports stays committed)",
                        hook_name,
                        plugin_name,
                    )
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                if interrupt is None:
                    interrupt = exc
        if interrupt is not None:
            raise interrupt

    def fire(self, events: Iterable[Event]) -> None:
        """Call each hook implementation for each committed event; an
        interrupting hook (see :meth:`notify`) is re-raised after every
        event was reported."""
        interrupt: BaseException | None = None
        for event in events:
            name = _HOOK_OF[event.kind]
            impls = self.impls(name)
            if impls:
                try:
                    self.notify(name, impls, (event.record,))
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    if interrupt is None:
                        interrupt = exc
        if interrupt is not None:
            raise interrupt

    def fire_one(self, event: Event | None) -> None:
        """:meth:`fire` for the one event of a refund, if there was one."""
        if event is not None:
            self.fire((event,))
