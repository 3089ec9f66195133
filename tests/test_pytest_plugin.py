"""The pytest plugin (``_jobcredits_pytestplugin``, loaded by pytest through
the ``pytest11`` entry point ``jobcredits``): the entry point, what loading it
costs, its fixtures, and the per-framework examples of docs/testing.md, each
run as a user would run it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "testing"


def test_pytest_finds_the_plugin_through_its_entry_point(request: pytest.FixtureRequest) -> None:
    """The installed package declares the pytest11 entry point ``jobcredits``,
    and it names the plugin module. (A run from a checkout that was not
    installed has no entry points: the root conftest.py then loads the module,
    and this test fails, as it should: the package is what users get.)"""
    found = [ep for ep in entry_points(group="pytest11") if ep.name == "jobcredits"]
    assert [ep.value for ep in found] == ["_jobcredits_pytestplugin"]
    assert found[0].load() is request.config.pluginmanager.get_plugin("jobcredits")


def test_loading_the_plugin_imports_nothing_of_the_library() -> None:
    """What pytest loads in every run of a project that has the package
    installed: the plugin module alone, not the library (its fixtures import
    it when a test uses one)."""
    code = (
        "import sys, _jobcredits_pytestplugin\n"
        "print(sorted(m for m in sys.modules if m.startswith('jobcredits_plugin')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_the_plugin_can_be_turned_off(pytester: pytest.Pytester) -> None:
    """The fixtures come without asking; ``-p no:jobcredits`` removes them."""
    pytester.makepyfile("def test_it(jobcredits_ledger):\n    pass\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:jobcredits")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'jobcredits_ledger' not found*"])


def test_a_fresh_ledger_on_the_fake_clock_with_the_recorder(pytester: pytest.Pytester) -> None:
    """jobcredits_ledger is a new memory ledger per test, on jobcredits_clock,
    with jobcredits_events registered, and closed after its test."""
    pytester.makepyfile(
        """
        import pytest
        from jobcredits_plugin import StoreUnavailable
        from jobcredits_plugin.stores import MemoryStore
        from jobcredits_plugin.testing import DEFAULT_START

        seen = []

        def test_first(jobcredits_ledger, jobcredits_clock, jobcredits_events):
            seen.append(jobcredits_ledger)
            assert isinstance(jobcredits_ledger.store, MemoryStore)
            assert jobcredits_ledger.clock is jobcredits_clock
            assert jobcredits_clock() == DEFAULT_START
            assert jobcredits_ledger.balance("acct") is None  # Ledger's defaults
            jobcredits_ledger.charge("acct", "job-1")
            jobcredits_clock.advance(3601)
            jobcredits_ledger.charge("acct", "job-1")
            assert jobcredits_events.kinds() == ["charge", "refund", "charge"]

        def test_second(jobcredits_ledger, jobcredits_events):
            assert jobcredits_ledger is not seen[0]
            assert jobcredits_ledger.lookup("acct", "job-1") is None
            assert jobcredits_events.kinds() == []
            with pytest.raises(StoreUnavailable, match="closed"):
                seen[0].lookup("acct", "job-1")
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_the_marker_passes_ledger_options(pytester: pytest.Pytester) -> None:
    """@pytest.mark.jobcredits(...) on the test, its class or its module: the
    closest one wins, key by key."""
    pytester.makepyfile(
        """
        import pytest

        pytestmark = pytest.mark.jobcredits(balances=True, ttl=60)

        def test_module_marker(jobcredits_ledger):
            assert jobcredits_ledger.balance("acct") == 0
            assert jobcredits_ledger.ttl == 60

        @pytest.mark.jobcredits(ttl=600, max_uses=2)
        def test_closest_wins(jobcredits_ledger):
            assert (jobcredits_ledger.ttl, jobcredits_ledger.max_uses) == (600, 2)
            assert jobcredits_ledger.balances

        @pytest.mark.jobcredits(clock=lambda: 0.0)
        def test_no_clock_option(jobcredits_ledger):
            pass

        @pytest.mark.jobcredits(True)
        def test_keywords_only(jobcredits_ledger):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*the ledger's clock is the jobcredits_clock fixture*",
            "*takes Ledger options by keyword only*",
        ]
    )


@pytest.mark.parametrize(
    ("example", "framework"),
    [
        ("test_flask_views.py", "flask"),
        ("test_fastapi_views.py", "fastapi"),
        ("test_django_views.py", "django"),
    ],
)
def test_the_framework_examples_pass(
    pytester: pytest.Pytester, example: str, framework: str
) -> None:
    """docs/testing.md's examples, run as a user runs them: in a fresh
    process (each configures its framework), warnings as errors."""
    pytest.importorskip(framework)
    if framework == "fastapi":
        pytest.importorskip("httpx")
    shutil.copy(EXAMPLES / example, pytester.path / example)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-W",
        "error",
        # Starlette's TestClient itself, in some versions: not the example's doing.
        "-W",
        "ignore:Using `httpx` with `starlette.testclient`",
        example,
    )
    result.assert_outcomes(passed=3)


def test_the_helpers_import_without_pytest() -> None:
    """testing.py serves tests of any runner: without pytest it imports, with
    its helpers (the fixtures are the plugin module's); and the package never
    imports pytest."""
    code = (
        "import sys\n"
        "sys.modules['pytest'] = None\n"  # an import of pytest now fails
        "import jobcredits_plugin.testing as t\n"
        "print(hasattr(t, 'make_ledger'), hasattr(t, 'jobcredits_ledger'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["True", "False"]
    code = "import sys, jobcredits_plugin\nprint('pytest' in sys.modules)\n"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"
