"""pybroker.testing.history on hand-built histories: a clean one, and one per anomaly,
each built so the anomaly's count is nonzero (and the others stay zero)."""
from __future__ import annotations

from pybroker.testing.history import EXAMPLES, Ack, Delivery, LogRecord, check


def clean(n: int = 6, partitions: int = 2):
    """n writes of producer "i" (idempotent), alternating over the partitions, acked,
    logged and delivered once each, in order."""
    acks, log, delivered, next_offset = [], [], [], [0] * partitions
    for seq in range(n):
        p = seq % partitions
        value = b"i-%d" % seq
        acks.append(Ack(value, p, next_offset[p], "i", True))
        log.append(LogRecord(p, next_offset[p], value))
        delivered.append(Delivery(value, p, next_offset[p]))
        next_offset[p] += 1
    return acks, delivered, log


def test_a_clean_history_has_no_anomaly():
    report = check(*clean())
    assert report.violations() == []
    assert set(report.counts().values()) == {0}
    assert (report.acked, report.delivered, report.log_records) == (6, 6, 6)
    assert report.acks_by_producer == {"i": 6}


def test_redelivery_after_a_rewind_is_not_a_skip():
    acks, delivered, log = clean(6, 1)
    # the consumer rewinds to its committed offset 2 and delivers 2..5 again
    delivered = delivered[:4] + delivered[2:]
    report = check(acks, delivered, log)
    assert report.violations() == []
    assert report.redelivered == 2


def test_an_acked_value_missing_from_the_log_is_lost_and_unseen():
    acks, delivered, log = clean(6, 1)
    del log[5]           # the log was truncated below the last ack
    del delivered[5]
    report = check(acks, delivered, log)
    assert report.lost.count == 1 and report.lost.examples[0]["value"] == b"i-5"
    assert report.unseen.count == 1
    assert report.inconsistent.count == 0   # an empty offset of a lost value: lost only
    assert report.poll_skips.count == 0


def test_an_acked_value_never_delivered_is_unseen():
    acks, delivered, log = clean(6, 2)
    del delivered[-1]    # i-5, at partition 1 offset 2: the drain ended before it
    report = check(acks, delivered, log)
    assert report.counts() == {"lost": 0, "unseen": 1, "inconsistent": 0,
                               "idempotent_duplicates": 0, "plain_duplicates": 0,
                               "idempotent_reorders": 0, "poll_skips": 0}
    assert report.unseen.examples == [{"value": b"i-5", "partition": 1, "offset": 2}]


def test_an_ack_offset_holding_another_value_is_inconsistent():
    acks, delivered, log = clean(4, 1)
    acks[1] = acks[1]._replace(offset=2)   # acked at 2, but the log has it at 1
    report = check(acks, delivered, log)
    assert report.inconsistent.count == 1
    example = report.inconsistent.examples[0]
    assert example["kind"] == "ack offset holds another value"
    assert (example["log_value"], example["log_positions"]) == (b"i-2", [(0, 1)])
    assert report.lost.count == 0


def test_an_offset_reused_by_another_value_is_lost_and_inconsistent():
    acks, delivered, log = clean(4, 1)
    log[3] = LogRecord(0, 3, b"p-99")      # offset 3 acked for i-3 now holds p-99
    delivered[3] = Delivery(b"p-99", 0, 3)
    report = check(acks, delivered, log)
    assert report.lost.count == 1
    assert report.inconsistent.count == 1
    assert report.unseen.count == 1


def test_the_consumer_seeing_another_value_than_the_log_is_inconsistent():
    acks, delivered, log = clean(4, 1)
    delivered.append(Delivery(b"i-9", 0, 2))    # offset 2 again, with another value
    delivered.append(Delivery(b"i-8", 0, 7))    # an offset the log does not hold
    report = check(acks, delivered, log)
    kinds = sorted(e["kind"] for e in report.inconsistent.examples)
    assert kinds == ["consumer saw an offset the log does not hold",
                     "consumer saw an offset with two values"]
    assert report.inconsistent.count == 2


