"""broker.rack: registered per broker, given in Metadata, and honoured by placement
(replicas of a partition on as many racks as it has replicas)."""
from __future__ import annotations

from pybroker.protocol import ApiKey

RACKS = {1: "east", 2: "west", 3: "west"}


def test_racks_reach_metadata_and_spread_the_replicas(broker_factory):
    brokers = [broker_factory(workers=1, broker_id=b, settings={"broker.rack": r})
               for b, r in RACKS.items()]
    rack_of = {b.node_ids[0]: RACKS[b.broker_id] for b in brokers}
    with brokers[0].client() as c:
        created = c.request(ApiKey.CREATE_TOPICS, 4, {"topics": [{
            "name": "racked", "num_partitions": 6, "replication_factor": 2,
            "assignments": [], "configs": []}], "timeout_ms": 30_000,
            "validate_only": False})
        assert created["topics"][0]["error_code"] == 0, created
        meta = c.request(ApiKey.METADATA, 8, {"topics": [{"name": "racked"}],
                                              "allow_auto_topic_creation": False,
                                              "include_cluster_authorized_operations": False,
                                              "include_topic_authorized_operations": False})
    assert {b["node_id"]: b["rack"] for b in meta["brokers"]} == rack_of
    [topic] = meta["topics"]
    assert len(topic["partitions"]) == 6
    for p in topic["partitions"]:
        assert {rack_of[n] for n in p["replica_nodes"]} == {"east", "west"}, p
