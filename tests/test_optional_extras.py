"""The core needs attrs and pluggy only: every driver and metrics library is
an optional extra, imported when first used, and a missing one gives an
ImportError that names the extra to install. Simulated here by hiding the
library (``sys.modules[name] = None`` makes its import fail)."""

from __future__ import annotations

import importlib
import sys

import pytest

import jobcredits_plugin.stores as stores
from jobcredits_plugin import Ledger
from jobcredits_plugin.cli import main


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def _forget(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.delitem(sys.modules, name, raising=False)


@pytest.mark.parametrize(
    ("store", "url", "hidden", "module", "extra"),
    [
        ("RedisStore", "redis://127.0.0.1:6379/0", ("redis",), "_redis", "redis"),
        (
            "PostgresStore",
            "postgresql://postgres@127.0.0.1/test",
            ("psycopg", "psycopg_pool"),
            "_postgres",
            "postgres",
        ),
    ],
)
def test_a_store_without_its_driver_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    store: str,
    url: str,
    hidden: tuple[str, ...],
    module: str,
    extra: str,
) -> None:
    _hide(monkeypatch, *hidden)
    _forget(monkeypatch, f"jobcredits_plugin.stores.{module}")
    monkeypatch.delitem(stores.__dict__, store, raising=False)
    wanted = f'pip install "jobcredits-plugin[{extra}]"'

    # Naming the class works (hasattr, from-import, API listings) ...
    assert hasattr(stores, store)
    cls = getattr(stores, store)
    # ... using it says what to install.
    with pytest.raises(ImportError, match=extra) as info:
        cls()
    assert wanted in str(info.value)
    with pytest.raises(ImportError, match=extra):
        stores.from_url(url)
    with pytest.raises(ImportError, match=extra):
        Ledger.from_url(url)
    # The command line says it in one line, exit status 1.
    assert main(["snapshot", "--url", url]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert wanted in err


@pytest.mark.parametrize(
    ("module", "hidden", "extra"),
    [
        ("jobcredits_plugin.contrib.prometheus", ("prometheus_client",), "prometheus"),
        ("jobcredits_plugin.contrib.otel", ("opentelemetry", "opentelemetry.metrics"), "otel"),
    ],
)
def test_a_metrics_plugin_without_its_library_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, hidden: tuple[str, ...], extra: str
) -> None:
    _hide(monkeypatch, *hidden)
    _forget(monkeypatch, module)
    with pytest.raises(ImportError) as info:
        importlib.import_module(module)
    assert f'pip install "jobcredits-plugin[{extra}]"' in str(info.value)


def test_the_core_imports_no_optional_library() -> None:
    """Importing the package, its stores and its WSGI/ASGI layers pulls in no
    driver, framework or metrics library (checked in a fresh interpreter)."""
    import subprocess

    code = (
        "import sys, jobcredits_plugin, jobcredits_plugin.stores, jobcredits_plugin.wsgi, "
        "jobcredits_plugin.asgi, jobcredits_plugin.contrib.logging\n"
        "optional = {'redis', 'psycopg', 'psycopg_pool', 'prometheus_client', 'opentelemetry', "
        "'flask', 'django', 'fastapi', 'starlette'}\n"
        "print(sorted(optional & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("adapter", "framework"),
    [
        ("jobcredits_plugin.flask", "flask"),
        ("jobcredits_plugin.fastapi", "fastapi"),
        ("jobcredits_plugin.django.management.commands.jobcredits", "django"),
    ],
)
def test_a_web_adapter_imports_no_test_helper(adapter: str, framework: str) -> None:
    """The adapters import :mod:`jobcredits_plugin.cli` for its report lines; the
    CLI's demo needs the test helpers and wsgiref, which an app should not load
    by importing an adapter (checked in a fresh interpreter)."""
    import subprocess

    pytest.importorskip(framework)
    code = (
        f"import sys, {adapter}\n"
        "print(sorted({'jobcredits_plugin.testing', 'wsgiref'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
