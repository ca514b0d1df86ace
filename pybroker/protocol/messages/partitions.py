"""Partition administration: CreatePartitions (key 37), ElectLeaders (key 43),
AlterPartitionReassignments (key 45), ListPartitionReassignments (key 46) and
DescribeLogDirs (key 35).

CreatePartitions raises a topic's partition count (never lowers it), optionally with
an explicit replica assignment for the new partitions only. ElectLeaders moves a
partition's leadership to its preferred replica (KIP-183; election types, KIP-460).
"""

from ..schema import Array, Field as F, Message, Struct

# Spec: validVersions 0-3, flexibleVersions 2+. We implement 0-3. v1 is v0 (the broker
# answers before throttling); v2 is the first flexible version; v3 may answer
# THROTTLING_QUOTA_EXCEEDED (KIP-599; we never throttle). `assignments` is null when
# the broker places the new partitions; otherwise one entry per new partition, in
# partition order, each naming its replicas (preferred leader first). The spec gives
# it no default, so an absent one is the empty array, as Kafka's generated code has.
CREATE_PARTITIONS = Message(
    37, "CreatePartitions", valid_versions="0-3", flexible_versions="2+",
    request=[
        F("topics", Array(Struct(
            "CreatePartitionsTopic",
            F("name", "string", "0+"),
            F("count", "int32", "0+"),
            F("assignments", Array(Struct(
                "CreatePartitionsAssignment",
                F("broker_ids", Array("int32"), "0+"),
            )), "0+", nullable_versions="0+"),
        )), "0+"),
        F("timeout_ms", "int32", "0+"),
        F("validate_only", "bool", "0+"),
    ],
    response=[
        F("throttle_time_ms", "int32", "0+"),
        F("results", Array(Struct(
            "CreatePartitionsTopicResult",
            F("name", "string", "0+"),
            F("error_code", "int16", "0+"),
            F("error_message", "string", "0+", nullable_versions="0+", default=None),
        )), "0+"),
    ],
)

# Spec: validVersions 0-2, flexibleVersions 2+. We implement 0-2. v1 adds the request's
# election_type (0 PREFERRED, 1 UNCLEAN; v0 means preferred) and the response's
# top-level error_code (ignorable false: a v0 answer cannot carry one). A null
# topic_partitions asks for every partition of the cluster.
ELECT_LEADERS = Message(
    43, "ElectLeaders", valid_versions="0-2", flexible_versions="2+",
    request=[
        F("election_type", "int8", "1+"),
        F("topic_partitions", Array(Struct(
            "TopicPartitions",
            F("topic", "string", "0+"),
            F("partitions", Array("int32"), "0+"),
        )), "0+", nullable_versions="0+"),
        F("timeout_ms", "int32", "0+", default=60000),
    ],
    response=[
        F("throttle_time_ms", "int32", "0+"),
        F("error_code", "int16", "1+", ignorable=False),
        F("replica_election_results", Array(Struct(
            "ReplicaElectionResult",
            F("topic", "string", "0+"),
            F("partition_result", Array(Struct(
                "PartitionResult",
                F("partition_id", "int32", "0+"),
                F("error_code", "int16", "0+"),
                F("error_message", "string", "0+", nullable_versions="0+"),
            )), "0+"),
        )), "0+"),
    ],
)

