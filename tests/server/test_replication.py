"""Replication (issue 14) on three brokers x one worker, nodes 100, 200, 300, through the
cluster harness (pybroker.testing.cluster): placement, INVALID_REPLICATION_FACTOR,
acks=all with min.insync.replicas, fail-over after kill -9 of a leader's host, ISR
shrink and expand around a SIGSTOPped follower, NOT_ENOUGH_REPLICAS, and a client
refused as a replica. The first tests check the harness itself on RF 1 topics.

Every wait is bounded; a time appears in an assertion only as a liveness bound
(session timeout plus slack), never as a performance figure.
"""
from __future__ import annotations

import gc
import time
from collections import Counter

import pytest
from confluent_kafka import KafkaError, Producer

from pybroker.protocol import ApiKey
from pybroker.records import build_batch, parse_batches, parse_records
from pybroker.testing import history
from pybroker.testing.broker_plugin import RawClient
from pybroker.testing.cluster import (SESSION_S, ProducerThread, compare_replicas,
                                      process_state, read_log, split_batches)

NONE = 0
NOT_ENOUGH_REPLICAS = 19
INVALID_REPLICATION_FACTOR = 38
# Kafka's names, expected in pybroker.config from the replication work. A follower this
# far behind leaves the ISR: 3 s, below the 4 s ZooKeeper session of CLUSTER_SETTINGS.
LAG_MS = 3000
REPLICATION = {"replica.lag.time.max.ms": LAG_MS}
LAG_S = LAG_MS / 1000
FAILOVER_S = SESSION_S + 10     # kill -9 -> a new leader in Metadata (liveness bound)
ISR_SHRINK_S = LAG_S + SESSION_S + 15
CATCH_UP_S = 60.0               # restarted broker back in the ISR
CLIENT_TIMEOUT_S = 30.0


def produce_acked(bootstrap: str, topic: str, values, partition: int | None = None,
                  acks: str = "all", spread: int | None = None,
                  **config) -> tuple[list, list]:
    """Produce values with one confluent-kafka producer, flush (bounded); returns
    ([(value, partition, offset)] acked, [(value, KafkaError)] failed). Value i goes
    to `partition`, or with `spread` to partition i % spread (librdkafka's sticky
    partitioner would otherwise leave some partitions empty)."""
    acked, failed = [], []

    def on_delivery(err, msg):
        if err is not None:
            failed.append((msg.value(), err))
        else:
            acked.append((msg.value(), msg.partition(), msg.offset()))
    producer = Producer({"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 5,
                         "message.timeout.ms": 30_000, **config})
    for i, v in enumerate(values):
        target = partition if spread is None else i % spread
        kwargs = {} if target is None else {"partition": target}
        producer.produce(topic, value=v, on_delivery=on_delivery, **kwargs)
        producer.poll(0)
    assert producer.flush(60) == 0, "messages still undelivered after 60 s"
    del producer
    gc.collect()
    return acked, failed


def check_history(producers, log) -> history.Report:
    """The history check of the final log against every producer's acks; the log read
    is also the delivery history (so 'unseen' counts what the read did not find)."""
    acks = [a for p in producers for a in p.history()]
    report = history.check(acks, [history.Delivery(r.value, r.partition, r.offset)
                                  for r in log], log)
    print(report.summary())
    return report


# --- the harness itself (RF 1: works before replication lands) ---------------------------