def test_duplicates_split_by_producer():
    acks, delivered, log = clean(4, 1)
    acks += [Ack(b"p-0", 0, 4, "p", False), Ack(b"p-1", 0, 6, "p", False)]
    log += [LogRecord(0, 4, b"p-0"), LogRecord(0, 5, b"p-0"),      # a retry duplicate
            LogRecord(0, 6, b"p-1"), LogRecord(0, 7, b"i-3")]      # i-3 written twice
    delivered += [Delivery(v, 0, o) for o, v in
                  ((4, b"p-0"), (5, b"p-0"), (6, b"p-1"), (7, b"i-3"))]
    report = check(acks, delivered, log)
    assert report.plain_duplicates.count == 1
    assert report.plain_duplicates.examples[0]["positions"] == [(0, 4), (0, 5)]
    assert report.idempotent_duplicates.count == 1
    assert report.idempotent_duplicates.examples[0] == {
        "value": b"i-3", "producer": "i", "positions": [(0, 3), (0, 7)]}
    assert [v.split(":")[0] for v in report.violations()] == ["idempotent_duplicates"]


def test_an_unacked_duplicate_is_attributed_by_its_value():
    acks, delivered, log = clean(2, 1)
    acks.append(Ack(b"p-0", 0, 2, "p", False))
    log += [LogRecord(0, 2, b"p-0"), LogRecord(0, 3, b"p-7"), LogRecord(0, 4, b"p-7")]
    delivered += [Delivery(b"p-0", 0, 2), Delivery(b"p-7", 0, 3), Delivery(b"p-7", 0, 4)]
    report = check(acks, delivered, log)
    assert report.plain_duplicates.count == 1      # p-7 never acked: producer "p"
    assert report.idempotent_duplicates.count == 0
    assert report.unacked_in_log == 1


def test_a_skipped_offset_is_a_poll_skip_unless_delivered_before():
    acks, delivered, log = clean(8, 1)
    # 0 1 2 | 5 6 7: offsets 3 and 4 were never delivered
    report = check(acks, delivered[:3] + delivered[5:], log)
    assert report.poll_skips.count == 1
    assert report.poll_skips.examples[0] == {"partition": 0, "after": 2, "to": 5,
                                             "skipped": 2, "first_skipped": 3}
    assert report.unseen.count == 2
    # 0..5, rewind to 2, then 2 and 6 7: the jump 2 -> 6 skips only what came before
    report = check(acks, delivered[:6] + delivered[2:3] + delivered[6:], log)
    assert report.poll_skips.count == 0


def test_the_first_delivery_counts_from_the_start_offset():
    acks, delivered, log = clean(4, 1)
    report = check(acks, delivered[2:], log)
    assert report.poll_skips.count == 1
    report = check(acks[2:], delivered[2:], log, start_offsets={0: 2})
    assert report.poll_skips.count == 0 and report.violations() == []


def test_examples_are_bounded_and_counts_complete():
    acks, delivered, log = clean(20, 1)
    report = check(acks, [], log)
    assert report.unseen.count == 20
    assert len(report.unseen.examples) == EXAMPLES


def test_an_idempotent_producer_out_of_order_in_the_log_is_a_reorder():
    # i-2 logged before i-1 in partition 0; p-1 before p-0 is allowed (not idempotent)
    acks = [Ack(b"i-0", 0, 0, "i", True), Ack(b"i-2", 0, 1, "i", True),
            Ack(b"i-1", 0, 2, "i", True), Ack(b"p-1", 0, 3, "p", False),
            Ack(b"p-0", 0, 4, "p", False)]
    log = [LogRecord(a.partition, a.offset, a.value) for a in acks]
    delivered = [Delivery(a.value, a.partition, a.offset) for a in acks]
    report = check(acks, delivered, log)
    assert report.idempotent_reorders.count == 1
    assert report.idempotent_reorders.examples[0] == {
        "producer": "i", "partition": 0, "offset": 2, "seq": 1,
        "after": {"offset": 1, "seq": 2}}
    assert [v.split(":")[0] for v in report.violations()] == ["idempotent_reorders"]


def test_order_is_per_partition_and_a_duplicate_copy_is_not_a_reorder():
    acks, delivered, log = clean(6, 2)       # i-0 i-2 i-4 in p0; i-1 i-3 i-5 in p1
    log.append(LogRecord(0, 3, b"i-2"))      # a late second copy of i-2
    delivered.append(Delivery(b"i-2", 0, 3))
    report = check(acks, delivered, log)
    assert report.idempotent_reorders.count == 0
    assert report.idempotent_duplicates.count == 1
