"""What the adapters' plugin settings name by import string in the tests.

``EVENTS`` is an object (registered as it is), ``Counting`` a class
(instantiated once per ledger), ``hooks`` a module of hook functions; the
others are the mistakes the settings must refuse at startup.
"""

from __future__ import annotations

from typing import Any, ClassVar

from jobcredits_plugin import JobRecord, hookimpl
from jobcredits_plugin.testing import RecordingPlugin

#: A plugin object: every ledger it is registered on reports to it.
EVENTS = RecordingPlugin()


class Counting:
    """A plugin class with a no-argument constructor; every instance is kept,
    so a test can tell how many were made and what each saw."""

    instances: ClassVar[list[Counting]] = []

    def __init__(self) -> None:
        self.charged: list[str] = []
        Counting.instances.append(self)

    @hookimpl
    def on_charge(self, record: JobRecord) -> None:
        self.charged.append(record.job_id)


class Namespace:
    """``"module:Namespace.PLUGIN"``: a dotted attribute after the colon."""

    PLUGIN = RecordingPlugin()


class NeedsArguments:
    """A plugin class whose constructor needs an argument: naming the class
    is a mistake (name an instance)."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    @hookimpl
    def on_charge(self, record: JobRecord) -> None:
        """Never called."""


class Exploding:
    """A plugin class whose constructor fails."""

    def __init__(self) -> None:
        raise RuntimeError("no metrics backend")

    @hookimpl
    def on_charge(self, record: JobRecord) -> None:
        """Never called."""


class BadSignature:
    """A hook implementation asking for an argument the spec does not have:
    pluggy refuses to register it."""

    @hookimpl
    def on_charge(self, record: JobRecord, nonsense: int) -> None:
        """Never called."""


def not_a_plugin(record: JobRecord) -> None:
    """A function, not a plugin (no @hookimpl methods): a common slip for
    "the module of hook functions"."""


def reset() -> None:
    EVENTS.clear()
    Namespace.PLUGIN.clear()
    Counting.instances.clear()