def test_three_brokers_form_one_cluster(cluster_factory):
    cluster = cluster_factory(brokers=3, workers=1)
    assert [b.broker_id for b in cluster.brokers] == [1, 2, 3]
    assert sorted(cluster.node_ids) == [100, 200, 300]
    assert len({str(b.data_dir) for b in cluster.brokers}) == 3
    for b in cluster.brokers:   # every node lists every node
        with b.client() as c:
            body = c.request(ApiKey.METADATA, 8, {"topics": [],
                                                  "allow_auto_topic_creation": False})
        assert sorted(n["node_id"] for n in body["brokers"]) == [100, 200, 300]

    result = cluster.create_topic("plain", partitions=6, replication_factor=1)
    assert result["error_code"] == NONE, result
    meta = cluster.metadata("plain")
    assert sorted(meta.partitions) == list(range(6))
    for p in meta.partitions.values():
        assert p.error_code == NONE and p.replica_nodes == (p.leader_id,), p
    assert {cluster.broker_of(p.leader_id).broker_id for p in meta.partitions.values()} \
        == {1, 2, 3}

    acked, failed = produce_acked(cluster.bootstrap, "plain",
                                  [b"plain-%d" % i for i in range(60)], spread=6)
    assert failed == [] and len(acked) == 60
    log, ends = read_log(cluster.bootstrap, "plain", 6)
    assert sorted(r.value for r in log) == sorted(v for v, _p, _o in acked)
    for p in range(6):   # one replica: the harness reads it and it covers the HW
        assert cluster.high_watermark("plain", p) == ends[p]
        assert cluster.assert_replicas_identical("plain", p, ends[p]) >= 1


def test_harness_faults_act_on_every_process_of_a_host(cluster_factory):
    cluster = cluster_factory(brokers=3, workers=2)
    victim = cluster.broker(2)
    pids = cluster.pids_of(victim)
    assert len(pids) == 3   # the supervisor and its two workers

    stopped = cluster.stop_process(victim)
    try:
        assert sorted(stopped) == sorted(pids)
        for pid in pids:
            assert process_state(pid) == "T", (pid, process_state(pid))
        assert victim not in cluster.live_brokers()
        with pytest.raises(OSError):   # the kernel accepts; the stopped worker is silent
            with RawClient(victim.ports[0], timeout=1.0) as c:
                c.request(ApiKey.API_VERSIONS, 0, {})
        cluster.wait_registered(10)      # the other hosts still answer
    finally:
        cluster.resume(victim)
    for pid in pids:
        cluster.wait_for(lambda pid=pid: process_state(pid) != "T", 5, f"pid {pid} to run")

    cluster.kill9(victim)
    assert not victim.running() and all(process_state(p) is None for p in pids)
    assert 2 in cluster.down
    cluster.restart(victim)
    assert victim.running() and 2 not in cluster.down
    assert set(cluster.pids_of(victim)).isdisjoint(pids)

    cluster.terminate(cluster.broker(3))
    assert cluster.broker(3).returncodes[-1] == 0
    cluster.restart(cluster.broker(3))
    cluster.wait_registered()


def test_replica_comparison_names_the_first_differing_batch():
    # three 1-record batches of 71 bytes each: the 61-byte header and a 10-byte record
    # (length, attributes, timestamp delta, offset delta, key length: 1 byte each; value
    # length 1 + "v-<i>" 3; header count 1)
    batches = [bytes(build_batch([b"v-%d" % i], base_offset=i, timestamps=[1000]))
               for i in range(3)]
    assert [len(b) for b in batches] == [71, 71, 71]
    same = b"".join(batches)
    assert [b.base_offset for b in split_batches(same)[0]] == [0, 1, 2]
    assert split_batches(same + b"\0torn")[1] == 5
    assert compare_replicas({1: same, 2: same, 3: same + b"\0torn"}, 3) is None
    assert compare_replicas({1: same, 2: same[:142]}, 2) is None    # HW 2: two batches
    assert "not up to 3" in compare_replicas({1: same, 2: same[:142]}, 3)
    assert "not up to 3" in compare_replicas({1: same, 2: same[:200]}, 3)   # torn third
    bad = bytearray(same)
    bad[71 + 12 + 3] ^= 1   # batch 1's partitionLeaderEpoch (bytes 12..15), low byte
    problem = compare_replicas({1: same, 2: bytes(bad)}, 3)
    assert "batch 1 differs" in problem and "first differing byte 15" in problem, problem
    assert compare_replicas({1: same, 2: bytes(bad)}, 1) is None     # below the change


