"""Importing the adapter without Django names the extra to install."""

from __future__ import annotations

import importlib
import sys

import pytest

pytest.importorskip("django")


def test_missing_django_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Django, importing the adapter says which extra to install."""
    monkeypatch.setitem(sys.modules, "django", None)  # makes `import django` fail
    monkeypatch.delitem(sys.modules, "jobcredits_plugin.django")
    with pytest.raises(ImportError, match=r'pip install "jobcredits-plugin\[django\]"'):
        importlib.import_module("jobcredits_plugin.django")
