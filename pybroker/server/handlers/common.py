"""Lookups shared by the handlers."""
from __future__ import annotations

from pybroker.config import TOPIC_SETTINGS
from pybroker.protocol import ErrorCode

DYNAMIC_TOPIC_CONFIG, DEFAULT_CONFIG = 1, 5   # config sources (DescribeConfigs, CreateTopics)


def partition_error(worker, topic: str, partition: int) -> ErrorCode:
    """Why this node cannot serve topic/partition to clients (NONE when it leads it and
    has its log online)."""
    tp = (topic, partition)
    if tp in worker.replicas.leader_logs:
        return ErrorCode.NONE
    if tp in worker.replicas.leading:  # a controlled shutdown is handing it over
        return ErrorCode.NOT_LEADER_OR_FOLLOWER
    stored = worker.partitions.error_for(tp)  # opening, offline, closing
    if stored is not None:
        return stored
    leader = worker.cluster.leader(topic, partition)
    if leader is None:
        return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    if leader == worker.node_id or leader < 0:
        return ErrorCode.LEADER_NOT_AVAILABLE  # becoming leader here, or none elected
    return ErrorCode.NOT_LEADER_OR_FOLLOWER


def topic_config_entries(worker, topic: str, keys=None, overrides=None) -> list[dict]:
    """A topic's configs as DescribeConfigs lists them (its overrides, the broker's
    defaults for the rest); keys: only these (None: all); overrides: these instead of
    the ones in the cluster view (a topic being created is not in it yet)."""
    if overrides is None:
        overrides = worker.cluster.topic_configs.get(topic, {})
    entries = []
    for key in sorted(TOPIC_SETTINGS):
        if keys is not None and key not in keys:
            continue
        overridden = key in overrides
        value = overrides[key] if overridden else worker.config[TOPIC_SETTINGS[key].key]
        source = DYNAMIC_TOPIC_CONFIG if overridden else DEFAULT_CONFIG
        entries.append({"name": key, "value": str(value), "read_only": False,
                        "config_source": source, "is_default": not overridden,
                        "is_sensitive": False,
                        "synonyms": [{"name": key, "value": str(value), "source": source}]})
    return entries
