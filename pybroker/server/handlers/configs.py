"""DescribeConfigs (32), AlterConfigs (33), IncrementalAlterConfigs (44).

Topic configs are per-topic overrides of the broker's log defaults, kept in ZooKeeper
at /config/topics/<topic>; every node applies a change to its open logs when its view
of ZooKeeper refreshes. Broker configs are static (the properties file and flags):
they can be described, not altered.

A resource may name at most admin.MAX_CONFIG_ENTRIES configs (keys to describe or
entries to alter), checked before anything is built from them. The ZooKeeper writes
of an alter run on the worker's ZooKeeper thread (admin.zk_call); a failed write
answers its resources with the error code, never by dropping the connection.
"""
from __future__ import annotations

from pybroker.config import SETTINGS, TOPIC_SETTINGS, topic_config_error
from pybroker.protocol import ErrorCode
from pybroker.server.handlers.admin import MAX_CONFIG_ENTRIES, chain, zk_call
from pybroker.server.handlers.common import DEFAULT_CONFIG, topic_config_entries

TOPIC, BROKER = 2, 4                 # resource types
STATIC_BROKER_CONFIG = 4             # config source (the others: handlers/common.py)
SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3                             # operations


def _broker_entries(worker, keys) -> list[dict]:
    entries = []
    for setting in SETTINGS:
        if keys is not None and setting.key not in keys:
            continue
        value = worker.config[setting.key]
        is_default = value == setting.default
        source = DEFAULT_CONFIG if is_default else STATIC_BROKER_CONFIG
        entries.append({"name": setting.key, "value": str(value), "read_only": True,
                        "config_source": source, "is_default": is_default,
                        "is_sensitive": False, "synonyms": []})
    return entries


def _result(resource, code=ErrorCode.NONE, message=None, configs=()) -> dict:
    return {"error_code": code, "error_message": message,
            "resource_type": resource["resource_type"],
            "resource_name": resource["resource_name"], "configs": list(configs)}


def handle_describe(ctx, request) -> dict:
    worker = ctx.worker
    results = []
    for res in request["resources"]:
        keys = res["configuration_keys"]
        if keys is not None and len(keys) > MAX_CONFIG_ENTRIES:
            results.append(_result(res, ErrorCode.INVALID_REQUEST, _too_many(len(keys))))
            continue
        keys = set(keys) if keys is not None else None
        if res["resource_type"] == TOPIC:
            if res["resource_name"] not in worker.cluster.topics:
                results.append(_result(res, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                                       f"unknown topic {res['resource_name']!r}"))
            else:
                results.append(_result(res, configs=topic_config_entries(
                    worker, res["resource_name"], keys)))
        elif res["resource_type"] == BROKER:
            results.append(_result(res, configs=_broker_entries(worker, keys)))
        else:
            results.append(_result(res, ErrorCode.INVALID_REQUEST,
                                   f"resource type {res['resource_type']} is not supported"))
    if ctx.api_version > 0:  # is_default exists in v0 only; v1+ say it with config_source
        for result in results:
            for entry in result["configs"]:
                entry["is_default"] = False
    if ctx.api_version >= 3:
        for res, result in zip(request["resources"], results):
            _describe_settings(res["resource_type"], result["configs"],
                               request["include_documentation"])
    return {"throttle_time_ms": 0, "results": results}


# Kafka's ConfigEntry.ConfigType: what DescribeConfigs v3+ says a value is
_CONFIG_TYPES = {bool: 1, str: 2, int: 5, float: 6}   # BOOLEAN, STRING, LONG, DOUBLE


def _describe_settings(resource_type: int, entries: list, documentation: bool) -> None:
    """v3+: each entry's type, and its documentation when asked for."""
    settings = TOPIC_SETTINGS if resource_type == TOPIC else {s.key: s for s in SETTINGS}
    for entry in entries:
        setting = settings.get(entry["name"])
        if setting is not None:
            entry["config_type"] = _CONFIG_TYPES.get(setting.type, 0)
            entry["documentation"] = setting.doc if documentation else None


def _alter(ctx, request, incremental: bool):
    worker = ctx.worker
    responses, pending = [], {}
    for res in request["resources"]:
        name = res["resource_name"]
        answer = {"error_code": ErrorCode.NONE, "error_message": None,
                  "resource_type": res["resource_type"], "resource_name": name}
        responses.append(answer)
        if res["resource_type"] != TOPIC:
            answer["error_code"] = ErrorCode.INVALID_REQUEST
            answer["error_message"] = ("broker configs are static: set them in the properties "
                                       "file or with --set, then restart")
            continue
        if name not in worker.cluster.topics:
            answer["error_code"] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            answer["error_message"] = f"unknown topic {name!r}"
            continue
        if len(res["configs"]) > MAX_CONFIG_ENTRIES:
            answer["error_code"] = ErrorCode.INVALID_CONFIG
            answer["error_message"] = _too_many(len(res["configs"]))
            continue
        config, problem = _new_config(worker.cluster.topic_configs.get(name, {}),
                                      res["configs"], incremental)
        problem = problem or topic_config_error(config)
        if problem:
            answer["error_code"] = ErrorCode.INVALID_CONFIG
            answer["error_message"] = problem
        elif not request["validate_only"]:
            pending[name] = config
    response = {"throttle_time_ms": 0, "responses": responses}
    if not pending:
        return response

    def write(registry, configs: dict) -> None:
        for name, config in configs.items():
            registry.set_topic_config(name, config)

    def answer(outcome):
        code, message, _ = outcome
        if code:   # which of the writes happened is unknown: every resource says so
            for entry in responses:
                if entry["resource_name"] in pending and not entry["error_code"]:
                    entry["error_code"], entry["error_message"] = code, message
        return response
    what = f"config write of {len(pending)} topic(s)"
    return chain(zk_call(worker, what, write, worker.registry, pending), answer)


def _too_many(count: int) -> str:
    return f"{count} config entries; at most {MAX_CONFIG_ENTRIES} allowed per resource"


def _new_config(current: dict, changes: list, incremental: bool) -> tuple[dict, str | None]:
    if not incremental:  # AlterConfigs replaces the whole set of overrides
        return {c["name"]: c["value"] for c in changes if c["value"] is not None}, None
    config = dict(current)
    for c in changes:
        op = c["config_operation"]
        if op == SET:
            config[c["name"]] = c["value"]
        elif op == DELETE:
            config.pop(c["name"], None)
        else:
            return config, f"operation {op} on {c['name']!r}: only SET (0) and DELETE (1) " \
                           "apply to the numeric topic configs"
    return config, None


def handle_alter(ctx, request):
    return _alter(ctx, request, incremental=False)


def handle_incremental_alter(ctx, request):
    return _alter(ctx, request, incremental=True)
