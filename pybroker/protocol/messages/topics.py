"""CreateTopics (key 19) and DeleteTopics (key 20): topic administration."""

from ..schema import Array, Field as F, Message, Struct

# Spec: validVersions 2-7 (0-1 were removed in Kafka 4.0; their fields are still
# described by the versions below), flexibleVersions 5+. v5 answers the created topic's
# partitions, replication factor and configs (KIP-525), v7 its topic ID (KIP-516).
CREATE_TOPICS = Message(
    19, "CreateTopics", valid_versions="0-7", flexible_versions="5+",
    request=[
        F("topics", Array(Struct(
            "CreatableTopic",
            F("name", "string", "0+"),
            F("num_partitions", "int32", "0+"),
            F("replication_factor", "int16", "0+"),
            F("assignments", Array(Struct(
                "CreatableReplicaAssignment",
                F("partition_index", "int32", "0+"),
                F("broker_ids", Array("int32"), "0+"),
            )), "0+"),
            F("configs", Array(Struct(
                "CreatableTopicConfig",
                F("name", "string", "0+"),
                F("value", "string", "0+", nullable_versions="0+"),
            )), "0+"),
        )), "0+"),
        F("timeout_ms", "int32", "0+", default=60000),
        F("validate_only", "bool", "1+", default=False, ignorable=False),
    ],
    response=[
        F("throttle_time_ms", "int32", "2+", ignorable=True),
        F("topics", Array(Struct(
            "CreatableTopicResult",
            F("name", "string", "0+"),
            F("topic_id", "uuid", "7+", ignorable=True),
            F("error_code", "int16", "0+"),
            F("error_message", "string", "1+", nullable_versions="0+", ignorable=True),
            F("topic_config_error_code", "int16", "5+", tag=0, tagged_versions="5+",
              ignorable=True),
            F("num_partitions", "int32", "5+", default=-1, ignorable=True),
            F("replication_factor", "int16", "5+", default=-1, ignorable=True),
            F("configs", Array(Struct(
                "CreatableTopicConfigs",
                F("name", "string", "5+"),
                F("value", "string", "5+", nullable_versions="5+"),
                F("read_only", "bool", "5+"),
                F("config_source", "int8", "5+", default=-1, ignorable=True),
                F("is_sensitive", "bool", "5+"),
            )), "5+", nullable_versions="5+", ignorable=True),
        )), "0+"),
    ],
)

# Spec: validVersions 1-6 (0 removed in Kafka 4.0), flexibleVersions 4+. v6 names each
# topic by name or by topic ID (KIP-516).
DELETE_TOPICS = Message(
    20, "DeleteTopics", valid_versions="0-6", flexible_versions="4+",
    request=[
        F("topics", Array(Struct(
            "DeleteTopicState",
            F("name", "string", "6+", nullable_versions="6+", default=None),
            F("topic_id", "uuid", "6+"),
        )), "6+"),
        F("topic_names", Array("string"), "0-5", ignorable=True),
        F("timeout_ms", "int32", "0+"),
    ],
    response=[
        F("throttle_time_ms", "int32", "1+", ignorable=True),
        F("responses", Array(Struct(
            "DeletableTopicResult",
            F("name", "string", "0+", nullable_versions="6+"),
            F("topic_id", "uuid", "6+", ignorable=True),
            F("error_code", "int16", "0+"),
            F("error_message", "string", "5+", nullable_versions="5+", ignorable=True,
              default=None),
        )), "0+"),
    ],
)
