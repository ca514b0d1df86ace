"""Topic configs: CreateTopics configs, DescribeConfigs, AlterConfigs and
IncrementalAlterConfigs through confluent-kafka's admin client, applied to live logs."""
import time

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                   NewTopic)


def describe(admin, topic) -> dict:
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([res])[res].result(30)
    return {k: (e.value, e.is_default) for k, e in entries.items()}


def wait_config(admin, topic, key, value, timeout=15):
    deadline = time.monotonic() + timeout
    while describe(admin, topic)[key][0] != value:
        assert time.monotonic() < deadline, f"{key} never became {value}"
        time.sleep(0.1)


def test_create_describe_alter_incremental(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("cfg", 1, 1, config={"retention.ms": "3600000"})])["cfg"].result(30)
    configs = describe(admin, "cfg")
    assert configs["retention.ms"] == ("3600000", False)
    assert configs["segment.bytes"] == (str(1 << 30), True)

    res = ConfigResource(ConfigResource.Type.TOPIC, "cfg",
                         incremental_configs=[ConfigEntry("flush.messages", "7",
                                                          incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([res])[res].result(30)
    wait_config(admin, "cfg", "flush.messages", "7")
    assert describe(admin, "cfg")["retention.ms"][0] == "3600000"  # incremental keeps it

    res = ConfigResource(ConfigResource.Type.TOPIC, "cfg", set_config={"segment.bytes": "1048576"})
    admin.alter_configs([res])[res].result(30)
    wait_config(admin, "cfg", "segment.bytes", "1048576")
    assert describe(admin, "cfg")["retention.ms"][1] is True  # alter replaces the set


def test_bad_topic_configs_are_refused_with_the_key_named(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    with pytest.raises(KafkaException, match="no.such.key"):
        admin.create_topics([NewTopic("cfg-bad", 1, 1, config={"no.such.key": "1"})])["cfg-bad"].result(30)
    admin.create_topics([NewTopic("cfg-ok", 1, 1)])["cfg-ok"].result(30)
    res = ConfigResource(ConfigResource.Type.TOPIC, "cfg-ok", set_config={"retention.ms": "soon"})
    with pytest.raises(KafkaException, match="retention.ms"):
        admin.alter_configs([res])[res].result(30)
    # out of range: refused before it reaches ZooKeeper, with the range allowed
    res = ConfigResource(ConfigResource.Type.TOPIC, "cfg-ok", set_config={"segment.bytes": "1"})
    with pytest.raises(KafkaException, match=r"segment.bytes='1': allowed 128\.\."):
        admin.alter_configs([res])[res].result(30)
    res = ConfigResource(ConfigResource.Type.TOPIC, "never-made", set_config={"retention.ms": "1"})
    with pytest.raises(KafkaException):
        admin.alter_configs([res])[res].result(30)


def test_broker_configs_are_described_read_only(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    res = ConfigResource(ConfigResource.Type.BROKER, str(broker.node_ids[0]))
    entries = admin.describe_configs([res])[res].result(30)
    assert entries["num.partitions"].value == "1"
    assert entries["num.partitions"].is_read_only


def test_altered_retention_applies_to_the_live_log(broker_factory):
    """P11 end to end: small segments, then retention.bytes altered at run time; the
    retention check deletes whole old segments and the earliest offset moves up."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    broker = broker_factory(settings={"log.retention.check.interval.ms": 100})
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("shrink", 1, 1, config={"segment.bytes": "2048"})])["shrink"].result(30)
    # one record per batch, so appends (and so segment rolls) happen message by message
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 0,
                         "batch.num.messages": 1})
    for i in range(200):
        producer.produce("shrink", b"%0100d" % i, partition=0)
        producer.poll(0)
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "shrink"})
    earliest = consumer.get_watermark_offsets(TopicPartition("shrink", 0), timeout=10)[0]
    assert earliest == 0
    res = ConfigResource(ConfigResource.Type.TOPIC, "shrink", set_config={
        "segment.bytes": "2048", "retention.bytes": "4096"})
    admin.alter_configs([res])[res].result(30)
    deadline = time.monotonic() + 20
    while consumer.get_watermark_offsets(TopicPartition("shrink", 0), timeout=10)[0] == 0:
        assert time.monotonic() < deadline, "retention never deleted a segment"
        time.sleep(0.2)
    low, high = consumer.get_watermark_offsets(TopicPartition("shrink", 0), timeout=10)
    assert 0 < low < high == 200
    consumer.close()