# --- placement -----------------------------------------------------------------------------

def test_rf3_topic_has_three_replicas_on_distinct_brokers(cluster_factory):
    cluster = cluster_factory(brokers=3, workers=1, settings=REPLICATION)
    result = cluster.create_topic("rf3", partitions=6, replication_factor=3)
    assert result["error_code"] == NONE, result
    meta = cluster.metadata("rf3")
    assert sorted(meta.partitions) == list(range(6))
    for p in meta.partitions.values():
        assert p.error_code == NONE, p
        assert len(p.replica_nodes) == 3, p
        assert len({cluster.broker_of(n).broker_id for n in p.replica_nodes}) == 3, p
        assert sorted(p.isr_nodes) == sorted(p.replica_nodes), p
        assert p.leader_id in p.replica_nodes, p
        assert p.leader_epoch >= 0, p
    led = Counter(cluster.broker_of(p.leader_id).broker_id for p in meta.partitions.values())
    assert led == {1: 2, 2: 2, 3: 2}, f"leaders per broker {dict(led)}: {meta.partitions}"
    # every node answers the same placement
    for node in cluster.node_ids:
        other = cluster.metadata("rf3", via=node)
        assert {i: (p.replica_nodes, p.leader_id) for i, p in other.partitions.items()} == \
            {i: (p.replica_nodes, p.leader_id) for i, p in meta.partitions.items()}, node


def test_more_replicas_than_brokers_is_invalid_and_assignments_are_honoured(cluster_factory):
    cluster = cluster_factory(brokers=3, workers=1, settings=REPLICATION)
    result = cluster.create_topic("rf4", partitions=1, replication_factor=4)
    assert result["error_code"] == INVALID_REPLICATION_FACTOR, result
    with pytest.raises(AssertionError):   # nothing was created
        cluster.metadata("rf4", timeout=2)

    # explicit assignment, node ids as Metadata names them (Kafka wants one replica count
    # for every partition); the first replica is the preferred leader, and leads
    wanted = {0: [300, 100], 1: [200, 300], 2: [100, 200]}
    result = cluster.create_topic("assigned", assignments=wanted)
    assert result["error_code"] == NONE, result
    meta = cluster.metadata("assigned")
    for p, nodes in wanted.items():
        got = meta.partitions[p]
        assert list(got.replica_nodes) == nodes, got
        assert sorted(got.isr_nodes) == sorted(nodes), got
        assert got.leader_id == nodes[0], got


# --- acks=all ------------------------------------------------------------------------------

def test_acks_all_on_rf3_reads_back_and_replicas_are_identical(cluster_factory):
    cluster = cluster_factory(brokers=3, workers=1, settings=REPLICATION)
    assert cluster.create_topic("durable", partitions=3, replication_factor=3,
                                configs={"min.insync.replicas": 2})["error_code"] == NONE
    values = [b"durable-%d" % i for i in range(3000)]
    acked, failed = produce_acked(cluster.bootstrap, "durable", values, spread=3,
                                  **{"enable.idempotence": True})
    assert failed == [] and len(acked) == len(values)

    log, ends = read_log(cluster.bootstrap, "durable", 3)
    for p in range(3):
        mine = [v for v, part, _o in sorted(acked, key=lambda a: a[2]) if part == p]
        assert [r.value for r in sorted(log, key=lambda r: r.offset) if r.partition == p] \
            == mine, f"partition {p} does not read back in order"
        assert cluster.high_watermark("durable", p) == ends[p] == len(mine)
        batches = cluster.assert_replicas_identical("durable", p, ends[p], timeout=30)
        assert batches >= 1
    # the batches carry the leader's epoch
    for p in range(3):
        epoch = cluster.partition("durable", p).leader_epoch
        b = cluster.leader_broker("durable", p)
        data = cluster.replica_files("durable", p, [b])[b.broker_id]
        first = split_batches(data)[0][0].data
        assert int.from_bytes(first[12:16], "big", signed=True) == epoch


