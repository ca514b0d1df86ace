"""Choosing a partition for a message (paper P13: at random, or by a key and a
partitioning function).

Keyed messages go where Kafka's Java client and librdkafka's `murmur2_random`
partitioner put them, so mixed clients agree on a key's partition:

    partition = (murmur2(key) & 0x7fffffff) % partition_count

murmur2 is Kafka's variant of MurmurHash2 (`org.apache.kafka.common.utils.Utils.murmur2`):
seed 0x9747b28c, m 0x5bd1e995, r 24, 4-byte little-endian blocks, all arithmetic on
32 bits; `& 0x7fffffff` is Java's `toPositive` (not `abs`, which differs for
Integer.MIN_VALUE). A message without a key goes round-robin (the default) or to a
random partition.
"""
from __future__ import annotations

import itertools
import random
import struct
import threading

__all__ = ["murmur2", "to_positive", "Partitioner", "KEYLESS_MODES"]

SEED = 0x9747B28C
M = 0x5BD1E995
R = 24
MASK32 = 0xFFFFFFFF
KEYLESS_MODES = ("round_robin", "random", "sticky")


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of `data` as a signed 32-bit int (what Java's Utils.murmur2
    returns)."""
    length = len(data)
    h = (SEED ^ length) & MASK32
    end = length & ~3
    for (k,) in struct.iter_unpack("<I", memoryview(data)[:end]) if end else ():
        k = (k * M) & MASK32
        k ^= k >> R
        k = (k * M) & MASK32
        h = ((h * M) & MASK32) ^ k
    tail = length & 3
    if tail == 3:
        h ^= data[end + 2] << 16
    if tail >= 2:
        h ^= data[end + 1] << 8
    if tail >= 1:
        h ^= data[end]
        h = (h * M) & MASK32
    h ^= h >> 13
    h = (h * M) & MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def to_positive(n: int) -> int:
    """Java's Utils.toPositive: clear the sign bit (0x80000000 -> 0, unlike abs)."""
    return n & 0x7FFFFFFF


class Partitioner:
    """partition(topic, key, partition_count) -> partition.

    Keys: murmur2 as above. No key: `keyless` = "round_robin" (one counter per topic,
    starting at a random partition) or "random". "sticky" (the Java client's and
    librdkafka's default for null keys: one partition until its batch is sealed, then
    the next) needs to know about batches, so the Producer implements it; here it
    behaves as round_robin. Thread-safe.
    """

    def __init__(self, keyless: str = "round_robin"):
        if keyless not in KEYLESS_MODES:
            raise ValueError(f"keyless partitioning {keyless!r} is not one of {KEYLESS_MODES}")
        self.keyless = keyless
        self._counters: dict[str, itertools.count] = {}
        self._lock = threading.Lock()

    def partition(self, topic: str, key: bytes | None, partition_count: int) -> int:
        if partition_count < 1:
            raise ValueError(f"topic {topic!r} has {partition_count} partitions")
        if key is not None:
            return to_positive(murmur2(key)) % partition_count
        if self.keyless == "random":
            return random.randrange(partition_count)
        counter = self._counters.get(topic)
        if counter is None:
            with self._lock:
                counter = self._counters.setdefault(
                    topic, itertools.count(random.randrange(1 << 16)))
        return next(counter) % partition_count   # next() on a count is atomic in CPython
