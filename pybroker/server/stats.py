"""Counters a worker keeps in memory and publishes to the control block on each
heartbeat (cheap on the request path: plain integer adds)."""
from __future__ import annotations

from collections import defaultdict


class WorkerStats:
    def __init__(self):
        self.requests = 0
        self.requests_by_api: dict[int, int] = defaultdict(int)
        self.messages_in = 0
        self.bytes_in = 0
        self.bytes_out = 0          # record bytes sent by sendfile
        self.bytes_fetched = 0      # record bytes put in fetch responses
        self.partition_in: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])

    def request(self, api_key: int) -> None:
        self.requests += 1
        self.requests_by_api[api_key] += 1

    def produced(self, tp, messages: int, size: int) -> None:
        self.messages_in += messages
        self.bytes_in += size
        counters = self.partition_in[tp]
        counters[0] += messages
        counters[1] += size