# --- kill -9 of a leader's host -----------------------------------------------------------

def test_leader_host_killed_a_follower_takes_over_and_the_host_catches_up(cluster_factory):
    cluster = cluster_factory(brokers=3, workers=1, settings=REPLICATION)
    topic, partitions = "failover", 3
    assert cluster.create_topic(topic, partitions=partitions, replication_factor=3,
                                configs={"min.insync.replicas": 2})["error_code"] == NONE
    producer = ProducerThread("failover", cluster.bootstrap, topic, partitions,
                              idempotent=True, rate=200)
    producer.start()
    try:
        cluster.wait_for(lambda: producer.acked_since(0, 0) >= 50, CLIENT_TIMEOUT_S,
                         "the first acks on partition 0")
        before = cluster.wait_partition(topic, 0, lambda m: m.leader_id >= 0, FAILOVER_S,
                                        "a leader")
        victim = cluster.broker_of(before.leader_id)
        cluster.kill9(victim)
        killed_at = time.monotonic()

        after = cluster.wait_partition(
            topic, 0, lambda m: m.leader_id >= 0 and m.leader_id not in victim.node_ids,
            FAILOVER_S, f"a leader other than broker {victim.broker_id}")
        print(f"new leader {after.leader_id} epoch {after.leader_epoch} "
              f"{time.monotonic() - killed_at:.1f}s after kill -9 of {victim.broker_id}")
        assert after.leader_id in before.isr_nodes, (before, after)
        assert after.leader_epoch > before.leader_epoch, (before, after)
        elected = time.monotonic()
        cluster.wait_for(lambda: producer.acked_since(elected, 0) >= 20, CLIENT_TIMEOUT_S,
                         "acks on partition 0 from its new leader",
                         detail=lambda: f"failed {producer.failed[-3:]} errors "
                                        f"{producer.errors[-3:]}")

        cluster.restart(victim)
        cluster.wait_isr(topic, range(partitions), 3, CATCH_UP_S)
    finally:
        producer.finish(180)
    assert producer.failed == [], producer.failed[:5]
    log, ends = read_log(cluster.bootstrap, topic, partitions)
    report = check_history([producer], log)
    assert report.violations() == [], report.summary()
    for p in range(partitions):
        cluster.assert_replicas_identical(topic, p, ends[p], timeout=30)


# --- what a new leader must know: producer sequences, leader epochs ------------------

RETRIABLE_PRODUCE = {3, 5, 6, 7, 19, 20}   # unknown, no leader, not leader, timed out,
                                          # not enough replicas (while the ISR shrinks)


def raw_produce(cluster, topic: str, partition: int, batch, timeout: float = 60.0) -> dict:
    """One acks=all Produce v7 of `batch` to the partition's leader, retried while the
    answer is retriable (a leader just elected, an ISR still holding a dead host)."""
    deadline = time.monotonic() + timeout
    while True:
        node = cluster.leader_node(topic, partition, timeout)
        try:
            with cluster.client(node, timeout=40) as c:
                body = c.request(ApiKey.PRODUCE, 7, {
                    "transactional_id": None, "acks": -1, "timeout_ms": 30_000,
                    "topic_data": [{"name": topic, "partition_data": [
                        {"index": partition, "records": bytes(batch)}]}]})
            answer = body["responses"][0]["partition_responses"][0]
            if answer["error_code"] not in RETRIABLE_PRODUCE:
                return {**answer, "node": node}
        except (OSError, ConnectionError) as exc:
            answer = repr(exc)
        assert time.monotonic() < deadline, f"produce to {topic}-{partition}: {answer}"
        time.sleep(0.1)


