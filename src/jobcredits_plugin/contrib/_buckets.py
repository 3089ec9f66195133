"""What the metrics plugins share: the store latency histogram's buckets."""

from __future__ import annotations

#: Bucket boundaries (seconds) of the store latency histogram, shared by the
#: Prometheus and OpenTelemetry plugins so a latency panel reads the same from
#: either. A memory store answers in microseconds, SQLite and a local Redis in
#: 0.1-5 ms, a remote PostgreSQL in 1-50 ms; the top buckets catch lock waits
#: and the store timeouts (SQLite's default is 5 s), so a p99 computed from
#: them still means something when the store is in trouble.
STORE_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    5.0,
)