# Spec: validVersions 0-1, flexibleVersions 0+ (KIP-455; v1 adds
# allow_replication_factor_change, KIP-860). We implement 0-1. A null `replicas`
# cancels the partition's ongoing reassignment. The response's
# allow_replication_factor_change echoes the request's (ignorable: a v0 answer drops
# it). Kafka's admin client sends this to the controller; any node of ours can write
# it, so each answers it.
ALTER_PARTITION_REASSIGNMENTS = Message(
    45, "AlterPartitionReassignments", valid_versions="0-1", flexible_versions="0+",
    request=[
        F("timeout_ms", "int32", "0+", default=60000),
        F("allow_replication_factor_change", "bool", "1+", default=True),
        F("topics", Array(Struct(
            "ReassignableTopic",
            F("name", "string", "0+"),
            F("partitions", Array(Struct(
                "ReassignablePartition",
                F("partition_index", "int32", "0+"),
                F("replicas", Array("int32"), "0+", nullable_versions="0+", default=None),
            )), "0+"),
        )), "0+"),
    ],
    response=[
        F("throttle_time_ms", "int32", "0+"),
        F("allow_replication_factor_change", "bool", "1+", default=True, ignorable=True),
        F("error_code", "int16", "0+"),
        F("error_message", "string", "0+", nullable_versions="0+", default=None),
        F("responses", Array(Struct(
            "ReassignableTopicResponse",
            F("name", "string", "0+"),
            F("partitions", Array(Struct(
                "ReassignablePartitionResponse",
                F("partition_index", "int32", "0+"),
                F("error_code", "int16", "0+"),
                F("error_message", "string", "0+", nullable_versions="0+", default=None),
            )), "0+"),
        )), "0+"),
    ],
)

# Spec: validVersions 0, flexibleVersions 0+. A null `topics` lists every ongoing
# reassignment; a named partition with none under way is left out of the answer.
LIST_PARTITION_REASSIGNMENTS = Message(
    46, "ListPartitionReassignments", valid_versions="0", flexible_versions="0+",
    request=[
        F("timeout_ms", "int32", "0+", default=60000),
        F("topics", Array(Struct(
            "ListPartitionReassignmentsTopics",
            F("name", "string", "0+"),
            F("partition_indexes", Array("int32"), "0+"),
        )), "0+", nullable_versions="0+", default=None),
    ],
    response=[
        F("throttle_time_ms", "int32", "0+"),
        F("error_code", "int16", "0+"),
        F("error_message", "string", "0+", nullable_versions="0+", default=None),
        F("topics", Array(Struct(
            "OngoingTopicReassignment",
            F("name", "string", "0+"),
            F("partitions", Array(Struct(
                "OngoingPartitionReassignment",
                F("partition_index", "int32", "0+"),
                F("replicas", Array("int32"), "0+"),
                F("adding_replicas", Array("int32"), "0+"),
                F("removing_replicas", Array("int32"), "0+"),
            )), "0+"),
        )), "0+"),
    ],
)

# Spec: validVersions 1-5 (v0, removed in Kafka 4.0, is v1's layout), flexibleVersions
# 2+. We implement 0-4 (Kafka 4.1's; v5 adds KIP-1066's cordoned directories). v3 adds a
# top-level error code, v4 the directory's total and usable bytes.
DESCRIBE_LOG_DIRS = Message(
    35, "DescribeLogDirs", valid_versions="0-4", flexible_versions="2+",
    request=[
        F("topics", Array(Struct(
            "DescribableLogDirTopic",
            F("topic", "string", "0+"),
            F("partitions", Array("int32"), "0+"),
        )), "0+", nullable_versions="0+"),
    ],
    response=[
        F("throttle_time_ms", "int32", "0+"),
        F("error_code", "int16", "3+", ignorable=True),
        F("results", Array(Struct(
            "DescribeLogDirsResult",
            F("error_code", "int16", "0+"),
            F("log_dir", "string", "0+"),
            F("topics", Array(Struct(
                "DescribeLogDirsTopic",
                F("name", "string", "0+"),
                F("partitions", Array(Struct(
                    "DescribeLogDirsPartition",
                    F("partition_index", "int32", "0+"),
                    F("partition_size", "int64", "0+"),
                    F("offset_lag", "int64", "0+"),
                    F("is_future_key", "bool", "0+"),
                )), "0+"),
            )), "0+"),
            F("total_bytes", "int64", "4+", ignorable=True, default=-1),
            F("usable_bytes", "int64", "4+", ignorable=True, default=-1),
        )), "0+"),
    ],
)
