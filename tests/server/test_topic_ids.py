"""Topic IDs (KIP-516): kept in the topic znode and in each partition directory, served
by Metadata (v10+, looked up by ID from v12), CreateTopics v7 and DeleteTopics v6; a
topic deleted and created again is a different topic; a topic from before IDs gets one
from the controller; a directory of an older incarnation is moved aside, not served."""
from __future__ import annotations

import json
import os
import uuid

import pytest

from pybroker.coord import topic_ids
from pybroker.log import partition_metadata
from pybroker.protocol import ApiKey, ErrorCode
from pybroker.testing import poll

ZERO = uuid.UUID(int=0)
WAIT_S = 30


# --- the text form and the file -------------------------------------------------------------

def test_text_form_is_kafkas_url_safe_base64_without_padding():
    assert topic_ids.to_text(uuid.UUID(int=1)) == "AAAAAAAAAAAAAAAAAAAAAQ"
    raw = uuid.UUID(bytes=bytes([0xfb, 0xff] + [0] * 14))   # '+' and '/' in plain base64
    assert topic_ids.to_text(raw) == "-_8AAAAAAAAAAAAAAAAAAA"
    assert topic_ids.from_text("-_8AAAAAAAAAAAAAAAAAAA") == raw
    for bad in ("", "AAAA", "not base64 at all!", "AAAAAAAAAAAAAAAAAAAAAQAA"):
        with pytest.raises(ValueError):
            topic_ids.from_text(bad)
    fresh = {topic_ids.new_topic_id() for _ in range(2000)}
    assert len(fresh) == 2000
    assert not any(topic_ids.to_text(t).startswith("-") for t in fresh)
    assert not fresh & {ZERO, topic_ids.METADATA_TOPIC_ID}


def test_partition_metadata_file_claim_and_stray(tmp_path):
    directory = str(tmp_path / "t-0")
    first, second = topic_ids.new_topic_id(), topic_ids.new_topic_id()
    partition_metadata.claim(directory, None)            # no ID known: nothing written
    assert not os.path.exists(directory)
    partition_metadata.claim(directory, first)
    with open(os.path.join(directory, "partition.metadata")) as f:
        assert f.read() == f"version: 0\ntopic_id: {topic_ids.to_text(first)}\n"
    (tmp_path / "t-0" / "00000000000000000000.log").write_bytes(b"old records")
    partition_metadata.claim(directory, first)            # the same incarnation: kept
    assert os.path.exists(os.path.join(directory, "00000000000000000000.log"))
    partition_metadata.claim(directory, second)           # another one: moved aside
    stray = f"{directory}-{topic_ids.to_text(first)}-stray"
    assert os.listdir(directory) == ["partition.metadata"]
    assert partition_metadata.read(directory) == second
    assert sorted(os.listdir(stray)) == ["00000000000000000000.log", "partition.metadata"]
    # an open log's topic given an ID late: recorded only where none is
    partition_metadata.adopt(stray, second)
    assert partition_metadata.read(stray) == first
    (tmp_path / "old").mkdir()
    partition_metadata.adopt(str(tmp_path / "old"), second)
    assert partition_metadata.read(str(tmp_path / "old")) == second
    (tmp_path / "old" / "partition.metadata").write_text("version: 7\n")
    with pytest.raises(partition_metadata.PartitionMetadataError, match="version 0"):
        partition_metadata.read(str(tmp_path / "old"))


# --- the broker -------------------------------------------------------------------------------

def create(c, name: str, partitions: int = 2, version: int = 7) -> dict:
    body = c.request(ApiKey.CREATE_TOPICS, version, {
        "topics": [{"name": name, "num_partitions": partitions, "replication_factor": 1,
                    "assignments": [], "configs": [{"name": "retention.ms",
                                                    "value": "3600000"}]}],
        "timeout_ms": 30_000, "validate_only": False})
    [result] = body["topics"]
    assert result["error_code"] == 0, result
    return result


def metadata(c, topics, version: int = 12) -> list[dict]:
    return c.request(ApiKey.METADATA, version, {
        "topics": topics, "allow_auto_topic_creation": False,
        "include_topic_authorized_operations": False})["topics"]


def by_name(name: str) -> dict:
    return {"name": name, "topic_id": ZERO}


def by_id(topic_id: uuid.UUID) -> dict:
    return {"name": None, "topic_id": topic_id}


def delete(c, topics: list[dict]) -> list[dict]:
    return c.request(ApiKey.DELETE_TOPICS, 6, {"topics": topics,
                                               "timeout_ms": 30_000})["responses"]


