"""Sphinx configuration for the jobcredits-plugin documentation.

Built with warnings as errors and nitpicky cross-references
(``tox -e docs``). Autodoc imports the package from ``../src`` so the docs
build without installing it. There is no intersphinx: the build must work
offline, so the few names from outside the project that the API signatures
mention are listed in ``nitpick_ignore`` below.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from jobcredits_plugin import __version__  # noqa: E402

project = "jobcredits-plugin"
author = "jobcredits-plugin developers"
copyright = "jobcredits-plugin developers"  # noqa: A001
release = __version__
version = ".".join(__version__.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# -- MyST ---------------------------------------------------------------------

myst_enable_extensions = ["colon_fence", "deflist"]
# Headings get no automatic anchors: every cross-page link goes to an explicit
# ``(label)=`` target, so renaming a heading never breaks a link (and the
# error pages' anchors are the ones the problem+json ``type`` URIs promise).
myst_heading_anchors = 0

# -- autodoc --------------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_preserve_defaults = True  # show ``clock=time.time``, not a repr
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": False}
python_use_unqualified_type_names = True
add_module_names = False

# -- nitpicky -----------------------------------------------------------------------

nitpicky = True
# Names from outside this project that appear in signatures and docstrings.
# Without intersphinx (offline build) they cannot resolve; everything of our
# own must.
nitpick_ignore: list[tuple[str, str]] = []

# -- HTML ---------------------------------------------------------------------------

html_theme = "furo"
html_title = f"jobcredits-plugin {release}"
html_static_path: list[str] = []
