"""Plugins named in configuration: import strings, classes, objects.

Every adapter lets its configuration name the ledger's plugins (Flask's
``JOBCREDITS_PLUGINS``, Django's ``JOBCREDITS["PLUGINS"]``, the FastAPI
adapter's ``plugins=``), and all of them read an entry the same way, here:

- an import string, ``"package.module:attribute"`` (the attribute may be
  dotted: ``"package.module:Class.attr"``) or ``"package.module.attribute"``
  (the last dot separates; if that names no attribute, the whole string is
  tried as a module: a module of ``@hookimpl`` functions is a plugin too);
- any other value is the plugin itself;
- a class, named either way, is instantiated with no arguments, once for each
  ledger, so that every ledger (one per app, per settings change) gets its own
  plugin object. An object (an instance, a module) is used as it is, and is
  shared by every ledger it is registered on.

Entries are checked when the app starts, so a typo fails the deploy rather
than leaving the books unobserved: a string that does not import, a class
that needs constructor arguments (name an instance instead), or an object
that implements no ``jobcredits`` hook at all (``"pkg.mod:on_charge"``, a
function, instead of its module) raises :class:`ConfigurationError` naming the
entry.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
from collections.abc import Iterable, Iterator
from typing import Any

from ._errors import ConfigurationError, InvalidArgument
from ._ledger import Ledger
from .hookspecs import PROJECT_NAME
from .stores import from_url as store_from_url

__all__ = [
    "ENTRY_POINT_GROUP",
    "add_plugins",
    "import_object",
    "instantiate",
    "ledger_from_url",
    "load_entry_points",
    "load_plugin",
    "load_plugins",
    "resolve_plugins",
]

#: The entry point group installed packages declare their plugins in.
ENTRY_POINT_GROUP = "jobcredits_plugin"

#: The attribute pluggy's ``HookimplMarker("jobcredits")`` sets on a function.
_IMPL_ATTR = PROJECT_NAME + "_impl"


def import_object(path: str) -> Any:
    """The object an import string names: ``"pkg.mod:attr"`` or
    ``"pkg.mod.attr"`` (or ``"pkg.mod"``, the module itself).

    Raises :class:`ImportError` (an :class:`AttributeError` becomes one) or
    whatever the imported module raised; the callers say which setting was
    wrong.
    """
    spec = path.strip()
    module_name, sep, attr = spec.partition(":")
    if sep:
        if not module_name or not attr:
            raise ImportError(f"{spec!r} is not 'package.module:attribute'")
        return _getattr_path(importlib.import_module(module_name), attr, spec)
    module_name, _, attr = spec.rpartition(".")
    if not module_name:
        return importlib.import_module(spec)  # a top-level module
    try:
        return _getattr_path(importlib.import_module(module_name), attr, spec)
    except ImportError as first:
        # "pkg.mod" may name a module whose package does not import it.
        try:
            return importlib.import_module(spec)
        except ModuleNotFoundError as second:
            missing = second.name or ""
            if spec == missing or spec.startswith(missing + "."):
                raise first from None  # no such module either: the first reason
            raise  # the module exists, and something it imports does not


def _getattr_path(target: Any, attr: str, spec: str) -> Any:
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ImportError(
                f"{getattr(target, '__name__', target)!r} has no attribute {part!r}"
            ) from None
    return target


def _has_hooks(obj: Any) -> bool:
    for name in dir(obj):
        try:
            attr = getattr(obj, name)
        except Exception:  # noqa: BLE001, S112 - a broken property is no hook
            continue
        if hasattr(attr, _IMPL_ATTR):
            return True
    return False


def _describe(entry: Any) -> str:
    return repr(entry) if isinstance(entry, str) else f"{entry!r} ({type(entry).__name__})"


def load_plugin(entry: Any, *, key: str = "plugins") -> Any:
    """One configured entry, imported and checked but not instantiated: an
    import string gives the object it names, anything else is taken as it
    is. Raises :class:`ConfigurationError` naming ``key`` and the entry."""
    if isinstance(entry, str):
        try:
            obj = import_object(entry)
        except Exception as exc:  # any import failure is the same misconfiguration
            raise ConfigurationError(f"{key}: {entry!r} does not import: {exc}") from exc
    else:
        obj = entry
    if inspect.isclass(obj):
        try:
            inspect.signature(obj).bind()
        except TypeError:
            raise ConfigurationError(
                f"{key}: {_describe(entry)} is a class whose constructor needs arguments; "
                "name an instance instead (e.g. a module attribute `plugin = "
                f"{obj.__name__}(...)`), or pass the object itself"
            ) from None
        except ValueError:  # no signature to read: let the call tell
            pass
    if not _has_hooks(obj):
        raise ConfigurationError(
            f"{key}: {_describe(entry)} is not a plugin: it implements no "
            f"{PROJECT_NAME} hook (mark its methods with jobcredits_plugin.hookimpl)"
        )
    return obj


def load_plugins(specs: Any, *, key: str = "plugins") -> list[Any]:
    """Every entry of ``specs`` (a list or tuple) through :func:`load_plugin`;
    classes stay classes."""
    if isinstance(specs, (str, bytes)) or not isinstance(specs, (list, tuple)):
        raise ConfigurationError(
            f"{key} must be a list of plugins or import strings, not {type(specs).__name__}"
            + (f" (write [{specs!r}])" if isinstance(specs, str) else "")
        )
    return [load_plugin(entry, key=key) for entry in specs]


def instantiate(obj: Any, *, key: str = "plugins") -> Any:
    """A class becomes a new instance of it; anything else is returned as it is."""
    if not inspect.isclass(obj):
        return obj
    try:
        return obj()
    except Exception as exc:
        raise ConfigurationError(f"{key}: {obj.__qualname__}() failed: {exc}") from exc


def resolve_plugins(specs: Any, *, key: str = "plugins") -> list[object]:
    """The plugin objects ``specs`` names, ready to register on a new ledger:
    import strings imported, classes instantiated, the same object listed
    twice kept once (pluggy refuses to register an object twice)."""
    out: list[object] = []
    for obj in load_plugins(specs, key=key):
        plugin = instantiate(obj, key=key)
        if not any(plugin is seen for seen in out):
            out.append(plugin)
    return out


def add_plugins(ledger: Ledger, specs: Any, *, key: str = "plugins") -> list[object]:
    """Register what ``specs`` names on a ledger that may already have plugins
    (the FastAPI adapter is handed a ready ledger), registering nothing twice:
    an object already registered on it is skipped, and so is a class of which
    it already has an instance (of exactly that class). Every entry is
    imported, checked and instantiated before the first one registers, and a
    failed registration takes back the ones before it, so a bad list leaves
    the ledger as it was. Returns the plugin objects newly registered."""
    present = ledger.plugin_manager.get_plugins()
    added: list[object] = []
    for obj in load_plugins(specs, key=key):
        if inspect.isclass(obj):
            if any(type(p) is obj for p in (*present, *added)):
                continue
            obj = instantiate(obj, key=key)
        elif any(p is obj for p in (*present, *added)):
            continue
        added.append(obj)
    done: list[object] = []
    with _all_or_none(ledger, done):
        for plugin in added:
            _register(ledger, plugin, key)
            done.append(plugin)
    return added


@contextlib.contextmanager
def _all_or_none(ledger: Ledger, registered: list[object]) -> Iterator[None]:
    """Take back every plugin of ``registered`` (the ones the block has
    registered so far, in order) when the block fails with a configuration
    error, so that a bad list leaves the ledger as it was."""
    try:
        yield
    except (InvalidArgument, ConfigurationError):
        for plugin in reversed(registered):
            ledger.unregister(plugin)
        raise


def _register(ledger: Ledger, plugin: object, key: str, name: str | None = None) -> None:
    try:
        ledger.register(plugin, name)
    except Exception as exc:  # pluggy's PluginValidationError, a name taken twice
        raise ConfigurationError(f"{key}: {plugin!r} does not register: {exc}") from exc


def load_entry_points(ledger: Ledger, *, key: str = "entry_points") -> list[object]:
    """Register on ``ledger`` the plugins installed packages declare in the
    ``jobcredits_plugin`` entry point group, under their entry point names, as
    ``Ledger(entry_points=True)`` does with pluggy's loader, but registering
    nothing twice: an entry point whose name is taken (loaded before) or whose
    object is already registered (also named in ``plugins``) is skipped,
    where pluggy's loader would raise. A plugin that does not load or
    register raises :class:`ConfigurationError` naming its distribution, and
    takes back the ones registered before it. Returns the plugins added."""
    pm = ledger.plugin_manager
    added: list[object] = []
    with _all_or_none(ledger, added):
        for dist in list(importlib.metadata.distributions()):
            for ep in dist.entry_points:
                if (
                    ep.group != ENTRY_POINT_GROUP
                    or pm.get_plugin(ep.name) is not None
                    or pm.is_blocked(ep.name)
                ):
                    continue
                where = (
                    f"entry point {ep.name!r} = {getattr(ep, 'value', '?')!r} "
                    f"of {dist.metadata['name']!r}"
                )
                try:
                    plugin = ep.load()
                except Exception as exc:
                    raise ConfigurationError(f"{key}: {where} does not load: {exc}") from exc
                if pm.is_registered(plugin):
                    continue
                _register(ledger, plugin, f"{key}: {where}", ep.name)
                added.append(plugin)
    return added


def ledger_from_url(
    url: str,
    *,
    plugins: Iterable[object] = (),
    entry_points: bool = False,
    plugins_key: str = "plugins",
    entry_points_key: str = "entry_points",
    **kwargs: Any,
) -> Ledger:
    """:meth:`Ledger.from_url <jobcredits_plugin.Ledger.from_url>` with
    ``plugins`` (resolved already: see :func:`resolve_plugins`) and the entry
    points registered in the order ``Ledger(plugins=..., entry_points=...)``
    registers them, except that an object both listed and declared as an
    entry point is registered once, a plugin that fails to register or load
    is reported as an :class:`ConfigurationError` naming the setting, and the
    store just opened is closed again."""
    store = store_from_url(url)
    try:
        ledger = Ledger(store, **kwargs)
    except BaseException:
        store.close()
        raise
    try:
        for plugin in plugins:
            if not ledger.plugin_manager.is_registered(plugin):
                _register(ledger, plugin, plugins_key)
        if entry_points:
            load_entry_points(ledger, key=entry_points_key)
    except BaseException:
        ledger.close()
        raise
    return ledger
