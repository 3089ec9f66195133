"""The reader's own app, as the documentation's snippets name it (``myapp.audit:AuditTrail``,
``myapp.billing_hooks``, ``myapp.auth.current_account``): the smallest modules that make
those import strings resolve when conftest.py runs the pages' code blocks."""
