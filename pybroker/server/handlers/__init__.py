"""Request handlers, one module per API family.

A handler is `handle(ctx, request) -> response dict | asyncio.Future | AnswerAfterRun
| None`: a dict is answered at once, a Future when it completes (long-poll fetch), an
AnswerAfterRun (Produce) after the connection's run of pipelined frames has written
its appends (append_batch.py) and, for acks=all, once they are flushed; None never
(acks=0). HANDLERS is what the broker implements, so ApiVersions advertises exactly
its keys (with the ranges in pybroker.protocol.SUPPORTED).
"""
from pybroker.protocol import ApiKey

from . import (admin, api_versions, configs, elections, fetch, groups, leader_epoch,
               log_dirs, metadata, offsets, partitions, produce, reassignments)

HANDLERS = {
    ApiKey.API_VERSIONS: api_versions.handle,
    ApiKey.METADATA: metadata.handle,
    ApiKey.PRODUCE: produce.handle,
    ApiKey.FETCH: fetch.handle,
    ApiKey.LIST_OFFSETS: offsets.handle_list_offsets,
    ApiKey.CREATE_TOPICS: admin.handle_create_topics,
    ApiKey.DELETE_TOPICS: admin.handle_delete_topics,
    ApiKey.INIT_PRODUCER_ID: produce.handle_init_producer_id,
    ApiKey.OFFSET_FOR_LEADER_EPOCH: leader_epoch.handle,
    ApiKey.FIND_COORDINATOR: groups.handle_find_coordinator,
    ApiKey.JOIN_GROUP: groups.handle_join_group,
    ApiKey.SYNC_GROUP: groups.handle_sync_group,
    ApiKey.HEARTBEAT: groups.handle_heartbeat,
    ApiKey.LEAVE_GROUP: groups.handle_leave_group,
    ApiKey.OFFSET_COMMIT: groups.handle_offset_commit,
    ApiKey.OFFSET_FETCH: groups.handle_offset_fetch,
    ApiKey.LIST_GROUPS: groups.handle_list_groups,
    ApiKey.DESCRIBE_GROUPS: groups.handle_describe_groups,
    ApiKey.DESCRIBE_CONFIGS: configs.handle_describe,
    ApiKey.ALTER_CONFIGS: configs.handle_alter,
    ApiKey.INCREMENTAL_ALTER_CONFIGS: configs.handle_incremental_alter,
    ApiKey.CREATE_PARTITIONS: partitions.handle,
    ApiKey.ELECT_LEADERS: elections.handle,
    ApiKey.ALTER_PARTITION_REASSIGNMENTS: reassignments.handle_alter,
    ApiKey.LIST_PARTITION_REASSIGNMENTS: reassignments.handle_list,
    ApiKey.DELETE_GROUPS: groups.handle_delete_groups,
    ApiKey.DESCRIBE_CLUSTER: metadata.handle_describe_cluster,
    ApiKey.DESCRIBE_LOG_DIRS: log_dirs.handle,
    ApiKey.OFFSET_DELETE: groups.handle_offset_delete,
}
