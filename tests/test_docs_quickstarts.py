"""Each framework page's quickstart, pasted into an empty folder, runs with the
server the page names (issue 16).

The files are taken from the pages themselves, the way a reader copies them:
flask.md's ``# app.py`` block, and the files fastapi.md and django.md show with
a ``literalinclude`` under the file name of their caption. The commands are the
pages' (a SQLite store the workers share, credits granted once from the command
line, then gunicorn or uvicorn with two workers), and a client sends what a
reader would: a first call (charged), its follow-up (reused), a failing first
call of a new job (refunded), an account never granted credits (402), a
malformed job id (400) and no credentials (401).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

pytestmark = pytest.mark.slow


@dataclass
class Answer:
    status: int
    headers: dict[str, str]


def _post(url: str, headers: dict[str, str], body: dict[str, str] | None = None) -> Answer:
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Answer(response.status, {k.lower(): v for k, v in response.headers.items()})
    except urllib.error.HTTPError as error:
        return Answer(error.code, {k.lower(): v for k, v in error.headers.items()})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(folder: Path, *command: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=folder,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
    return done.stdout


def _env(url: str | None = "sqlite:///jobs.db") -> dict[str, str]:
    """The environment the pages' commands run in: ``export JOBCREDITS_URL=...``
    where the page says so (Flask, FastAPI), none where it does not (Django)."""
    env = dict(os.environ)
    # The package as the test run has it (installed by tox, or src/ on
    # PYTHONPATH here); the folder itself stands for the reader's empty one.
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and Path(p).is_dir())
    env.pop("JOBCREDITS_URL", None)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    if url is not None:
        env["JOBCREDITS_URL"] = url
    return env


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Starts ``python -m <command>`` in the folder and waits for its port."""
    started: list[subprocess.Popen[bytes]] = []
    logs: list[IO[bytes]] = []

    def start(folder: Path, *command: str, port: int, url: str | None = "sqlite:///jobs.db") -> str:
        log = (tmp_path / "server.log").open("wb")
        logs.append(log)
        process = subprocess.Popen(
            [sys.executable, "-m", *command], cwd=folder, env=_env(url), stdout=log, stderr=log
        )
        started.append(process)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"{command} exited: {(tmp_path / 'server.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return f"http://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"{command} did not listen: {(tmp_path / 'server.log').read_text()}")

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for log in logs:
        log.close()


def _block_after(page: Path, first_line: str) -> str:
    """The fenced block of ``page`` whose first line is ``first_line``."""
    text = page.read_text(encoding="utf-8")
    match = re.search(rf"```python\n({re.escape(first_line)}\n.*?)```", text, re.DOTALL)
    assert match, f"{page.name}: no python block starting {first_line!r}"
    return match[1]


def _included_files(page: Path) -> dict[str, str]:
    """caption -> text of each ``literalinclude`` of ``page``, cut as Sphinx cuts it."""
    files = {}
    directive = re.compile(r"```\{literalinclude\} (?P<path>\S+)\n(?P<options>(?::[^\n]*\n)*)```")
    for match in directive.finditer(page.read_text(encoding="utf-8")):
        options = dict(re.findall(r":([\w-]+):[ \t]*(.*)", match["options"]))
        if "caption" not in options:
            continue
        text = (page.parent / match["path"]).read_text(encoding="utf-8")
        if "start-at" in options:
            text = text[text.index(options["start-at"]) :]
        files[options["caption"]] = text
    return files


def _check_the_books(
    base: str,
    path: str,
    paying: dict[str, str],
    broke: dict[str, str],
    fail: str,
    credits: str,
) -> None:
    """Charged, reused, refunded on a new job, 402, 400 and 401, as a client sees them."""
    body = {"text": "hello"}
    first = _post(f"{base}{path}", {**paying, "X-Job-Id": "job-quickstart-1"}, body)
    assert (first.status, first.headers.get("x-job-charge")) == (200, "charged"), first
    assert first.headers["x-credits-remaining"] == credits
    again = _post(f"{base}{path}", {**paying, "X-Job-Id": "job-quickstart-1"}, body)
    assert (again.status, again.headers.get("x-job-charge")) == (200, "reused"), again
    assert again.headers["x-credits-remaining"] == credits
    failed = _post(f"{base}{path}?{fail}", {**paying, "X-Job-Id": "job-quickstart-2"}, body)
    assert (failed.status, failed.headers.get("x-job-charge")) == (502, "refunded"), failed
    assert failed.headers["x-credits-remaining"] == credits
    assert _post(f"{base}{path}", {**broke, "X-Job-Id": "job-quickstart-3"}, body).status == 402
    assert _post(f"{base}{path}", {**paying, "X-Job-Id": "not a job id"}, body).status == 400
    assert _post(f"{base}{path}", {"X-Job-Id": "job-quickstart-4"}, body).status == 401


def test_flask_quickstart_under_gunicorn(tmp_path: Path, serve: Callable[..., str]) -> None:
    pytest.importorskip("flask")
    pytest.importorskip("gunicorn")
    (tmp_path / "app.py").write_text(_block_after(DOCS / "flask.md", "# app.py"))
    assert _run(tmp_path, "flask", "--app", "app", "jobcredits", "grant", "acct-ada", "100") == (
        "100\n"
    )
    port = _free_port()
    base = serve(
        tmp_path, "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "app:create_app()", port=port
    )
    _check_the_books(
        base,
        "/v1/summarize",
        paying={"X-Api-Key": "key-ada"},
        broke={"X-Api-Key": "key-bob"},
        fail="fail=1",
        credits="99",
    )


def test_fastapi_quickstart_under_uvicorn(tmp_path: Path, serve: Callable[..., str]) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    files = _included_files(DOCS / "fastapi.md")
    (tmp_path / "app.py").write_text(files["app.py"])
    _run(tmp_path, "jobcredits_plugin", "grant", "--url", "sqlite:///jobs.db", "acct-ada", "100")
    port = _free_port()
    base = serve(
        tmp_path,
        "uvicorn",
        "--workers",
        "2",
        "--port",
        str(port),
        "--factory",
        "app:create_app",
        port=port,
    )
    _check_the_books(
        base,
        "/v1/summarize",
        paying={"X-Api-Key": "key-ada"},
        broke={"X-Api-Key": "key-bob"},
        fail="fail=true",
        credits="99",
    )


def test_django_quickstart_under_gunicorn(tmp_path: Path, serve: Callable[..., str]) -> None:
    pytest.importorskip("django")
    pytest.importorskip("gunicorn")
    files = _included_files(DOCS / "django.md")
    assert {"manage.py", "jobsite/settings.py", "jobsite/urls.py", "jobsite/views.py"} <= set(files)
    (tmp_path / "jobsite").mkdir()
    (tmp_path / "jobsite" / "__init__.py").write_text("")  # "(empty)", as the page says
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        [sys.executable, "manage.py", "jobcredits", "grant", "ada", "10"],
        cwd=tmp_path,
        env=_env(url=None),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "10\n"), done.stderr
    port = _free_port()
    base = serve(
        tmp_path,
        "gunicorn",
        "--workers",
        "2",
        "-b",
        f"127.0.0.1:{port}",
        "jobsite.wsgi",
        port=port,
        url=None,
    )
    _check_the_books(
        base,
        "/v1/transcribe",
        paying={"Authorization": "Bearer key-ada"},
        broke={"Authorization": "Bearer key-bob"},
        fail="fail=1",
        credits="9",
    )
