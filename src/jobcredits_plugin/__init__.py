"""Charge a multi-call API job exactly once.

The first call with a job id charges the account, follow-ups with the same id
ride free for a window, a failed job is refunded, old jobs expire. See
https://jobcredits-plugin.readthedocs.io/ for the guide.

This module imports no web framework and no database driver: those live in
the adapters (``jobcredits_plugin.flask``, ...) and the stores, imported only
when used.
"""

from ._call import current_charge
from ._decorator import charges_credit
from ._errors import (
    ConfigurationError,
    InsufficientCredits,
    InvalidAccount,
    InvalidArgument,
    InvalidJobId,
    JobCreditsError,
    JobExhausted,
    JobInProgress,
    MissingJobId,
    NotAuthenticated,
    StoreUnavailable,
)
from ._headers import header
from ._journal import JournalCursor
from ._ledger import Ledger
from ._records import Charge, JobRecord, JournalEntry
from ._version import __version__
from ._warnings import InProcessStoreWarning, JobCreditsWarning
from .hookspecs import hookimpl

__all__ = [
    "Charge",
    "ConfigurationError",
    "InProcessStoreWarning",
    "InsufficientCredits",
    "InvalidAccount",
    "InvalidArgument",
    "InvalidJobId",
    "JobCreditsError",
    "JobCreditsWarning",
    "JobExhausted",
    "JobInProgress",
    "JobRecord",
    "JournalCursor",
    "JournalEntry",
    "Ledger",
    "MissingJobId",
    "NotAuthenticated",
    "StoreUnavailable",
    "__version__",
    "charges_credit",
    "current_charge",
    "header",
    "hookimpl",
]
