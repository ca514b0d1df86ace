"""A history checker for produce/consume soaks (the nemesis test; the replication work).

Inputs, all plain data gathered by the test:
  acks       Ack(value, partition, offset, producer, idempotent) per delivery report
             without error (the broker acknowledged the write at that offset);
  delivered  Delivery(value, partition, offset) per message a group consumer handed
             to the application, in delivery order (only the order within one
             partition matters);
  log        LogRecord(partition, offset, value) per record of the final log, read
             whole from offset 0 to the high watermark of every partition.

Every write's value must be unique (e.g. b"<producer>-<seq>"): a value is the write's
identity, so "the same value at two offsets" is a duplicate and never a coincidence.

check() returns a Report: a count and the first EXAMPLES examples of each anomaly.
    lost          acked, but the value is nowhere in the final log
    unseen        acked, but never delivered to the group consumer
    inconsistent  an ack's (partition, offset) holds another value in the log, or the
                  value sits at another offset (an empty offset of a lost value is
                  counted as lost only); a value acked at two offsets; the consumer saw
                  an offset with a value other than the log's, or with two values, or
                  an offset the log does not hold; the log holds an offset twice
    duplicates    a value at more than one offset of the final log, split by the
                  producer that wrote it: `idempotent_duplicates` (must be 0) and
                  `plain_duplicates` (a non-idempotent producer's retries: allowed,
                  reported)
    idempotent_reorders
                  per partition, an idempotent producer's values in log order do not
                  have increasing sequence numbers (idempotence keeps a producer's
                  order per partition; a duplicate's second copy is counted as a
                  duplicate only)
    poll_skips    per partition the consumer delivered offset o, then o+k with k > 1,
                  while the log holds offsets in (o, o+k) that it had not delivered
                  before either (at-least-once with commit-after-processing re-delivers
                  but never skips). The consumer's first delivery on a partition counts
                  as coming after offset start-1 (start: where it began, default 0).

`Report.violations()` names every nonzero count that a correct at-least-once system
must keep at zero (all but plain duplicates); a test asserts it is empty.
Pure functions of their inputs: no I/O, no clock.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple

EXAMPLES = 5  # examples kept per anomaly; the counts are always complete


class Ack(NamedTuple):
    value: bytes
    partition: int
    offset: int
    producer: str
    idempotent: bool


class Delivery(NamedTuple):
    value: bytes
    partition: int
    offset: int


class LogRecord(NamedTuple):
    partition: int
    offset: int
    value: bytes


def producer_from_value(value: bytes) -> str | None:
    """The producer name of a b"<producer>-<seq>" value (None if it has no '-')."""
    head, sep, _ = value.rpartition(b"-")
    return head.decode(errors="replace") if sep else None


def seq_from_value(value: bytes) -> int | None:
    """The sequence number of a b"<producer>-<seq>" value (None if it has none)."""
    _, sep, tail = value.rpartition(b"-")
    return int(tail) if sep and tail.isdigit() else None


@dataclass
class Anomaly:
    """One kind of anomaly: how many, and the first few instances (as dicts)."""
    count: int = 0
    examples: list = field(default_factory=list)

    def add(self, **example) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)


@dataclass
class Report:
    acked: int = 0                 # distinct acked values
    acks_by_producer: dict = field(default_factory=dict)
    delivered: int = 0             # deliveries, re-deliveries included
    redelivered: int = 0           # deliveries of a (partition, offset) seen before
    log_records: int = 0
    unacked_in_log: int = 0        # distinct log values never acked (failed or unreported)
    lost: Anomaly = field(default_factory=Anomaly)
    unseen: Anomaly = field(default_factory=Anomaly)
    inconsistent: Anomaly = field(default_factory=Anomaly)
    idempotent_duplicates: Anomaly = field(default_factory=Anomaly)
    plain_duplicates: Anomaly = field(default_factory=Anomaly)
    idempotent_reorders: Anomaly = field(default_factory=Anomaly)
    poll_skips: Anomaly = field(default_factory=Anomaly)

    MUST_BE_ZERO = ("lost", "unseen", "inconsistent", "idempotent_duplicates",
                    "idempotent_reorders", "poll_skips")
    KINDS = ("lost", "unseen", "inconsistent", "idempotent_duplicates", "plain_duplicates",
             "idempotent_reorders", "poll_skips")

    def counts(self) -> dict:
        return {name: getattr(self, name).count for name in self.KINDS}

    def violations(self) -> list[str]:
        """'<kind>: <count>, e.g. [...]' for every must-be-zero kind that is not."""
        return [f"{name}: {getattr(self, name).count}, e.g. {getattr(self, name).examples}"
                for name in self.MUST_BE_ZERO if getattr(self, name).count]

    def summary(self) -> str:
        return (f"acked={self.acked} {self.acks_by_producer} delivered={self.delivered} "
                f"(redelivered {self.redelivered}) log={self.log_records} "
                f"unacked_in_log={self.unacked_in_log} " +
                " ".join(f"{k}={v}" for k, v in self.counts().items()))


def check(acks: Iterable[Ack], delivered: Iterable[Delivery], log: Iterable[LogRecord],
          start_offsets: dict[int, int] | None = None,
          producer_of: Callable[[bytes], str | None] = producer_from_value,
          seq_of: Callable[[bytes], int | None] = seq_from_value) -> Report:
    """The Report of one history (see the module doc). `start_offsets`: {partition:
    the offset the group consumer began at} (default 0 everywhere). `producer_of`
    names the producer of a value that was never acked (for the duplicate split);
    `seq_of` its sequence number (for the order of idempotent producers)."""
    acks, delivered, log = list(acks), list(delivered), list(log)
    report = Report(delivered=len(delivered), log_records=len(log))
    start_offsets = start_offsets or {}

    at: dict[tuple[int, int], bytes] = {}            # (partition, offset) -> log value
    where: dict[bytes, list[tuple[int, int]]] = defaultdict(list)  # value -> positions
    for rec in log:
        key = (rec.partition, rec.offset)
        if key in at:
            report.inconsistent.add(kind="log holds an offset twice", partition=rec.partition,
                                    offset=rec.offset, values=[at[key], rec.value])
            continue
        at[key] = rec.value
        where[rec.value].append(key)

    _check_acks(report, acks, at, where)
    seen_values = _check_deliveries(report, delivered, at, start_offsets)
    acked_values = {a.value: a for a in acks}
    for value, ack in acked_values.items():
        if value not in seen_values:
            report.unseen.add(value=value, partition=ack.partition, offset=ack.offset)
    _check_duplicates(report, where, acked_values, producer_of)
    _check_order(report, log, acked_values, producer_of, seq_of)
    report.unacked_in_log = sum(1 for v in where if v not in acked_values)
    return report


def _check_acks(report: Report, acks: list[Ack], at: dict, where: dict) -> None:
    by_value: dict[bytes, Ack] = {}
    per_producer: dict[str, int] = defaultdict(int)
    for ack in acks:
        earlier = by_value.get(ack.value)
        if earlier is not None:  # one write acked twice: must be at one offset
            if (earlier.partition, earlier.offset) != (ack.partition, ack.offset):
                report.inconsistent.add(kind="value acked at two offsets", value=ack.value,
                                        first=(earlier.partition, earlier.offset),
                                        second=(ack.partition, ack.offset))
            continue
        by_value[ack.value] = ack
        per_producer[ack.producer] += 1
        if ack.value not in where:
            report.lost.add(value=ack.value, partition=ack.partition, offset=ack.offset,
                            producer=ack.producer)
        logged = at.get((ack.partition, ack.offset))
        # a lost value at an empty offset is lost, not also inconsistent; an offset
        # reused by another value, or the value found elsewhere, is inconsistent
        if logged != ack.value and (logged is not None or ack.value in where):
            report.inconsistent.add(kind="ack offset holds another value", value=ack.value,
                                    partition=ack.partition, offset=ack.offset,
                                    log_value=logged, log_positions=where.get(ack.value, []))
    report.acked = len(by_value)
    report.acks_by_producer = dict(per_producer)


def _check_deliveries(report: Report, delivered: list[Delivery], at: dict,
                      start_offsets: dict) -> set[bytes]:
    """Inconsistent offsets and poll skips of the consumer; returns the values seen."""
    seen_values: set[bytes] = set()
    seen_at: dict[tuple[int, int], bytes] = {}
    done: dict[int, set[int]] = defaultdict(set)     # partition -> offsets delivered
    last: dict[int, int] = {}                        # partition -> last offset delivered
    for d in delivered:
        key = (d.partition, d.offset)
        seen_values.add(d.value)
        before = seen_at.get(key)
        if before is not None:
            report.redelivered += 1
            if before != d.value:
                report.inconsistent.add(kind="consumer saw an offset with two values",
                                        partition=d.partition, offset=d.offset,
                                        values=[before, d.value])
        else:
            seen_at[key] = d.value
            logged = at.get(key)
            if logged != d.value:
                report.inconsistent.add(
                    kind="consumer value differs from the log" if logged is not None
                    else "consumer saw an offset the log does not hold",
                    partition=d.partition, offset=d.offset, value=d.value, log_value=logged)
        prev = last.get(d.partition, start_offsets.get(d.partition, 0) - 1)
        if d.offset > prev + 1:
            missed = [o for o in range(prev + 1, d.offset)
                      if (d.partition, o) in at and o not in done[d.partition]]
            if missed:
                report.poll_skips.add(partition=d.partition, after=prev, to=d.offset,
                                      skipped=len(missed), first_skipped=missed[0])
        last[d.partition] = d.offset
        done[d.partition].add(d.offset)
    return seen_values


def _check_duplicates(report: Report, where: dict, acked: dict,
                      producer_of: Callable[[bytes], str | None]) -> None:
    idempotent = {a.producer: a.idempotent for a in acked.values()}
    for value, positions in where.items():
        if len(positions) < 2:
            continue
        producer = acked[value].producer if value in acked else producer_of(value)
        # a producer we know nothing of counts as idempotent: a duplicate it cannot
        # explain is reported where it fails the check, not where it is excused
        bucket = (report.plain_duplicates if idempotent.get(producer, True) is False
                  else report.idempotent_duplicates)
        bucket.add(value=value, producer=producer, positions=sorted(positions))


def _check_order(report: Report, log: list[LogRecord], acked: dict,
                 producer_of: Callable[[bytes], str | None],
                 seq_of: Callable[[bytes], int | None]) -> None:
    idempotent = {a.producer for a in acked.values() if a.idempotent}
    last: dict[tuple[int, str], tuple[int, int]] = {}  # (partition, producer) -> (offset, seq)
    counted: set[bytes] = set()
    for rec in sorted(log, key=lambda r: (r.partition, r.offset)):
        if rec.value in counted:
            continue   # a duplicate's later copy: counted as a duplicate
        counted.add(rec.value)
        producer = acked[rec.value].producer if rec.value in acked else producer_of(rec.value)
        seq = seq_of(rec.value)
        if producer not in idempotent or seq is None:
            continue
        key = (rec.partition, producer)
        before = last.get(key)
        if before is not None and seq < before[1]:
            report.idempotent_reorders.add(producer=producer, partition=rec.partition,
                                           offset=rec.offset, seq=seq,
                                           after=dict(offset=before[0], seq=before[1]))
        last[key] = (rec.offset, max(seq, before[1]) if before else seq)