def new_leader(cluster, topic: str, partition: int, victim, before) -> int:
    """The node leading the partition after `victim` died: from the old ISR, with a
    higher leader epoch (every live node agreeing)."""
    after = cluster.wait_partition(
        topic, partition, lambda m: m.leader_id >= 0 and m.leader_id not in victim.node_ids,
        FAILOVER_S, f"a leader other than broker {victim.broker_id}")
    assert after.leader_id in before.isr_nodes and after.leader_epoch > before.leader_epoch, \
        (before, after)
    return after.leader_id


def test_new_leader_answers_a_retried_idempotent_batch_as_a_duplicate(cluster_factory):
    # the fault test's idempotent duplicate, made deterministic: the batch is durable on
    # every replica, its answer is lost with the leader, the producer retries it at the
    # new leader, which must know the producer's sequences from the replicated batches
    cluster = cluster_factory(brokers=3, workers=1, settings=REPLICATION)
    topic = "idem-failover"
    assert cluster.create_topic(topic, partitions=1, replication_factor=3,
                                configs={"min.insync.replicas": 2})["error_code"] == NONE
    before = cluster.wait_partition(topic, 0, lambda m: m.leader_id >= 0, FAILOVER_S,
                                    "a leader")
    with cluster.client(before.leader_id) as c:
        init = c.request(ApiKey.INIT_PRODUCER_ID, 1, {"transactional_id": None,
                                                      "transaction_timeout_ms": 60_000})
    assert init["error_code"] == NONE, init
    pid, epoch = init["producer_id"], init["producer_epoch"]
    batches = [build_batch([b"idem-%d" % s], producer_id=pid, producer_epoch=epoch,
                           base_sequence=s) for s in range(3)]
    for s in (0, 1):
        answer = raw_produce(cluster, topic, 0, batches[s])
        assert (answer["error_code"], answer["base_offset"]) == (NONE, s), answer
    cluster.assert_replicas_identical(topic, 0, 2, timeout=30)   # on every replica

    victim = cluster.broker_of(before.leader_id)
    cluster.kill9(victim)
    leader = new_leader(cluster, topic, 0, victim, before)
    again = raw_produce(cluster, topic, 0, batches[1])            # the retry
    third = raw_produce(cluster, topic, 0, batches[2])
    log, ends = read_log(cluster.live_bootstrap, topic, 1)
    assert [r.value for r in log] == [b"idem-0", b"idem-1", b"idem-2"], \
        (f"new leader {leader} appended the retried batch again: log {log}, answers "
         f"{again} {third}")
    assert (again["error_code"], again["base_offset"]) == (NONE, 1), again
    assert (third["error_code"], third["base_offset"]) == (NONE, 2), third


