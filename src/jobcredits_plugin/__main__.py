"""``python -m jobcredits_plugin``: the ``jobcredits`` command, for when the
console script is not on ``PATH`` (a venv not activated, a container)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
