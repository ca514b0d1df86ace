"""Standard Kafka clients in consumer groups against a real 2-worker broker: the
broker's group coordinator with committed offsets in the ZooKeeper offset registry.

- confluent-kafka (librdkafka): a group of 3 consumer processes (subscribe) over 6
  partitions consumes 100,000 messages; one of them is SIGKILLed mid-way and the other
  two finish: every message was consumed by someone (at-least-once: duplicates only
  from the killed member's uncommitted tail), and the final committed offsets, read
  at the paper's ZooKeeper path, are the log end offsets.
- a restarted group resumes from its committed offsets;
- kafka-python's group consumer;
- SIGKILL of the coordinating worker loses no committed offset, and the group goes on.

Consumers run as subprocesses of this file (`python test_groups_clients.py consume
...`), so one can be killed for real. Every wait is a bounded poll.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import (Consumer, ConsumerGroupState, KafkaError, KafkaException,
                             Producer, TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic

from pybroker.protocol import ApiKey
from pybroker.testing import poll

CLIENT_TIMEOUT_S = 30.0
WAIT_S = 120.0
SESSION_MS = 6_000          # a SIGKILLed member is noticed after this
HEARTBEAT_MS = 500
POLL_S = 0.1
# commit errors after which a group member rejoins (and re-reads committed offsets)
REJOIN_CODES = (KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
                KafkaError.REBALANCE_IN_PROGRESS, KafkaError._NO_OFFSET)


# --- the consumer process ------------------------------------------------------------------

def consumer_main(bootstrap: str, group: str, topic: str, out_path: str,
                  pace_s: float) -> int:
    """A confluent-kafka group member: appends "partition offset" per message to
    out_path (flushed before its offset is stored for the next auto-commit, so what is
    committed was recorded: at-least-once), and "assigned p,p" after each rebalance.
    SIGTERM: close (final commit, LeaveGroup) and exit 0."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    out = open(out_path, "a", buffering=1 << 16)

    def on_assign(_consumer, partitions):
        out.write("assigned %s\n" % ",".join(str(p.partition) for p in partitions))
        out.flush()

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "client.id": Path(out_path).stem,
                         "auto.offset.reset": "earliest", "enable.auto.commit": True,
                         "auto.commit.interval.ms": 200, "enable.auto.offset.store": False,
                         "session.timeout.ms": SESSION_MS,
                         "heartbeat.interval.ms": HEARTBEAT_MS})
    consumer.subscribe([topic], on_assign=on_assign)
    while not stop:
        batch = consumer.consume(num_messages=200, timeout=0.2)
        good = [m for m in batch if m.error() is None]
        for m in batch:
            if m.error() is not None:
                out.write(f"error {m.error()}\n")
        for m in good:
            out.write(f"{m.partition()} {m.offset()}\n")
        out.flush()
        if good:
            consumer.store_offsets(offsets=_next_offsets(good))
            time.sleep(pace_s)
    consumer.close()
    out.close()
    return 0


def _next_offsets(messages) -> list:
    last = {}
    for m in messages:
        last[(m.topic(), m.partition())] = m.offset()
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


# --- helpers --------------------------------------------------------------------------------

def create_topic(broker, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)],
                        operation_timeout=CLIENT_TIMEOUT_S)[name].result(CLIENT_TIMEOUT_S)


def produce(broker, topic: str, partitions: int, count: int, start: int = 0) -> None:
    """count messages, spread round-robin over the partitions, acks=all."""
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                         "linger.ms": 5})
    errors = []

    def delivered(err, _msg):
        if err is not None:
            errors.append(err)
    for i in range(start, start + count):
        while True:
            try:
                producer.produce(topic, value=b"message-%d" % i, partition=i % partitions,
                                 on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(WAIT_S) == 0
    assert errors == []


def end_offsets(broker, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "watermarks"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                  timeout=CLIENT_TIMEOUT_S)[1]
                for p in range(partitions)}
    finally:
        consumer.close()


