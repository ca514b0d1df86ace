"""Committed consumer offsets: OffsetCommit (key 8), OffsetFetch (key 9) and
OffsetDelete (key 47)."""

from ..schema import Array, Field as F, Message, Struct

# Spec (Kafka 3.x, before KIP-896 removed 0-1 in 4.0): validVersions 0-9, flexibleVersions
# 8+ (Kafka 4.1: 2-9; v10 names topics by ID). We implement 0-9. v0 is the ZooKeeper-era
# commit (no group membership); v1 adds the generation, member id and a per-partition
# commit timestamp; v2 replaces that timestamp with a request-wide retention time; v9
# may carry a KIP-848 member epoch, which a classic group takes as its generation.
OFFSET_COMMIT = Message(
    8, "OffsetCommit", valid_versions="0-9", flexible_versions="8+",
    request=[
        F("group_id", "string", "0+"),
        # Named GenerationId before KIP-848; the classic protocol sends the generation.
        F("generation_id_or_member_epoch", "int32", "1+", default=-1, ignorable=True),
        F("member_id", "string", "1+", ignorable=True),
        F("group_instance_id", "string", "7+", nullable_versions="7+", default=None),
        F("retention_time_ms", "int64", "2-4", default=-1, ignorable=True),
        F("topics", Array(Struct(
            "OffsetCommitRequestTopic",
            F("name", "string", "0-9", ignorable=True),
            F("partitions", Array(Struct(
                "OffsetCommitRequestPartition",
                F("partition_index", "int32", "0+"),
                F("committed_offset", "int64", "0+"),
                F("committed_leader_epoch", "int32", "6+", default=-1, ignorable=True),
                F("commit_timestamp", "int64", "1", default=-1),
                F("committed_metadata", "string", "0+", nullable_versions="0+"),
            )), "0+"),
        )), "0+"),
    ],
    response=[
        F("throttle_time_ms", "int32", "3+", ignorable=True),
        F("topics", Array(Struct(
            "OffsetCommitResponseTopic",
            F("name", "string", "0-9", ignorable=True),
            F("partitions", Array(Struct(
                "OffsetCommitResponsePartition",
                F("partition_index", "int32", "0+"),
                F("error_code", "int16", "0+"),
            )), "0+"),
        )), "0+"),
    ],
)

# Spec (Kafka 3.x; 4.0 removed v0): validVersions 0-9, flexibleVersions 6+. We
# implement 0-9. v0 has v1's layout (it read ZooKeeper in old Kafka); from v2 a null
# topics array means "all topics of the group"; v7 asks for stable offsets only (no
# transaction is ever pending here); v8 asks for several groups at once; v9 may name
# a KIP-848 member.
OFFSET_FETCH = Message(
    9, "OffsetFetch", valid_versions="0-9", flexible_versions="6+",
    request=[
        F("group_id", "string", "0-7"),
        F("topics", Array(Struct(
            "OffsetFetchRequestTopic",
            F("name", "string", "0-7"),
            F("partition_indexes", Array("int32"), "0-7"),
        )), "0-7", nullable_versions="2-7"),
        F("groups", Array(Struct(
            "OffsetFetchRequestGroup",
            F("group_id", "string", "8+"),
            F("member_id", "string", "9+", nullable_versions="9+", default=None,
              ignorable=True),
            F("member_epoch", "int32", "9+", default=-1, ignorable=True),
            F("topics", Array(Struct(
                "OffsetFetchRequestTopics",
                F("name", "string", "8-9", ignorable=True),
                F("partition_indexes", Array("int32"), "8+"),
            )), "8+", nullable_versions="8+"),
        )), "8+"),
        F("require_stable", "bool", "7+", default=False),
    ],
    response=[
        F("throttle_time_ms", "int32", "3+", ignorable=True),
        F("topics", Array(Struct(
            "OffsetFetchResponseTopic",
            F("name", "string", "0-7"),
            F("partitions", Array(Struct(
                "OffsetFetchResponsePartition",
                F("partition_index", "int32", "0-7"),
                F("committed_offset", "int64", "0-7"),
                F("committed_leader_epoch", "int32", "5-7", default=-1, ignorable=True),
                F("metadata", "string", "0-7", nullable_versions="0-7"),
                F("error_code", "int16", "0-7"),
            )), "0-7"),
        )), "0-7"),
        F("error_code", "int16", "2-7", default=0, ignorable=True),
        F("groups", Array(Struct(
            "OffsetFetchResponseGroup",
            F("group_id", "string", "8+"),
            F("topics", Array(Struct(
                "OffsetFetchResponseTopics",
                F("name", "string", "8-9", ignorable=True),
                F("partitions", Array(Struct(
                    "OffsetFetchResponsePartitions",
                    F("partition_index", "int32", "8+"),
                    F("committed_offset", "int64", "8+"),
                    F("committed_leader_epoch", "int32", "8+", default=-1,
                      ignorable=True),
                    F("metadata", "string", "8+", nullable_versions="8+"),
                    F("error_code", "int16", "8+"),
                )), "8+"),
            )), "8+"),
            F("error_code", "int16", "8+", default=0),
        )), "8+"),
    ],
)

# Spec: validVersions 0, no flexible version.
OFFSET_DELETE = Message(
    47, "OffsetDelete", valid_versions="0", flexible_versions="none",
    request=[
        F("group_id", "string", "0+"),
        F("topics", Array(Struct(
            "OffsetDeleteRequestTopic",
            F("name", "string", "0+"),
            F("partitions", Array(Struct(
                "OffsetDeleteRequestPartition",
                F("partition_index", "int32", "0+"),
            )), "0+"),
        )), "0+"),
    ],
    response=[
        F("error_code", "int16", "0+"),
        F("throttle_time_ms", "int32", "0+", ignorable=True),
        F("topics", Array(Struct(
            "OffsetDeleteResponseTopic",
            F("name", "string", "0+"),
            F("partitions", Array(Struct(
                "OffsetDeleteResponsePartition",
                F("partition_index", "int32", "0+"),
                F("error_code", "int16", "0+"),
            )), "0+"),
        )), "0+"),
    ],
)
