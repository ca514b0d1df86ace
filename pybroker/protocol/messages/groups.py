"""Group membership APIs: FindCoordinator (10), JoinGroup (11), Heartbeat (12),
LeaveGroup (13), SyncGroup (14), DescribeGroups (15), ListGroups (16), DeleteGroups (42)."""

from ..schema import Array, Field as F, Message, Struct

# Spec: validVersions 0-6, flexibleVersions 3+. v4+ asks for several keys at once.
FIND_COORDINATOR = Message(
    10, "FindCoordinator", valid_versions="0-6", flexible_versions="3+",
    request=[
        F("key", "string", "0-3"),
        F("key_type", "int8", "1+", default=0, ignorable=False),
        F("coordinator_keys", Array("string"), "4+"),
    ],
    response=[
        F("throttle_time_ms", "int32", "1+", ignorable=True),
        F("error_code", "int16", "0-3"),
        F("error_message", "string", "1-3", nullable_versions="1-3", ignorable=True),
        F("node_id", "int32", "0-3"),
        F("host", "string", "0-3"),
        F("port", "int32", "0-3"),
        F("coordinators", Array(Struct(
            "Coordinator",
            F("key", "string", "4+"),
            F("node_id", "int32", "4+"),
            F("host", "string", "4+"),
            F("port", "int32", "4+"),
            F("error_code", "int16", "4+"),
            F("error_message", "string", "4+", nullable_versions="4+", ignorable=True),
        )), "4+"),
    ],
)

# Spec: validVersions 0-9, flexibleVersions 6+.
JOIN_GROUP = Message(
    11, "JoinGroup", valid_versions="0-9", flexible_versions="6+",
    request=[
        F("group_id", "string", "0+"),
        F("session_timeout_ms", "int32", "0+"),
        # If absent (v0), the session timeout serves as the rebalance timeout.
        F("rebalance_timeout_ms", "int32", "1+", default=-1, ignorable=True),
        F("member_id", "string", "0+"),
        F("group_instance_id", "string", "5+", nullable_versions="5+", default=None),
        F("protocol_type", "string", "0+"),
        F("protocols", Array(Struct(
            "JoinGroupRequestProtocol",
            F("name", "string", "0+"),
            F("metadata", "bytes", "0+"),
        )), "0+"),
        F("reason", "string", "8+", nullable_versions="8+", default=None, ignorable=True),
    ],
    response=[
        F("throttle_time_ms", "int32", "2+", ignorable=True),
        F("error_code", "int16", "0+"),
        F("generation_id", "int32", "0+", default=-1),
        F("protocol_type", "string", "7+", nullable_versions="7+", default=None,
          ignorable=True),
        F("protocol_name", "string", "0+", nullable_versions="7+"),
        F("leader", "string", "0+"),
        F("skip_assignment", "bool", "9+", default=False),
        F("member_id", "string", "0+"),
        F("members", Array(Struct(
            "JoinGroupResponseMember",
            F("member_id", "string", "0+"),
            F("group_instance_id", "string", "5+", ignorable=True, nullable_versions="5+",
              default=None),
            F("metadata", "bytes", "0+"),
        )), "0+"),
    ],
)

# Spec: validVersions 0-4, flexibleVersions 4+.
HEARTBEAT = Message(
    12, "Heartbeat", valid_versions="0-4", flexible_versions="4+",
    request=[
        F("group_id", "string", "0+"),
        F("generation_id", "int32", "0+"),
        F("member_id", "string", "0+"),
        F("group_instance_id", "string", "3+", nullable_versions="3+", default=None),
    ],
    response=[
        F("throttle_time_ms", "int32", "1+", ignorable=True),
        F("error_code", "int16", "0+"),
    ],
)

# Spec: validVersions 0-5, flexibleVersions 4+.
LEAVE_GROUP = Message(
    13, "LeaveGroup", valid_versions="0-5", flexible_versions="4+",
    request=[
        F("group_id", "string", "0+"),
        F("member_id", "string", "0-2"),
        F("members", Array(Struct(
            "MemberIdentity",
            F("member_id", "string", "3+"),
            F("group_instance_id", "string", "3+", nullable_versions="3+", default=None),
            F("reason", "string", "5+", nullable_versions="5+", default=None,
              ignorable=True),
        )), "3+"),
    ],
    response=[
        F("throttle_time_ms", "int32", "1+", ignorable=True),
        F("error_code", "int16", "0+"),
        F("members", Array(Struct(
            "MemberResponse",
            F("member_id", "string", "3+"),
            F("group_instance_id", "string", "3+", nullable_versions="3+"),
            F("error_code", "int16", "3+"),
        )), "3+"),
    ],
)

