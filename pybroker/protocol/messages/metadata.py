"""ApiVersions (key 18), Metadata (key 3) and DescribeCluster (key 60): how a client
discovers the cluster."""

from ..schema import Array, Field as F, Message, Struct

# Spec: validVersions 0-4, flexibleVersions 3+; v4 is v3 again (KAFKA-17011: a feature
# may now have min version 0).
# ApiVersions responses always use response header v0 (see headers.py), and a
# response with a non-zero error code is always encoded as v0 (see requests.py).
API_VERSIONS = Message(
    18, "ApiVersions", valid_versions="0-4", flexible_versions="3+",
    request=[
        F("client_software_name", "string", "3+", ignorable=True),
        F("client_software_version", "string", "3+", ignorable=True),
    ],
    response=[
        F("error_code", "int16", "0+"),
        F("api_keys", Array(Struct(
            "ApiVersion",
            F("api_key", "int16", "0+"),
            F("min_version", "int16", "0+"),
            F("max_version", "int16", "0+"),
        )), "0+"),
        F("throttle_time_ms", "int32", "1+", ignorable=True),
        F("supported_features", Array(Struct(
            "SupportedFeatureKey",
            F("name", "string", "3+"),
            F("min_version", "int16", "3+"),
            F("max_version", "int16", "3+"),
        )), "3+", ignorable=True, tag=0, tagged_versions="3+"),
        F("finalized_features_epoch", "int64", "3+", tag=1, tagged_versions="3+",
          default=-1, ignorable=True),
        F("finalized_features", Array(Struct(
            "FinalizedFeatureKey",
            F("name", "string", "3+"),
            F("max_version_level", "int16", "3+"),
            F("min_version_level", "int16", "3+"),
        )), "3+", ignorable=True, tag=2, tagged_versions="3+"),
        F("zk_migration_ready", "bool", "3+", tagged_versions="3+", tag=3,
          ignorable=True, default=False),
    ],
)

# Spec: validVersions 0-13, flexibleVersions 9+. In v0 an empty topics array means "all
# topics"; from v1 null means all topics. v10 adds topic IDs (KIP-516), which a request
# may look topics up by from v12; v13 (KIP-1102) a top-level error code.
METADATA = Message(
    3, "Metadata", valid_versions="0-13", flexible_versions="9+",
    request=[
        F("topics", Array(Struct(
            "MetadataRequestTopic",
            F("topic_id", "uuid", "10+", ignorable=True),
            F("name", "string", "0+", nullable_versions="10+"),
        )), "0+", nullable_versions="1+"),
        F("allow_auto_topic_creation", "bool", "4+", default=True, ignorable=False),
        F("include_cluster_authorized_operations", "bool", "8-10"),
        F("include_topic_authorized_operations", "bool", "8+"),
    ],
    response=[
        F("throttle_time_ms", "int32", "3+", ignorable=True),
        F("brokers", Array(Struct(
            "MetadataResponseBroker",
            F("node_id", "int32", "0+"),
            F("host", "string", "0+"),
            F("port", "int32", "0+"),
            F("rack", "string", "1+", nullable_versions="1+", ignorable=True, default=None),
        )), "0+"),
        F("cluster_id", "string", "2+", nullable_versions="2+", ignorable=True, default=None),
        F("controller_id", "int32", "1+", default=-1, ignorable=True),
        F("topics", Array(Struct(
            "MetadataResponseTopic",
            F("error_code", "int16", "0+"),
            F("name", "string", "0+", nullable_versions="12+"),
            F("topic_id", "uuid", "10+", ignorable=True),
            F("is_internal", "bool", "1+", default=False, ignorable=True),
            F("partitions", Array(Struct(
                "MetadataResponsePartition",
                F("error_code", "int16", "0+"),
                F("partition_index", "int32", "0+"),
                F("leader_id", "int32", "0+"),
                F("leader_epoch", "int32", "7+", default=-1, ignorable=True),
                F("replica_nodes", Array("int32"), "0+"),
                F("isr_nodes", Array("int32"), "0+"),
                F("offline_replicas", Array("int32"), "5+", ignorable=True),
            )), "0+"),
            F("topic_authorized_operations", "int32", "8+", default=-2147483648),
        )), "0+"),
        F("cluster_authorized_operations", "int32", "8-10", default=-2147483648),
        F("error_code", "int16", "13+", ignorable=True),
    ],
)

# Spec: validVersions 0-2, flexibleVersions 0+. v1 asks for broker or (KRaft) controller
# endpoints, v2 may include fenced brokers (KRaft; none are fenced here).
DESCRIBE_CLUSTER = Message(
    60, "DescribeCluster", valid_versions="0-2", flexible_versions="0+",
    request=[
        F("include_cluster_authorized_operations", "bool", "0+"),
        F("endpoint_type", "int8", "1+", default=1),
        F("include_fenced_brokers", "bool", "2+"),
    ],
    response=[
        F("throttle_time_ms", "int32", "0+"),
        F("error_code", "int16", "0+"),
        F("error_message", "string", "0+", nullable_versions="0+", default=None),
        F("endpoint_type", "int8", "1+", default=1),
        F("cluster_id", "string", "0+"),
        F("controller_id", "int32", "0+", default=-1),
        F("brokers", Array(Struct(
            "DescribeClusterBroker",
            F("broker_id", "int32", "0+"),
            F("host", "string", "0+"),
            F("port", "int32", "0+"),
            F("rack", "string", "0+", nullable_versions="0+", default=None),
            F("is_fenced", "bool", "2+"),
        )), "0+"),
        F("cluster_authorized_operations", "int32", "0+", default=-2147483648),
    ],
)
