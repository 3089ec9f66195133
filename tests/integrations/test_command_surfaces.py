"""One command set, three command lines: every command of the table runs
through ``jobcredits``, ``flask jobcredits`` and ``manage.py jobcredits`` with
the same arguments and gives the same output and the same exit status (issue
14, item 5).

Each case runs three times on three copies of one SQLite store, one copy a
command line, so that a command that changes the store (a grant, an export
advancing its cursor) meets the same store each time.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobcredits_plugin import Ledger
from jobcredits_plugin._commands import BY_NAME, COMMANDS
from jobcredits_plugin.cli import build_parser, main
from jobcredits_plugin.testing import FakeClock

flask = pytest.importorskip("flask")
pytest.importorskip("django")

from django.core.management import CommandError, call_command  # noqa: E402
from django.test import override_settings  # noqa: E402

from jobcredits_plugin.django.management.commands.jobcredits import (  # noqa: E402
    Command as DjangoCommand,
)
from jobcredits_plugin.flask import JobCredits, get_ledger  # noqa: E402
from jobcredits_plugin.flask import cli as flask_group  # noqa: E402

from .django import conftest as django_conftest  # noqa: E402, F401 - configures Django
from .django import settings as django_settings  # noqa: E402

Outcome = tuple[int, str, str]  # exit status, stdout, the error message (or "")

#: Arguments for every command; a command added to the table needs its cases here.
CASES: dict[str, list[list[str]]] = {
    "demo": [["--jobs", "3"], ["--jobs", "2", "--seed", "7"], ["--trace"]],
    "snapshot": [[], ["--limit", "1"], ["--json"]],
    "stats": [[], ["--json"]],
    "prune": [[]],
    "export": [["--cursor", "billing", "--batch", "2"], ["--cursor", "seen"]],
    "cursors": [[], ["--json"], ["--delete", "seen"], ["--delete", "nobody"]],
    "grant": [["acct-1", "5"], ["--id", "inv-1", "acct-1", "5"], ["acct-1", "-2"], ["", "1"]],
    "balance": [["acct-1"], ["bad\x07account"]],
    "migrate": [[]],
}


def test_every_command_has_cases() -> None:
    assert set(CASES) == set(BY_NAME)


# -- the store --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store with live, expired and stale jobs, a balance, a journal
    and a cursor part way through it."""
    path = tmp_path_factory.mktemp("surfaces") / "jobs.db"
    url = f"sqlite:///{path}"
    with Ledger.from_url(url, clock=FakeClock(time.time() - 7200)) as old:
        done = old.charge("acct-0", "old-job")
        old.confirm("acct-0", "old-job", charge_id=done.record.charge_id)
        old.charge("acct-0", "stuck-job")  # its lease ran out long ago
    with Ledger.from_url(url, balances=True) as ledger:
        ledger.grant("acct-1", 10)
        for n in range(3):
            record = ledger.charge("acct-1", f"job-{n}", scope="summarize", cost=2).record
            if n < 2:
                ledger.confirm("acct-1", f"job-{n}", scope="summarize", charge_id=record.charge_id)
        ledger.cursor("seen").advance(2)
    return path


def copy_of(store: Path, into: Path) -> str:
    into.mkdir()
    for part in store.parent.glob(store.name + "*"):  # the -wal and -shm files too
        shutil.copy(part, into / part.name)
    return f"sqlite:///{into / store.name}"


# -- the three command lines ------------------------------------------------------------------


def via_cli(url: str, argv: list[str]) -> Outcome:
    name, rest = argv[0], argv[1:]
    where = ["--url", url] if BY_NAME[name].uses_store else []
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([name, *where, *rest])
    lines = err.getvalue().splitlines()
    message = lines[-1].removeprefix("jobcredits: error: ") if status else ""
    return status, out.getvalue(), message


def via_flask(url: str, argv: list[str]) -> Outcome:
    app = flask.Flask("surfaces")
    app.config.update(JOBCREDITS_URL=url, JOBCREDITS_ACCOUNT=None, JOBCREDITS_BALANCES=True)
    JobCredits(app)
    try:
        result = app.test_cli_runner().invoke(args=["jobcredits", *argv])
    finally:
        get_ledger(app).close()
    lines = result.stderr.splitlines()
    message = lines[-1].removeprefix("Error: ") if result.exit_code else ""
    return result.exit_code, result.stdout, message