# Spec: validVersions 0-5, flexibleVersions 4+.
SYNC_GROUP = Message(
    14, "SyncGroup", valid_versions="0-5", flexible_versions="4+",
    request=[
        F("group_id", "string", "0+"),
        F("generation_id", "int32", "0+"),
        F("member_id", "string", "0+"),
        F("group_instance_id", "string", "3+", nullable_versions="3+", default=None),
        F("protocol_type", "string", "5+", nullable_versions="5+", default=None,
          ignorable=True),
        F("protocol_name", "string", "5+", nullable_versions="5+", default=None,
          ignorable=True),
        F("assignments", Array(Struct(
            "SyncGroupRequestAssignment",
            F("member_id", "string", "0+"),
            F("assignment", "bytes", "0+"),
        )), "0+"),
    ],
    response=[
        F("throttle_time_ms", "int32", "1+", ignorable=True),
        F("error_code", "int16", "0+"),
        F("protocol_type", "string", "5+", nullable_versions="5+", default=None,
          ignorable=True),
        F("protocol_name", "string", "5+", nullable_versions="5+", default=None,
          ignorable=True),
        F("assignment", "bytes", "0+"),
    ],
)

# Spec: validVersions 0-6, flexibleVersions 5+. v6 (KIP-1043) answers a group that
# does not exist with GROUP_ID_NOT_FOUND and a message, not the Dead state.
DESCRIBE_GROUPS = Message(
    15, "DescribeGroups", valid_versions="0-6", flexible_versions="5+",
    request=[
        F("groups", Array("string"), "0+"),
        F("include_authorized_operations", "bool", "3+"),
    ],
    response=[
        F("throttle_time_ms", "int32", "1+", ignorable=True),
        F("groups", Array(Struct(
            "DescribedGroup",
            F("error_code", "int16", "0+"),
            F("error_message", "string", "6+", nullable_versions="6+", default=None),
            F("group_id", "string", "0+"),
            F("group_state", "string", "0+"),
            F("protocol_type", "string", "0+"),
            F("protocol_data", "string", "0+"),
            F("members", Array(Struct(
                "DescribedGroupMember",
                F("member_id", "string", "0+"),
                F("group_instance_id", "string", "4+", ignorable=True,
                  nullable_versions="4+", default=None),
                F("client_id", "string", "0+"),
                F("client_host", "string", "0+"),
                F("member_metadata", "bytes", "0+"),
                F("member_assignment", "bytes", "0+"),
            )), "0+"),
            F("authorized_operations", "int32", "3+", default=-2147483648),
        )), "0+"),
    ],
)

# Spec: validVersions 0-5, flexibleVersions 3+. The request is empty before v4, which
# filters by state, and v5, by group type ("classic" or "consumer", KIP-848).
LIST_GROUPS = Message(
    16, "ListGroups", valid_versions="0-5", flexible_versions="3+",
    request=[
        F("states_filter", Array("string"), "4+"),
        F("types_filter", Array("string"), "5+"),
    ],
    response=[
        F("throttle_time_ms", "int32", "1+", ignorable=True),
        F("error_code", "int16", "0+"),
        F("groups", Array(Struct(
            "ListedGroup",
            F("group_id", "string", "0+"),
            F("protocol_type", "string", "0+"),
            F("group_state", "string", "4+", ignorable=True),
            F("group_type", "string", "5+", ignorable=True),
        )), "0+"),
    ],
)

# Spec: validVersions 0-2, flexibleVersions 2+.
DELETE_GROUPS = Message(
    42, "DeleteGroups", valid_versions="0-2", flexible_versions="2+",
    request=[
        F("groups_names", Array("string"), "0+"),
    ],
    response=[
        F("throttle_time_ms", "int32", "0+"),
        F("results", Array(Struct(
            "DeletableGroupResult",
            F("group_id", "string", "0+"),
            F("error_code", "int16", "0+"),
        )), "0+"),
    ],
)
