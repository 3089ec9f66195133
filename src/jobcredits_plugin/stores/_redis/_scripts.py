"""The Lua scripts of the Redis store, read once from the package's ``lua/`` folder.

Each ledger operation is one script (``lua/<name>.lua``, whose leading
comments document its KEYS, ARGV and answer); every script is sent to Redis
as ``lua/prelude.lua`` followed by its own text, so the prelude's checks and
helpers (``jc_int``, ``jc_now``, ...) are local to each script and no script
depends on another having been loaded. The files are package data:
``importlib.resources`` reads them from the installed package, a wheel or a
zip alike.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["NAMES", "SCRIPTS", "lua_files"]

#: The scripts the store runs, by the name the store calls them by.
NAMES = (
    "claim",
    "confirm",
    "refund",
    "prune",
    "snapshot",
    "lookup",
    "grant",
    "set_cursor",
    "trim",
    "merge",
)

#: The shared helpers every script starts with.
_PRELUDE = "prelude"


#: The folder of the ``.lua`` files, inside this package.
_FOLDER = resources.files(__name__.rpartition(".")[0]) / "lua"


def _read(name: str) -> str:
    return (_FOLDER / f"{name}.lua").read_text(encoding="utf-8")


def lua_files() -> list[str]:
    """The names (without ``.lua``) of every Lua file the package ships."""
    return sorted(
        entry.name[: -len(".lua")] for entry in _FOLDER.iterdir() if entry.name.endswith(".lua")
    )


#: Every script's full text (the prelude, then the script), by name.
SCRIPTS: dict[str, str] = {name: _read(_PRELUDE) + _read(name) for name in NAMES}
