"""Configuration APIs: DescribeConfigs (32), AlterConfigs (33),
IncrementalAlterConfigs (44)."""

from ..schema import Array, Field as F, Message, Struct

# Spec: validVersions 1-4 (0 removed in Kafka 4.0), flexibleVersions 4+.
# We implement 0-2 (none flexible).
DESCRIBE_CONFIGS = Message(
    32, "DescribeConfigs", valid_versions="0-4", flexible_versions="4+",
    request=[
        F("resources", Array(Struct(
            "DescribeConfigsResource",
            F("resource_type", "int8", "0+"),
            F("resource_name", "string", "0+"),
            F("configuration_keys", Array("string"), "0+", nullable_versions="0+"),
        )), "0+"),
        F("include_synonyms", "bool", "1+", default=False, ignorable=False),
        F("include_documentation", "bool", "3+", default=False, ignorable=False),
    ],
    response=[
        F("throttle_time_ms", "int32", "0+"),
        F("results", Array(Struct(
            "DescribeConfigsResult",
            F("error_code", "int16", "0+"),
            F("error_message", "string", "0+", nullable_versions="0+"),
            F("resource_type", "int8", "0+"),
            F("resource_name", "string", "0+"),
            F("configs", Array(Struct(
                "DescribeConfigsResourceResult",
                F("name", "string", "0+"),
                F("value", "string", "0+", nullable_versions="0+"),
                F("read_only", "bool", "0+"),
                F("config_source", "int8", "1+", default=-1, ignorable=True),
                F("is_default", "bool", "0"),
                F("is_sensitive", "bool", "0+"),
                F("synonyms", Array(Struct(
                    "DescribeConfigsSynonym",
                    F("name", "string", "1+"),
                    F("value", "string", "1+", nullable_versions="0+"),
                    F("source", "int8", "1+"),
                )), "1+", ignorable=True),
                F("config_type", "int8", "3+", default=0, ignorable=True),
                F("documentation", "string", "3+", nullable_versions="0+", ignorable=True,
                  default=None),
            )), "0+"),
        )), "0+"),
    ],
)

# AlterConfigs and IncrementalAlterConfigs answer with the same fields in every version
# we implement (the spec declares them twice, identically).
_ALTER_RESPONSE = [
    F("throttle_time_ms", "int32", "0+"),
    F("responses", Array(Struct(
        "AlterConfigsResourceResponse",
        F("error_code", "int16", "0+"),
        F("error_message", "string", "0+", nullable_versions="0+"),
        F("resource_type", "int8", "0+"),
        F("resource_name", "string", "0+"),
    )), "0+"),
]

# Spec: validVersions 0-2, flexibleVersions 2+. We implement 0-2 (v2 is flexible).
ALTER_CONFIGS = Message(
    33, "AlterConfigs", valid_versions="0-2", flexible_versions="2+",
    request=[
        F("resources", Array(Struct(
            "AlterConfigsResource",
            F("resource_type", "int8", "0+"),
            F("resource_name", "string", "0+"),
            F("configs", Array(Struct(
                "AlterableConfig",
                F("name", "string", "0+"),
                F("value", "string", "0+", nullable_versions="0+"),
            )), "0+"),
        )), "0+"),
        F("validate_only", "bool", "0+"),
    ],
    response=_ALTER_RESPONSE,
)

# Spec: validVersions 0-1, flexibleVersions 1+. We implement 0-1 (v1 is flexible).
INCREMENTAL_ALTER_CONFIGS = Message(
    44, "IncrementalAlterConfigs", valid_versions="0-1", flexible_versions="1+",
    request=[
        F("resources", Array(Struct(
            "AlterConfigsResource",
            F("resource_type", "int8", "0+"),
            F("resource_name", "string", "0+"),
            F("configs", Array(Struct(
                "AlterableConfig",
                F("name", "string", "0+"),
                F("config_operation", "int8", "0+"),
                F("value", "string", "0+", nullable_versions="0+"),
            )), "0+"),
        )), "0+"),
        F("validate_only", "bool", "0+"),
    ],
    response=_ALTER_RESPONSE,
)
