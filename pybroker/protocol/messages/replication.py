"""Replication: OffsetForLeaderEpoch (key 23).

A follower (or, since KIP-320, a consumer) asks the leader where a leader epoch ended,
to find how far its own log agrees with the leader's and truncate the rest.
"""

from ..schema import Array, Field as F, Message, Struct

# Spec: validVersions 0-4 (0-1 deprecated), flexibleVersions 4+. We implement 0-4.
# v1 adds leader_epoch to the response; v2 current_leader_epoch (fencing, KIP-320)
# and throttle_time_ms; v3 replica_id (-2 is the spec's default: a debug consumer, or
# a follower on an older version; consumers send -1, followers their broker id).
OFFSET_FOR_LEADER_EPOCH = Message(
    23, "OffsetForLeaderEpoch", valid_versions="0-4", flexible_versions="4+",
    request=[
        F("replica_id", "int32", "3+", default=-2, ignorable=True),
        F("topics", Array(Struct(
            "OffsetForLeaderTopic",
            F("topic", "string", "0+"),
            F("partitions", Array(Struct(
                "OffsetForLeaderPartition",
                F("partition", "int32", "0+"),
                F("current_leader_epoch", "int32", "2+", default=-1, ignorable=True),
                F("leader_epoch", "int32", "0+"),
            )), "0+"),
        )), "0+"),
    ],
    response=[
        F("throttle_time_ms", "int32", "2+", ignorable=True),
        F("topics", Array(Struct(
            "OffsetForLeaderTopicResult",
            F("topic", "string", "0+"),
            F("partitions", Array(Struct(
                "EpochEndOffset",
                F("error_code", "int16", "0+"),
                F("partition", "int32", "0+"),
                F("leader_epoch", "int32", "1+", default=-1, ignorable=True),
                F("end_offset", "int64", "0+", default=-1),
            )), "0+"),
        )), "0+"),
    ],
)