def via_django(url: str, argv: list[str]) -> Outcome:
    conf = {**django_settings.JOBCREDITS, "URL": url, "BALANCES": True}
    out, err = io.StringIO(), io.StringIO()
    with override_settings(JOBCREDITS=conf):
        try:
            call_command("jobcredits", *argv, stdout=out, stderr=err)
        except CommandError as exc:
            return exc.returncode, out.getvalue(), str(exc)
        finally:
            from jobcredits_plugin.django import get_ledger as django_ledger

            django_ledger().close()
    return 0, out.getvalue(), ""


SURFACES: dict[str, Callable[[str, list[str]], Outcome]] = {
    "jobcredits": via_cli,
    "flask jobcredits": via_flask,
    "manage.py jobcredits": via_django,
}


def same(outcome: Outcome) -> Outcome:
    """An outcome with what depends on the moment it ran taken out (the age
    of the oldest job, in seconds)."""
    status, out, message = outcome
    out = re.sub(r"\d+(\.\d+)?[smh] ago", "<age> ago", out)
    out = re.sub(r'"age_seconds": [\d.]+', '"age_seconds": <age>', out)
    return status, out, message


@pytest.mark.parametrize(
    "argv",
    [[name, *args] for name, cases in CASES.items() for args in cases],
    ids=lambda argv: " ".join(argv).replace("\x07", "^G") or "no-args",
)
def test_every_command_answers_the_same_on_every_command_line(
    store: Path, tmp_path: Path, argv: list[str]
) -> None:
    outcomes = {
        surface: same(run(copy_of(store, tmp_path / str(n)), argv))
        for n, (surface, run) in enumerate(SURFACES.items())
    }
    expected = outcomes["jobcredits"]
    assert expected[1] or expected[2], "the case printed nothing"
    for surface, outcome in outcomes.items():
        assert outcome == expected, surface


# -- the same commands and options ------------------------------------------------------------


def _argparse_options(parser: Any) -> dict[str, set[str]]:
    sub = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    return {
        name: {
            o
            for action in command._actions
            for o in (action.option_strings or [action.dest])
            if o not in ("-h", "--help", "--url")
        }
        for name, command in sub.choices.items()
    }


def test_the_three_command_lines_offer_the_same_commands_and_options() -> None:
    """The table is the one command set: each command line has its commands
    with the same options and arguments (``jobcredits`` adds ``--url``, the
    store the others take from the app)."""
    table = {
        command.name: {a.name if not a.positional else a.key for a in command.args}
        | {"--traceback"}
        for command in COMMANDS
    }
    assert _argparse_options(build_parser()) == table
    django_parser = DjangoCommand().create_parser("manage.py", "jobcredits")
    assert _argparse_options(django_parser) == table
    flask_options = {
        name: {
            o
            for param in command.params
            for o in (param.opts if param.param_type_name == "option" else [param.name])
            if o != "--help"
        }
        for name, command in flask_group.commands.items()
    }
    assert flask_options == table


def test_a_command_line_the_parser_rejects_exits_2_everywhere(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``grant ACCOUNT ten``: a usage error, exit status 2, on each command
    line (Django's from manage.py, as call_command raises instead)."""
    assert main(["grant", "--url", "sqlite:///unused.db", "acct", "ten"]) == 2
    app = flask.Flask("surfaces")
    app.config.update(JOBCREDITS_ACCOUNT=None, TESTING=True)
    JobCredits(app)
    assert app.test_cli_runner().invoke(args=["jobcredits", "grant", "acct", "ten"]).exit_code == 2
    with pytest.raises(SystemExit) as exited:
        DjangoCommand().run_from_argv(["manage.py", "jobcredits", "grant", "acct", "ten"])
    assert exited.value.code == 2
    assert "invalid int value: 'ten'" in capsys.readouterr().err
