"""Produce (key 0) and InitProducerId (key 22): writing records, idempotent producers."""

from ..schema import Array, Field as F, Message, Struct

# Spec: validVersions 3-13 in Kafka 4.x (0-11 in 3.x), flexibleVersions 9+. We
# implement 0-8 (none flexible; v8 answers per-batch record errors and an error
# message, KIP-467). v3 is the first version carrying RecordBatch v2, the only
# format we store; v0-v2 (message formats v0/v1) are decoded only to be answered with
# UNSUPPORTED_FOR_MESSAGE_FORMAT. They are advertised as Kafka 4.0 advertises them
# (KAFKA-18659): librdkafka before 2.1 compresses only if ApiVersions lists Produce v0.
PRODUCE = Message(
    0, "Produce", valid_versions="0-8", flexible_versions="9+",
    request=[
        F("transactional_id", "string", "3+", nullable_versions="3+", default=None),
        F("acks", "int16", "0+"),
        F("timeout_ms", "int32", "0+"),
        F("topic_data", Array(Struct(
            "TopicProduceData",
            F("name", "string", "0-12", ignorable=True),
            F("partition_data", Array(Struct(
                "PartitionProduceData",
                F("index", "int32", "0+"),
                F("records", "records", "0+", nullable_versions="0+"),
            )), "0+"),
        )), "0+"),
    ],
    response=[
        F("responses", Array(Struct(
            "TopicProduceResponse",
            F("name", "string", "0-12", ignorable=True),
            F("partition_responses", Array(Struct(
                "PartitionProduceResponse",
                F("index", "int32", "0+"),
                F("error_code", "int16", "0+"),
                F("base_offset", "int64", "0+"),
                F("log_append_time_ms", "int64", "2+", default=-1, ignorable=True),
                F("log_start_offset", "int64", "5+", default=-1, ignorable=True),
                F("record_errors", Array(Struct(
                    "BatchIndexAndErrorMessage",
                    F("batch_index", "int32", "8+"),
                    F("batch_index_error_message", "string", "8+", nullable_versions="8+",
                      default=None),
                )), "8+", ignorable=True),
                F("error_message", "string", "8+", nullable_versions="8+", default=None,
                  ignorable=True),
            )), "0+"),
        )), "0+"),
        F("throttle_time_ms", "int32", "1+", ignorable=True, default=0),
    ],
)

# Spec: validVersions 0-6, flexibleVersions 2+. We implement 0-5 (v6 is KIP-939's
# two-phase commit, after Kafka 4.1). v3+ carries the producer's current ID and epoch,
# which a producer without a transactional id may send to have its epoch bumped
# (KIP-360); as Kafka, a new producer ID is given to such a producer anyway.
INIT_PRODUCER_ID = Message(
    22, "InitProducerId", valid_versions="0-5", flexible_versions="2+",
    request=[
        F("transactional_id", "string", "0+", nullable_versions="0+"),
        F("transaction_timeout_ms", "int32", "0+"),
        F("producer_id", "int64", "3+", default=-1),
        F("producer_epoch", "int16", "3+", default=-1),
    ],
    response=[
        F("throttle_time_ms", "int32", "0+", ignorable=True),
        F("error_code", "int16", "0+"),
        F("producer_id", "int64", "0+", default=-1),
        F("producer_epoch", "int16", "0+"),
    ],
)