def zk_offsets(zk, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    """The committed offsets at the paper's registry path (None where there is none)."""
    found = {}
    for p in range(partitions):
        path = f"/consumers/{group}/offsets/{topic}/{p}"
        found[p] = int(zk.get(path)[0]) if zk.exists(path) else None
    return found


def wait_for(predicate, what: str, on_timeout=None):
    return poll.wait_for(predicate, what, WAIT_S, POLL_S, detail=on_timeout)


def read_output(path: Path) -> tuple[list[tuple[int, int]], list[str], list[str]]:
    """(consumed (partition, offset) pairs, 'assigned' lines, error lines)."""
    consumed, assigned, errors = [], [], []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return consumed, assigned, errors
    for line in text.splitlines():
        if line.startswith("assigned"):
            assigned.append(line)
        elif line.startswith("error"):
            errors.append(line)
        elif line.count(" ") == 1:
            p, o = line.split()
            consumed.append((int(p), int(o)))
        # else: a line torn by SIGKILL; the message is re-delivered to another member
    return consumed, assigned, errors


def start_consumer(broker, group: str, topic: str, out: Path, pace_s: float):
    return subprocess.Popen([sys.executable, __file__, "consume", broker.bootstrap, group,
                             topic, str(out), str(pace_s)],
                            stdout=subprocess.DEVNULL, stderr=open(f"{out}.stderr", "wb"))


def stop_consumers(procs) -> list[int]:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(CLIENT_TIMEOUT_S))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return codes


def coordinator_index(broker, group: str) -> int:
    with broker.client() as c:
        body = c.request(ApiKey.FIND_COORDINATOR, 2, {"key": group, "key_type": 0})
    assert body["error_code"] == 0, body
    return broker.node_ids.index(body["node_id"])


def consume_in_process(consumer, count: int, timeout: float = WAIT_S) -> list:
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        for m in consumer.consume(num_messages=1000, timeout=0.5):
            assert m.error() is None, m.error()
            got.append((m.partition(), m.offset()))
    return got


# --- tests ----------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def no_handler_errors(broker):
    """After each test: no request made a handler fail (a dropped connection)."""
    yield
    failures = [line for line in broker.log_text().splitlines() if "handler failed" in line]
    assert failures == [], "\n".join(failures)


MESSAGES = 100_000
PARTITIONS = 6
MEMBERS = 3


def test_confluent_group_of_three_survives_a_sigkilled_member(broker, zk, tmp_path):
    topic, group = "grouped", "group-of-three"
    create_topic(broker, topic, PARTITIONS)
    produce(broker, topic, PARTITIONS, MESSAGES)
    ends = end_offsets(broker, topic, PARTITIONS)
    assert sum(ends.values()) == MESSAGES
    outs = [tmp_path / f"member-{i}.out" for i in range(MEMBERS)]
    # paced (a 20 ms pause per batch of <= 200) so that the kill comes mid-way
    procs = [start_consumer(broker, group, topic, out, 0.02) for out in outs]
    try:
        def progress():
            return [len(read_output(out)[0]) for out in outs]
        wait_for(lambda: all(n > 0 for n in progress()) and sum(progress()) >= MESSAGES // 4,
                 "all three members consuming", on_timeout=progress)
        victim = procs[0]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(CLIENT_TIMEOUT_S)
        consumed_by_victim = set(read_output(outs[0])[0])
        # the survivors take over the victim's partitions and commit everything
        wait_for(lambda: zk_offsets(zk, group, topic, PARTITIONS) == ends,
                 "committed offsets at the log end",
                 on_timeout=lambda: (zk_offsets(zk, group, topic, PARTITIONS), ends, progress()))
        assert stop_consumers(procs[1:]) == [0, 0]
    finally:
        stop_consumers(procs)
    consumed, errors = [], []
    for out in outs:
        pairs, assigned, errs = read_output(out)
        consumed += pairs
        errors += errs
        assert assigned, f"{out.name} never got an assignment"
    assert errors == []
    everything = {(p, o) for p, ends_p in ends.items() for o in range(ends_p)}
    assert set(consumed) == everything, "a message was lost (or one never produced seen)"
    assert len(consumed_by_victim) < MESSAGES, "the victim was killed after the end"
    assert len(consumed) >= MESSAGES
    # the survivors ran until the very end: their last assignments cover every partition
    # (a set: the one closing last may have been given everything when the other left)
    last = [read_output(out)[1][-1] for out in outs[1:]]
    owned = {int(p) for line in last for p in line[len("assigned "):].split(",") if p}
    assert owned == set(range(PARTITIONS)), last


