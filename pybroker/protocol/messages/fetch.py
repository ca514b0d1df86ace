"""Fetch (key 1) and ListOffsets (key 2): reading records and finding offsets."""

from ..schema import Array, Field as F, Message, Struct

# Spec: validVersions 4-18, flexibleVersions 12+. We implement 4-17 (Kafka 4.1's; v18
# is KIP-1166's high watermark in the request). v12 adds last_fetched_epoch and the
# answer's diverging epoch (KIP-320 for fetchers), v13 names topics by ID (KIP-516),
# v15 moves the replica id into replica_state, v16 answers the current leader's
# endpoint (KIP-951), v17 a follower's directory id.
FETCH = Message(
    1, "Fetch", valid_versions="4-17", flexible_versions="12+",
    request=[
        F("cluster_id", "string", "12+", nullable_versions="12+", default=None,
          tag=0, tagged_versions="12+", ignorable=True),
        F("replica_id", "int32", "0-14", default=-1),
        F("replica_state", Struct(
            "ReplicaState",
            F("replica_id", "int32", "15+", default=-1),
            F("replica_epoch", "int64", "15+", default=-1),
        ), "15+", tag=1, tagged_versions="15+"),
        F("max_wait_ms", "int32", "0+"),
        F("min_bytes", "int32", "0+"),
        F("max_bytes", "int32", "3+", default=0x7FFFFFFF, ignorable=True),
        F("isolation_level", "int8", "4+", default=0, ignorable=True),
        F("session_id", "int32", "7+", default=0, ignorable=True),
        F("session_epoch", "int32", "7+", default=-1, ignorable=True),
        F("topics", Array(Struct(
            "FetchTopic",
            F("topic", "string", "0-12", ignorable=True),
            F("topic_id", "uuid", "13+", ignorable=True),
            F("partitions", Array(Struct(
                "FetchPartition",
                F("partition", "int32", "0+"),
                F("current_leader_epoch", "int32", "9+", default=-1, ignorable=True),
                F("fetch_offset", "int64", "0+"),
                F("last_fetched_epoch", "int32", "12+", default=-1, ignorable=False),
                F("log_start_offset", "int64", "5+", default=-1, ignorable=True),
                F("partition_max_bytes", "int32", "0+"),
                F("replica_directory_id", "uuid", "17+", tag=0, tagged_versions="17+",
                  ignorable=True),
            )), "0+"),
        )), "0+"),
        F("forgotten_topics_data", Array(Struct(
            "ForgottenTopic",
            F("topic", "string", "7-12", ignorable=True),
            F("topic_id", "uuid", "13+", ignorable=True),
            F("partitions", Array("int32"), "7+"),
        )), "7+", ignorable=False),
        F("rack_id", "string", "11+", default="", ignorable=True),
    ],
    response=[
        F("throttle_time_ms", "int32", "1+", ignorable=True),
        F("error_code", "int16", "7+", ignorable=True),
        F("session_id", "int32", "7+", default=0, ignorable=False),
        F("responses", Array(Struct(
            "FetchableTopicResponse",
            F("topic", "string", "0-12", ignorable=True),
            F("topic_id", "uuid", "13+", ignorable=True),
            F("partitions", Array(Struct(
                "PartitionData",
                F("partition_index", "int32", "0+"),
                F("error_code", "int16", "0+"),
                F("high_watermark", "int64", "0+"),
                F("last_stable_offset", "int64", "4+", default=-1, ignorable=True),
                F("log_start_offset", "int64", "5+", default=-1, ignorable=True),
                F("diverging_epoch", Struct(
                    "EpochEndOffset",
                    F("epoch", "int32", "12+", default=-1),
                    F("end_offset", "int64", "12+", default=-1),
                ), "12+", tag=0, tagged_versions="12+"),
                F("current_leader", Struct(
                    "LeaderIdAndEpoch",
                    F("leader_id", "int32", "12+", default=-1),
                    F("leader_epoch", "int32", "12+", default=-1),
                ), "12+", tag=1, tagged_versions="12+"),
                F("snapshot_id", Struct(
                    "SnapshotId",
                    F("end_offset", "int64", "0+", default=-1),
                    F("epoch", "int32", "0+", default=-1),
                ), "12+", tag=2, tagged_versions="12+"),
                F("aborted_transactions", Array(Struct(
                    "AbortedTransaction",
                    F("producer_id", "int64", "4+"),
                    F("first_offset", "int64", "4+"),
                )), "4+", nullable_versions="4+", ignorable=True),
                F("preferred_read_replica", "int32", "11+", default=-1, ignorable=False),
                F("records", "records", "0+", nullable_versions="0+"),
            )), "0+"),
        )), "0+"),
        F("node_endpoints", Array(Struct(
            "NodeEndpoint",
            F("node_id", "int32", "16+"),
            F("host", "string", "16+"),
            F("port", "int32", "16+"),
            F("rack", "string", "16+", nullable_versions="16+", default=None),
        )), "16+", tag=0, tagged_versions="16+"),
    ],
)

# Spec (Kafka 3.x; 4.0 removed v0): validVersions 0-10, flexibleVersions 6+. We
# implement 0-5 (none flexible). v0 asks for up to max_num_offsets offsets per partition
# and is answered with an array of them (old_style_offsets); v1 returns one offset and
# its timestamp.
LIST_OFFSETS = Message(
    2, "ListOffsets", valid_versions="0-10", flexible_versions="6+",
    request=[
        F("replica_id", "int32", "0+"),
        F("isolation_level", "int8", "2+"),
        F("topics", Array(Struct(
            "ListOffsetsTopic",
            F("name", "string", "0+"),
            F("partitions", Array(Struct(
                "ListOffsetsPartition",
                F("partition_index", "int32", "0+"),
                F("current_leader_epoch", "int32", "4+", default=-1, ignorable=True),
                F("timestamp", "int64", "0+"),
                F("max_num_offsets", "int32", "0", default=1),
            )), "0+"),
        )), "0+"),
        F("timeout_ms", "int32", "10+", ignorable=True),
    ],
    response=[
        F("throttle_time_ms", "int32", "2+", ignorable=True),
        F("topics", Array(Struct(
            "ListOffsetsTopicResponse",
            F("name", "string", "0+"),
            F("partitions", Array(Struct(
                "ListOffsetsPartitionResponse",
                F("partition_index", "int32", "0+"),
                F("error_code", "int16", "0+"),
                F("old_style_offsets", Array("int64"), "0", ignorable=False),
                F("timestamp", "int64", "1+", default=-1, ignorable=False),
                F("offset", "int64", "1+", default=-1, ignorable=False),
                F("leader_epoch", "int32", "4+", default=-1),
            )), "0+"),
        )), "0+"),
    ],
)
