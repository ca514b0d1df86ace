"""The table of APIs this broker implements, and what ApiVersions advertises.

`SUPPORTED` is the single source of truth for the advertised ranges; a test checks
that each schema's `valid_versions` equals its entry, so the broker never advertises
a version it cannot encode.
"""

from __future__ import annotations

from .messages.configs import ALTER_CONFIGS, DESCRIBE_CONFIGS, INCREMENTAL_ALTER_CONFIGS
from .messages.fetch import FETCH, LIST_OFFSETS
from .messages.groups import (DELETE_GROUPS, DESCRIBE_GROUPS, FIND_COORDINATOR, HEARTBEAT,
                              JOIN_GROUP, LEAVE_GROUP, LIST_GROUPS, SYNC_GROUP)
from .messages.metadata import API_VERSIONS, DESCRIBE_CLUSTER, METADATA
from .messages.offsets import OFFSET_COMMIT, OFFSET_DELETE, OFFSET_FETCH
from .messages.partitions import (ALTER_PARTITION_REASSIGNMENTS, CREATE_PARTITIONS,
                                  DESCRIBE_LOG_DIRS, ELECT_LEADERS,
                                  LIST_PARTITION_REASSIGNMENTS)
from .messages.produce import INIT_PRODUCER_ID, PRODUCE
from .messages.replication import OFFSET_FOR_LEADER_EPOCH
from .messages.topics import CREATE_TOPICS, DELETE_TOPICS
from .schema import Message


class ApiKey:
    """Kafka api keys of the APIs we implement (int16 on the wire)."""

    PRODUCE = 0
    FETCH = 1
    LIST_OFFSETS = 2
    METADATA = 3
    OFFSET_COMMIT = 8
    OFFSET_FETCH = 9
    FIND_COORDINATOR = 10
    JOIN_GROUP = 11
    HEARTBEAT = 12
    LEAVE_GROUP = 13
    SYNC_GROUP = 14
    DESCRIBE_GROUPS = 15
    LIST_GROUPS = 16
    API_VERSIONS = 18
    CREATE_TOPICS = 19
    DELETE_TOPICS = 20
    INIT_PRODUCER_ID = 22
    OFFSET_FOR_LEADER_EPOCH = 23
    DESCRIBE_CONFIGS = 32
    ALTER_CONFIGS = 33
    DESCRIBE_LOG_DIRS = 35
    CREATE_PARTITIONS = 37
    ELECT_LEADERS = 43
    DELETE_GROUPS = 42
    INCREMENTAL_ALTER_CONFIGS = 44
    ALTER_PARTITION_REASSIGNMENTS = 45
    LIST_PARTITION_REASSIGNMENTS = 46
    OFFSET_DELETE = 47
    DESCRIBE_CLUSTER = 60


APIS: dict[int, Message] = {m.api_key: m for m in (
    PRODUCE, FETCH, LIST_OFFSETS, METADATA, OFFSET_COMMIT, OFFSET_FETCH, FIND_COORDINATOR,
    JOIN_GROUP, HEARTBEAT, LEAVE_GROUP, SYNC_GROUP, DESCRIBE_GROUPS, LIST_GROUPS,
    API_VERSIONS, CREATE_TOPICS, DELETE_TOPICS, INIT_PRODUCER_ID, OFFSET_FOR_LEADER_EPOCH,
    DESCRIBE_CONFIGS, ALTER_CONFIGS, INCREMENTAL_ALTER_CONFIGS, CREATE_PARTITIONS,
    ELECT_LEADERS, ALTER_PARTITION_REASSIGNMENTS, LIST_PARTITION_REASSIGNMENTS,
    DELETE_GROUPS, DESCRIBE_CLUSTER, DESCRIBE_LOG_DIRS, OFFSET_DELETE,
)}

# api_key -> (min_version, max_version) advertised in ApiVersions.
SUPPORTED: dict[int, tuple[int, int]] = {
    ApiKey.API_VERSIONS: (0, 4),
    ApiKey.METADATA: (0, 13),
    ApiKey.PRODUCE: (0, 8),         # v0-v2 only to refuse them (see messages/produce.py)
    ApiKey.FETCH: (4, 17),
    ApiKey.LIST_OFFSETS: (0, 10),
    ApiKey.CREATE_TOPICS: (0, 7),
    ApiKey.DELETE_TOPICS: (0, 6),
    ApiKey.INIT_PRODUCER_ID: (0, 5),
    ApiKey.OFFSET_FOR_LEADER_EPOCH: (0, 4),
    ApiKey.FIND_COORDINATOR: (0, 6),
    ApiKey.JOIN_GROUP: (0, 9),
    ApiKey.SYNC_GROUP: (0, 5),
    ApiKey.HEARTBEAT: (0, 4),
    ApiKey.LEAVE_GROUP: (0, 5),
    ApiKey.OFFSET_COMMIT: (0, 9),
    ApiKey.OFFSET_FETCH: (0, 9),
    ApiKey.LIST_GROUPS: (0, 5),
    ApiKey.DESCRIBE_GROUPS: (0, 6),
    ApiKey.DESCRIBE_CONFIGS: (0, 4),
    ApiKey.ALTER_CONFIGS: (0, 2),
    ApiKey.INCREMENTAL_ALTER_CONFIGS: (0, 1),
    ApiKey.CREATE_PARTITIONS: (0, 3),
    ApiKey.ELECT_LEADERS: (0, 2),
    ApiKey.ALTER_PARTITION_REASSIGNMENTS: (0, 1),
    ApiKey.LIST_PARTITION_REASSIGNMENTS: (0, 0),
    ApiKey.DELETE_GROUPS: (0, 2),
    ApiKey.DESCRIBE_CLUSTER: (0, 2),
    ApiKey.DESCRIBE_LOG_DIRS: (0, 4),
    ApiKey.OFFSET_DELETE: (0, 0),
}


def api_versions_array(supported: dict[int, tuple[int, int]] = SUPPORTED) -> list[dict]:
    """The `api_keys` array of an ApiVersions response, sorted by api key."""
    return [{"api_key": key, "min_version": low, "max_version": high}
            for key, (low, high) in sorted(supported.items())]