def test_leader_epochs_survive_two_failovers(cluster_factory):
    # offsets 0..4 written in epoch e0 by A, 5..9 in e1 by B; then B dies and C (or A,
    # back in the ISR) leads in e2 from offset 10. The new leader learnt e1 as a
    # follower, from B's batches: OffsetForLeaderEpoch(e1) must say e1 ends at 10 and
    # OffsetForLeaderEpoch(e0) that e0 ends at 5 (KIP-101/279: what a follower
    # truncates to), and every batch keeps the epoch it was written in
    cluster = cluster_factory(brokers=3, workers=1, settings=REPLICATION)
    topic = "epochs"
    assert cluster.create_topic(topic, partitions=1, replication_factor=3,
                                configs={"min.insync.replicas": 2})["error_code"] == NONE
    m0 = cluster.wait_partition(topic, 0, lambda m: m.leader_id >= 0, FAILOVER_S, "a leader")
    for i in range(5):
        assert raw_produce(cluster, topic, 0, build_batch([b"e0-%d" % i]))["error_code"] \
            == NONE
    a = cluster.broker_of(m0.leader_id)
    cluster.kill9(a)
    new_leader(cluster, topic, 0, a, m0)
    m1 = cluster.wait_partition(topic, 0, lambda m: m.leader_id >= 0, FAILOVER_S, "a leader")
    for i in range(5):
        answer = raw_produce(cluster, topic, 0, build_batch([b"e1-%d" % i]))
        assert (answer["error_code"], answer["base_offset"]) == (NONE, 5 + i), answer
    cluster.restart(a)
    cluster.wait_isr(topic, [0], 3, CATCH_UP_S)
    m1 = cluster.wait_partition(topic, 0, lambda m: m.leader_id >= 0, FAILOVER_S, "a leader")
    b = cluster.broker_of(m1.leader_id)
    cluster.kill9(b)
    c_node = new_leader(cluster, topic, 0, b, m1)
    m2 = cluster.wait_partition(topic, 0, lambda m: m.leader_id >= 0, FAILOVER_S, "a leader")
    e0, e1, e2 = m0.leader_epoch, m1.leader_epoch, m2.leader_epoch
    assert e0 < e1 < e2, (m0, m1, m2)

    def end_of(epoch: int) -> tuple:
        with cluster.client(c_node, timeout=15) as c:
            body = c.request(ApiKey.OFFSET_FOR_LEADER_EPOCH, 3, {
                "replica_id": -1, "topics": [{"topic": topic, "partitions": [{
                    "partition": 0, "current_leader_epoch": e2, "leader_epoch": epoch}]}]})
        p = body["topics"][0]["partitions"][0]
        return p["error_code"], p["leader_epoch"], p["end_offset"]
    assert end_of(e1) == (NONE, e1, 10), f"node {c_node}: epochs {e0} {e1} {e2}"
    assert end_of(e0) == (NONE, e0, 5), f"node {c_node}: epochs {e0} {e1} {e2}"
    assert end_of(e2) == (NONE, e2, cluster.high_watermark(topic, 0))

    holder = cluster.broker_of(c_node)
    batches, _tail = split_batches(cluster.replica_files(topic, 0, [holder])[holder.broker_id])
    stamped = [int.from_bytes(x.data[12:16], "big", signed=True) for x in batches]
    assert stamped[:10] == [e0] * 5 + [e1] * 5, stamped
    cluster.restart(b)
    cluster.wait_isr(topic, [0], 3, CATCH_UP_S)
    cluster.assert_replicas_identical(topic, 0, cluster.high_watermark(topic, 0), timeout=30)


# --- a follower's host stopped -------------------------------------------------------------

def test_stopped_follower_leaves_the_isr_and_rejoins(cluster_factory):
    cluster = cluster_factory(brokers=3, workers=1, settings=REPLICATION)
    topic = "laggard"
    assert cluster.create_topic(topic, partitions=1, replication_factor=3,
                                configs={"min.insync.replicas": 2})["error_code"] == NONE
    follower = cluster.followers(topic, 0)[0]
    cluster.stop_process(follower)
    try:
        shrunk = cluster.wait_partition(
            topic, 0, lambda m: m.leader_id >= 0 and
            not set(m.isr_nodes) & set(follower.node_ids), ISR_SHRINK_S,
            f"broker {follower.broker_id} out of the ISR")
        assert len(shrunk.isr_nodes) == 2, shrunk
        acked, failed = produce_acked(cluster.live_bootstrap, topic,
                                      [b"laggard-%d" % i for i in range(500)], partition=0)
        assert failed == [] and len(acked) == 500
    finally:
        cluster.resume(follower)
    cluster.wait_isr(topic, [0], 3, CATCH_UP_S)
    ends = read_log(cluster.bootstrap, topic, 1)[1]
    assert ends[0] == 500
    cluster.assert_replicas_identical(topic, 0, ends[0], timeout=30)


# --- min.insync.replicas -------------------------------------------------------------------

