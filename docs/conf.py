"""Sphinx configuration for the jobcredits-plugin documentation.

Built with warnings as errors and nitpicky cross-references
(``tox -e docs``). Autodoc imports the package from ``../src`` so the docs
build without installing it. There is no intersphinx: the build must work
offline, so the few names from outside the project that the API signatures
mention are listed in ``nitpick_ignore`` below.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import attrs

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from jobcredits_plugin import __version__  # noqa: E402

project = "jobcredits-plugin"
author = "jobcredits-plugin developers"
copyright = "jobcredits-plugin developers"
release = __version__
version = ".".join(__version__.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# -- MyST -----------------------------------------------------------------------

myst_enable_extensions = ["colon_fence", "deflist"]
# Headings get no automatic anchors: every cross-page link goes to an explicit
# ``(label)=`` target, so renaming a heading never breaks a link, and the
# anchors of errors.md are exactly the ones the problem+json ``type`` URIs
# promise (``errors.html#invalid-job-id``, ...).
myst_heading_anchors = 0

# -- autodoc --------------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_preserve_defaults = True  # show ``clock=time.time``, not a repr
autodoc_typehints = "signature"
python_use_unqualified_type_names = True
add_module_names = False

# -- nitpicky -------------------------------------------------------------------

nitpicky = True
# Names from outside this project that appear in signatures and docstrings.
# Without intersphinx (offline build) they cannot resolve; everything of our
# own must.
nitpick_ignore = [
    # pluggy: the plugin manager a ledger owns, and the error check_pending raises.
    ("py:class", "pluggy._manager.PluginManager"),
    ("py:class", "pluggy.PluginValidationError"),
    # The standard library, as it appears in signatures.
    ("py:class", "collections.abc.Callable"),
    ("py:class", "collections.abc.Iterable"),
    ("py:class", "collections.abc.Sequence"),
    ("py:class", "os.PathLike"),
    ("py:class", "logging.Logger"),
    ("py:class", "re.Pattern"),
    # The metrics libraries the ready plugins take objects of.
    ("py:class", "prometheus_client.registry.CollectorRegistry"),
    ("py:class", "MeterProvider"),
    ("py:class", "opentelemetry.metrics.MeterProvider"),
]

# -- HTML -----------------------------------------------------------------------

html_theme = "furo"
html_title = f"jobcredits-plugin {release}"

# -- attrs defaults in signatures -------------------------------------------------

_ATTRS_DEFAULT = re.compile(r"attr_dict\['(\w+)'\]\.default")


def _attrs_defaults(
    app: Any,
    what: str,
    name: str,
    obj: Any,
    options: Any,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str, str | None] | None:
    """Show an attrs class's defaults as values.

    With ``autodoc_preserve_defaults`` the ``__init__`` that attrs generates
    shows its defaults as their source text, ``attr_dict['balance'].default``;
    put the value there instead.
    """
    if what != "class" or not signature or not attrs.has(obj):
        return None
    fields = attrs.fields_dict(obj)

    def value(match: re.Match[str]) -> str:
        default = fields[match.group(1)].default
        return "..." if isinstance(default, attrs.Factory) else repr(default)

    return _ATTRS_DEFAULT.sub(value, signature), return_annotation


def setup(app: Any) -> None:
    app.connect("autodoc-process-signature", _attrs_defaults)
