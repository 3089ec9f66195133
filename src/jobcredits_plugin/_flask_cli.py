"""``flask jobcredits``: the command table as a click group, on the app's ledger.

Every command of :data:`~jobcredits_plugin._commands.COMMANDS` becomes a
click command with the same name, arguments, output and exit status as in
``jobcredits``; only the store comes from the app (its extension's ledger)
instead of ``--url``. Kept out of :mod:`jobcredits_plugin.flask`, which
builds the group with its own ``get_ledger`` (so this module imports nothing
of the adapter's).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import click
from flask.cli import AppGroup, with_appcontext

from ._commands import COMMANDS, Arg, Command
from ._ledger import Ledger
from ._operations import TRACEBACK_HELP, AppTarget, failure, want_traceback

__all__ = ["build_group"]

GROUP_HELP = "Inspect and settle this app's job credits ledger (JOBCREDITS_URL)."


class _Failed(click.ClickException):
    """A command's failure: click's one ``Error:`` line, with the exit
    status the other command lines use for it."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        # A class attribute in click's stubs; click reads it from the instance.
        self.exit_code = status  # type: ignore[misc]


def _checked(parse: Callable[[str], Any]) -> Callable[..., Any]:
    """An argparse type function (``non_negative``) as a click callback, so
    that both parsers accept and refuse the same values."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if not isinstance(value, str):
            return value  # a default, already what it must be
        try:
            return parse(value)
        except (TypeError, ValueError):
            message = f"invalid {parse.__name__} value: {value!r}"
            raise click.BadParameter(message, ctx, param) from None

    return check


def _param(arg: Arg) -> click.Parameter:
    # int and float as click's own types (their messages are click's); any
    # other type function checks the string click passes on.
    known: dict[object, Any] = {int: click.INT, float: click.FLOAT}
    kind = known.get(arg.type)
    check = None
    if arg.type is not None and kind is None:
        # Strings (a default too), or click would guess int from the default.
        kind, check = click.STRING, _checked(arg.type)
    if arg.positional:
        return click.Argument([arg.key], type=kind, callback=check, metavar=arg.metavar)
    if arg.flag:
        return click.Option([arg.name, arg.key], is_flag=True, help=arg.help)
    return click.Option(
        [arg.name, arg.key],
        type=kind,
        callback=check,
        metavar=arg.metavar,
        default=arg.default,
        multiple=arg.repeat,
        required=arg.required,
        help=arg.help,
    )


def _value(value: Any) -> Any:
    """A repeated option as argparse gives it: a list, or None when not given."""
    return (list(value) or None) if isinstance(value, tuple) else value


def _click_command(
    command: Command, ledger_of: Callable[[], Ledger], spell: Callable[[str], str]
) -> click.Command:
    def callback(traceback: bool, **values: Any) -> None:
        args = argparse.Namespace(**{key: _value(v) for key, v in values.items()})
        target = AppTarget(ledger_of, spell, sys.stdout, sys.stderr)
        try:
            status = command.run(target, args)
        except (Exception, KeyboardInterrupt) as exc:
            line, status, text = failure(exc, show_traceback=want_traceback(traceback))
            sys.stderr.write(text)
            raise _Failed(line, status) from exc
        if status:
            raise click.exceptions.Exit(status)

    traceback = click.Option(["--traceback"], is_flag=True, help=TRACEBACK_HELP)
    params = [*map(_param, command.args), traceback]
    # A negative N (grant ACCOUNT -5) is a value, as argparse reads it, not
    # an unknown option.
    numbers = any(arg.positional and arg.type is int for arg in command.args)
    return click.Command(
        command.name,
        callback=with_appcontext(callback),
        params=params,
        help=command.description,
        short_help=command.help,
        context_settings={"ignore_unknown_options": True} if numbers else None,
    )


def build_group(ledger_of: Callable[[], Ledger], spell: Callable[[str], str]) -> AppGroup:
    """The ``flask jobcredits`` group: every command on the ledger
    ``ledger_of()`` returns in the app's context; ``spell`` names a setting
    as the app's config does (``JOBCREDITS_BALANCES``)."""
    group = AppGroup("jobcredits", help=GROUP_HELP)
    for command in COMMANDS:
        group.add_command(_click_command(command, ledger_of, spell))
    return group