def test_restarted_group_resumes_from_committed_offsets(broker, zk):
    topic, group, partitions = "resumed", "resuming-group", 3
    create_topic(broker, topic, partitions)
    produce(broker, topic, partitions, 900)
    ends = end_offsets(broker, topic, partitions)
    config = {"bootstrap.servers": broker.bootstrap, "group.id": group,
              "auto.offset.reset": "earliest", "enable.auto.commit": False,
              "session.timeout.ms": SESSION_MS}
    first = Consumer(config)
    first.subscribe([topic])
    assert len(consume_in_process(first, 900)) == 900
    first.commit(asynchronous=False)
    first.close()
    assert zk_offsets(zk, group, topic, partitions) == ends

    produce(broker, topic, partitions, 600, start=900)
    second = Consumer(config)
    second.subscribe([topic])
    got = consume_in_process(second, 600)
    committed = second.committed([TopicPartition(topic, p) for p in range(partitions)],
                                 timeout=CLIENT_TIMEOUT_S)
    second.close()
    assert len(got) == 600
    assert all(o >= ends[p] for p, o in got), "re-delivered something already committed"
    assert {tp.partition: tp.offset for tp in committed} == ends


def test_kafka_python_group_consumer(broker, zk):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTopicPartition
    from kafka.admin import KafkaAdminClient

    topic, group, partitions = "kp-grouped", "kafka-python-group", 3
    create_topic(broker, topic, partitions)
    produce(broker, topic, partitions, 3000)
    ends = end_offsets(broker, topic, partitions)
    consumers = [KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group,
                               auto_offset_reset="earliest", enable_auto_commit=False,
                               session_timeout_ms=SESSION_MS, heartbeat_interval_ms=HEARTBEAT_MS,
                               request_timeout_ms=30_000)
                 for _ in range(2)]
    try:
        got = []

        def settled() -> bool:
            """Both members own partitions, together all of them once, each at the end
            (one thread polls both, so the first may have consumed everything alone
            before the second joined and took some partitions over)."""
            owned = [c.assignment() for c in consumers]
            return (all(owned) and
                    sorted(tp.partition for a in owned for tp in a) == list(range(partitions))
                    and all(c.position(tp) == ends[tp.partition]
                            for c, a in zip(consumers, owned) for tp in a))

        deadline = time.monotonic() + WAIT_S
        while (len(set(got)) < 3000 or not settled()) and time.monotonic() < deadline:
            for consumer in consumers:
                for _tp, records in consumer.poll(timeout_ms=200).items():
                    got.extend((r.partition, r.offset) for r in records)
        assert set(got) == {(p, o) for p, e in ends.items() for o in range(e)}
        assert settled(), [c.assignment() for c in consumers]
        for consumer in consumers:
            consumer.commit()
        assert zk_offsets(zk, group, topic, partitions) == ends
        tps = [KTopicPartition(topic, p) for p in range(partitions)]
        assert {tp.partition: consumers[0].committed(tp) for tp in tps} == ends
        # its admin client sees the group through ListGroups, DescribeGroups, OffsetFetch
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        try:
            # kafka-python asks ListGroups v5: the state and type come too
            assert {"group_id": group, "protocol_type": "consumer", "group_state": "Stable",
                    "group_type": "classic"} in admin.list_groups()
            described = admin.describe_groups([group])[group]
            assert described["group_state"] == "Stable"
            assert len(described["members"]) == 2
            offsets = admin.list_group_offsets(group)[group]
            assert {tp.partition: meta.offset for tp, meta in offsets.items()} == ends
        finally:
            admin.close()
    finally:
        for consumer in consumers:
            consumer.close()


