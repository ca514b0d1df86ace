"""Counters a worker keeps in memory and publishes to the control block on each
heartbeat (cheap on the request path: integer adds and one bisect)."""
from __future__ import annotations

import bisect
from collections import defaultdict

# Upper bounds (seconds) of the latency histogram buckets, for requests and fsyncs;
# a last, implicit bucket holds everything slower (+Inf).
LATENCY_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
MAX_API_KEY = 63  # the control block has a row per api key 0..63


class Histogram:
    """Cumulative-free bucket counts (one per LATENCY_BUCKETS bound, then +Inf), a
    count and a sum in microseconds."""

    __slots__ = ("buckets", "count", "sum_us")

    def __init__(self):
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.count = 0
        self.sum_us = 0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.count += 1
        self.sum_us += int(seconds * 1_000_000)

    def row(self) -> list[int]:
        return [self.count, self.sum_us, *self.buckets]


class WorkerStats:
    def __init__(self):
        self.requests = 0
        self.latency_by_api: dict[int, Histogram] = defaultdict(Histogram)
        self.fsync = Histogram()
        self.messages_in = 0
        self.bytes_in = 0
        self.bytes_out = 0          # record bytes sent by sendfile
        # per partition: messages, bytes, appends
        self.partition_in: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0, 0])
        self.partition_out: dict[tuple[str, int], int] = defaultdict(int)

    def answered(self, api_key: int, seconds: float) -> None:
        """A response is ready, `seconds` after its request was read."""
        self.latency_by_api[api_key].observe(seconds)

    def produced(self, tp, messages: int, size: int) -> None:
        self.messages_in += messages
        self.bytes_in += size
        counters = self.partition_in[tp]
        counters[0] += messages
        counters[1] += size
        counters[2] += 1

    def fetched(self, tp, size: int) -> None:
        self.partition_out[tp] += size
