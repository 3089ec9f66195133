"""Store proxies that ``isinstance`` recognises on every Python.

A test proxy forwards to the store it wraps through ``__getattr__``. The ledger
recognises a store by ``isinstance`` against the runtime-checkable
:class:`~jobcredits_plugin.stores.Store` and
:class:`~jobcredits_plugin.stores.JournalStore` protocols, which since Python
3.12 look members up on the class, never through ``__getattr__``: each member a
proxy does not define itself must exist on its class, still forwarding through
its ``__getattr__`` (so a proxy that watches what is fetched still sees it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from jobcredits_plugin.stores._protocol import JOURNAL_OPERATIONS, STORE_OPERATIONS

C = TypeVar("C", bound=type)

#: The protocols' data members.
_DATA = ("cancel_safe", "journal_max_age")


def _method(name: str) -> Callable[..., Any]:
    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        return type(self).__getattr__(self, name)(*args, **kwargs)

    forward.__name__ = name
    return forward


def _data(name: str) -> property:
    return property(lambda self: type(self).__getattr__(self, name))


def forwarding(cls: C) -> C:
    """Class decorator: give a ``__getattr__`` proxy class every store member
    it does not define, forwarding through its ``__getattr__``."""
    for operation in (*STORE_OPERATIONS, *JOURNAL_OPERATIONS):
        for name in (operation, "a" + operation):
            if getattr(cls, name, None) is None:
                setattr(cls, name, _method(name))
    for name in _DATA:
        if not hasattr(cls, name):
            setattr(cls, name, _data(name))
    return cls