def test_confluent_static_member_comes_back_to_its_place(broker):
    """group.instance.id (KIP-345): a closed static member sends no LeaveGroup; its
    successor with the same instance id takes its place and its committed offsets."""
    topic, group, partitions = "static", "static-group", 2
    create_topic(broker, topic, partitions)
    produce(broker, topic, partitions, 400)
    ends = end_offsets(broker, topic, partitions)
    config = {"bootstrap.servers": broker.bootstrap, "group.id": group,
              "group.instance.id": "instance-a", "auto.offset.reset": "earliest",
              "enable.auto.commit": False, "session.timeout.ms": SESSION_MS}
    first = Consumer(config)
    first.subscribe([topic])
    assert len(consume_in_process(first, 400)) == 400
    first.commit(asynchronous=False)
    first.close()

    produce(broker, topic, partitions, 200, start=400)
    second = Consumer(config)
    try:
        second.subscribe([topic])
        got = consume_in_process(second, 200)
        assert sorted(got) == sorted((p, o) for p in range(partitions)
                                     for o in range(ends[p], ends[p] + 100))
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        described = admin.describe_consumer_groups([group])[group].result(CLIENT_TIMEOUT_S)
        assert [m.group_instance_id for m in described.members] == ["instance-a"]
        assert described.state == ConsumerGroupState.STABLE
    finally:
        second.close()


def test_killing_the_coordinator_loses_no_committed_offset(broker, zk):
    topic, group, partitions = "coordinated", "survives-its-coordinator", 4
    create_topic(broker, topic, partitions)
    produce(broker, topic, partitions, 2000)
    ends = end_offsets(broker, topic, partitions)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": SESSION_MS,
                         "heartbeat.interval.ms": HEARTBEAT_MS})
    try:
        consumer.subscribe([topic])
        assert len(consume_in_process(consumer, 2000)) == 2000
        consumer.commit(asynchronous=False)
        assert zk_offsets(zk, group, topic, partitions) == ends

        index = coordinator_index(broker, group)
        old = broker.kill_worker(index)
        broker.wait_restarted(index, old)
        assert zk_offsets(zk, group, topic, partitions) == ends

        # a newcomer reads the same committed offsets from whichever node coordinates now
        probe = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
        committed = probe.committed([TopicPartition(topic, p) for p in range(partitions)],
                                    timeout=CLIENT_TIMEOUT_S)
        probe.close()
        assert {tp.partition: tp.offset for tp in committed} == ends

        # the group goes on. The successor knows the group afresh (membership is kept
        # in memory; the brief: a group moving to a node starts Empty), so the member's
        # next heartbeat or commit is refused and it rejoins, reads the committed offsets
        # back from ZooKeeper and gets only what came after them.
        produce(broker, topic, partitions, 1000, start=2000)
        final = end_offsets(broker, topic, partitions)
        got = []

        def committed_all() -> bool:
            got.extend(consume_in_process(consumer, 10**9, timeout=0.5))
            try:
                consumer.commit(asynchronous=False)
            except KafkaException as exc:
                if exc.args[0].code() not in REJOIN_CODES:
                    raise
            return zk_offsets(zk, group, topic, partitions) == final
        wait_for(committed_all, "the member to rejoin and commit the new messages")
        assert set(got) == {(p, o) for p in range(partitions) for o in range(ends[p], final[p])}
    finally:
        consumer.close()


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "consume":
    sys.exit(consumer_main(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5],
                           float(sys.argv[6])))