def test_acks_all_is_refused_below_min_insync_replicas(cluster_factory):
    cluster = cluster_factory(brokers=3, workers=1, settings=REPLICATION)
    topic = "strict"
    assert cluster.create_topic(topic, partitions=1, replication_factor=3,
                                configs={"min.insync.replicas": 3})["error_code"] == NONE
    acked, failed = produce_acked(cluster.bootstrap, topic, [b"strict-before"], partition=0)
    assert failed == [] and len(acked) == 1

    follower = cluster.followers(topic, 0)[0]
    cluster.kill9(follower)
    cluster.wait_partition(topic, 0, lambda m: m.leader_id >= 0 and len(m.isr_nodes) == 2,
                           ISR_SHRINK_S, "an ISR of 2")
    # no retries: the broker's answer is the delivery report's error
    acked, failed = produce_acked(cluster.live_bootstrap, topic, [b"strict-all"], partition=0,
                                  **{"retries": 0, "enable.idempotence": False})
    assert acked == [] and [e.code() for _v, e in failed] == \
        [KafkaError.NOT_ENOUGH_REPLICAS], failed
    acked, failed = produce_acked(cluster.live_bootstrap, topic, [b"strict-one"], partition=0,
                                  acks="1")
    assert failed == [] and len(acked) == 1, failed

    # the raw answer is NOT_ENOUGH_REPLICAS too (not ..._AFTER_APPEND: the ISR was short
    # before the append)
    leader = cluster.leader_node(topic, 0)
    with cluster.client(leader, timeout=15) as c:
        body = c.request(ApiKey.PRODUCE, 7, {
            "transactional_id": None, "acks": -1, "timeout_ms": 10_000,
            "topic_data": [{"name": topic, "partition_data": [
                {"index": 0, "records": bytes(build_batch([b"strict-raw"]))}]}]})
    assert body["responses"][0]["partition_responses"][0]["error_code"] == \
        NOT_ENOUGH_REPLICAS, body


# --- replica fetches ----------------------------------------------------------------------

def test_fetch_with_an_unregistered_replica_id_is_refused(cluster_factory):
    cluster = cluster_factory(brokers=3, workers=1, settings=REPLICATION)
    topic = "guarded"
    assert cluster.create_topic(topic, partitions=1,
                                replication_factor=3)["error_code"] == NONE
    acked, failed = produce_acked(cluster.bootstrap, topic,
                                  [b"guarded-%d" % i for i in range(10)], partition=0)
    assert failed == [] and len(acked) == 10
    leader = cluster.leader_node(topic, 0)

    def fetch(replica_id: int) -> dict:
        with cluster.client(leader, timeout=15) as c:
            return c.request(ApiKey.FETCH, 11, {
                "replica_id": replica_id, "max_wait_ms": 0, "min_bytes": 0,
                "max_bytes": 1 << 20, "isolation_level": 0, "session_id": 0,
                "session_epoch": -1, "topics": [{"topic": topic, "partitions": [{
                    "partition": 0, "current_leader_epoch": -1, "fetch_offset": 0,
                    "log_start_offset": -1, "partition_max_bytes": 1 << 20}]}],
                "forgotten_topics_data": [], "rack_id": ""})

    as_client = fetch(-1)["responses"][0]["partitions"][0]
    assert as_client["error_code"] == NONE
    values = [r.value for b in parse_batches(as_client["records"]) for r in parse_records(b)]
    assert values == [b"guarded-%d" % i for i in range(10)]

    try:
        body = fetch(12345)
    except ConnectionError:
        return   # refused by closing the connection
    part = body["responses"][0]["partitions"][0] if body["responses"] else None
    refused = body["error_code"] != NONE or (part is not None and part["error_code"] != NONE)
    assert refused, f"a client fetching as replica 12345 was served: {body}"
    assert part is None or not part["records"], "records given to an impostor replica"
    print(f"refused: top-level error {body['error_code']}, partition "
          f"{part and part['error_code']}")

