"""Ready-made plugins: metrics and logs for the ledger's hooks.

Each module is one plugin on one optional library, imported only when you
import the module (a missing library raises an ImportError that names the
extra to install):

- :mod:`jobcredits_plugin.contrib.prometheus`: ``PrometheusMetrics`` (extra ``prometheus``)
- :mod:`jobcredits_plugin.contrib.otel`: ``OpenTelemetryMetrics`` (extra ``otel``)
- :mod:`jobcredits_plugin.contrib.logging`: ``LoggingPlugin`` and ``SlowStoreLogPlugin``
  (standard library only)
"""