def test_create_describe_look_up_and_delete_by_id(broker, zk):
    with broker.client() as c:
        created = create(c, "ids")
        topic_id = created["topic_id"]
        assert topic_id != ZERO
        # v5+ (KIP-525): what was created
        assert (created["num_partitions"], created["replication_factor"]) == (2, 1)
        configs = {e["name"]: e["value"] for e in created["configs"]}
        assert configs["retention.ms"] == "3600000" and "segment.bytes" in configs
        # ZooKeeper keeps it as Kafka does
        znode = json.loads(zk.get("/brokers/topics/ids")[0])
        assert (znode["version"], znode["topic_id"]) == (3, topic_ids.to_text(topic_id))
        # every Metadata version from 10 answers it; v12+ looks it up by ID
        for v in (10, 11, 12, 13):
            [t] = metadata(c, [by_name("ids")], v)
            assert (t["name"], t["topic_id"], t["error_code"]) == ("ids", topic_id, 0)
        [t] = metadata(c, [by_id(topic_id)])
        assert (t["name"], t["topic_id"], len(t["partitions"])) == ("ids", topic_id, 2)
        stranger = uuid.uuid4()
        [t] = metadata(c, [by_id(stranger)])
        assert (t["name"], t["topic_id"], t["error_code"]) == \
            (None, stranger, ErrorCode.UNKNOWN_TOPIC_ID)
        [t] = metadata(c, [by_id(topic_id)], 11)        # v10-v11 may not look up by ID
        assert t["error_code"] == ErrorCode.INVALID_REQUEST
        # each partition directory knows the topic it belongs to
        for p in (0, 1):
            assert partition_metadata.read(str(broker.data_dir / f"ids-{p}")) == topic_id

        both, unknown = delete(c, [{"name": "ids", "topic_id": topic_id},
                                   by_id(stranger)])
        assert both["error_code"] == ErrorCode.INVALID_REQUEST
        assert (unknown["name"], unknown["error_code"]) == (None, ErrorCode.UNKNOWN_TOPIC_ID)
        [gone] = delete(c, [by_id(topic_id)])
        assert (gone["name"], gone["topic_id"], gone["error_code"]) == ("ids", topic_id, 0)
        poll.wait_for(lambda: metadata(c, [by_name("ids")])[0]["error_code"] ==
                      ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "the topic gone", WAIT_S, 0.1)

        again = create(c, "ids")                         # the same name: another topic
        assert again["topic_id"] not in (ZERO, topic_id)
        [t] = metadata(c, [by_id(topic_id)])
        assert t["error_code"] == ErrorCode.UNKNOWN_TOPIC_ID


def test_topic_from_before_ids_gets_one_and_its_directories_record_it(broker, zk):
    broker.create_topic("legacy", 1)
    directory = str(broker.data_dir / "legacy-0")
    broker.stop()
    # as a broker of before topic IDs wrote it: znode version 2 without topic_id, and
    # no partition.metadata
    data, stat = zk.get("/brokers/topics/legacy")
    old = json.loads(data)
    zk.set("/brokers/topics/legacy", json.dumps(
        {"version": 2, "partitions": old["partitions"]}).encode(), version=stat.version)
    os.unlink(os.path.join(directory, "partition.metadata"))
    broker.start()

    def given():
        return json.loads(zk.get("/brokers/topics/legacy")[0]).get("topic_id")
    poll.wait_for(lambda: given() is not None, "the controller giving it an ID", WAIT_S, 0.1)
    topic_id = topic_ids.from_text(given())
    assert topic_id != topic_ids.from_text(old["topic_id"])   # a new one was made
    poll.wait_for(lambda: partition_metadata.read(directory) == topic_id,
                  "the open log recording its new ID", WAIT_S, 0.1)
    with broker.client() as c:
        [t] = metadata(c, [by_name("legacy")])
        assert t["topic_id"] == topic_id


def test_directory_of_a_deleted_incarnation_is_moved_aside_not_served(broker, zk):
    """Deleted and created again while this broker was down: it must not serve the old
    records as the new topic's."""
    broker.create_topic("reborn", 1)
    broker.produce_one("reborn", 0, b"from the first incarnation")
    old_text = json.loads(zk.get("/brokers/topics/reborn")[0])["topic_id"]
    broker.stop()
    data, stat = zk.get("/brokers/topics/reborn")
    znode = json.loads(data)
    new_id = topic_ids.new_topic_id()
    zk.set("/brokers/topics/reborn", json.dumps({**znode, "topic_id": topic_ids.to_text(
        new_id)}).encode(), version=stat.version)
    broker.start()
    stray = broker.data_dir / f"reborn-0-{old_text}-stray"
    poll.wait_for(stray.exists, "the old directory moved aside", WAIT_S, 0.1)
    assert partition_metadata.read(str(broker.data_dir / "reborn-0")) == new_id
    assert any(name.endswith(".log") and os.path.getsize(stray / name) > 0
               for name in os.listdir(stray))
    assert broker.fetch_values("reborn", 0) == []
    assert "deleted and created again while this broker was away" in broker.log_text()
