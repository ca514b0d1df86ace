"""`pybroker topics reassign`: move partitions' replicas to other brokers
(AlterPartitionReassignments / ListPartitionReassignments), with the modes and the
plan file of Kafka's kafka-reassign-partitions.sh:

    {"version": 1, "partitions": [{"topic": "t", "partition": 0, "replicas": [300, 400]}]}

--execute FILE   start the moves the file lists (replica ids are node ids)
--verify FILE    whether each is done: exit 0 when all are, 1 while any is under way
--cancel FILE    cancel the moves of the partitions the file lists
--list           the reassignments under way (of --topic, or all)
FILE may be "-" for standard input; a mode missing or a file that is not such a plan
is bad usage (exit 2). A move is done when the partition's replica set is
the target and every target replica is in sync; the old replicas are then deleted.
"""
from __future__ import annotations

import json
import sys

from pybroker.config import ConfigError
from pybroker.cli.topics import _admin, _check, _error_name, topic_metadata
from pybroker.protocol import ApiKey, ErrorCode

ALTER_VERSION = 0


def read_plan(path: str) -> list[tuple[str, int, list[int]]]:
    """[(topic, partition, replicas)] of a Kafka reassignment JSON file; ConfigError
    (bad usage: exit 2) naming what is wrong with it."""
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        plan = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(plan, dict) or not isinstance(plan.get("partitions"), list):
        raise ConfigError(f'{path}: expected {{"version": 1, "partitions": [...]}}')
    out = []
    for i, entry in enumerate(plan["partitions"]):
        try:
            topic, partition, replicas = entry["topic"], entry["partition"], entry["replicas"]
        except (KeyError, TypeError):
            raise ConfigError(f"{path}: partitions[{i}] needs topic, partition and "
                               "replicas") from None
        if (not isinstance(topic, str) or not isinstance(partition, int)
                or not isinstance(replicas, list)
                or not all(isinstance(n, int) for n in replicas)):
            raise ConfigError(f"{path}: partitions[{i}]: topic is a string, partition an "
                               "integer, replicas a list of node ids")
        out.append((topic, partition, replicas))
    if not out:
        raise ConfigError(f"{path}: no partitions listed")
    return out


def _alter(args, plan, cancel: bool) -> int:
    _cluster, conn = _admin(args)
    by_topic: dict = {}
    for topic, p, replicas in plan:
        by_topic.setdefault(topic, []).append(
            {"partition_index": p, "replicas": None if cancel else replicas})
    body = conn.request(ApiKey.ALTER_PARTITION_REASSIGNMENTS, ALTER_VERSION, {
        "timeout_ms": int(args.timeout * 1000),
        "topics": [{"name": t, "partitions": parts} for t, parts in by_topic.items()]})
    _check(body["error_code"], body["error_message"], "reassign")
    failed = 0
    for t in body["responses"]:
        for r in t["partitions"]:
            code = r["error_code"]
            if code == ErrorCode.NONE:
                what = "cancelled" if cancel else "reassignment started"
            else:
                failed += 1
                what = _error_name(code) + (f": {r['error_message']}"
                                            if r["error_message"] else "")
            print(f"{t['name']}-{r['partition_index']}: {what}")
    return 1 if failed else 0


def _ongoing(conn, topics) -> dict:
    body = conn.request(ApiKey.LIST_PARTITION_REASSIGNMENTS, 0, {
        "timeout_ms": 30000, "topics": topics})
    _check(body["error_code"], body["error_message"], "list reassignments")
    return {(t["name"], p["partition_index"]): p for t in body["topics"]
            for p in t["partitions"]}


def _list(args) -> int:
    _cluster, conn = _admin(args)
    topics = None
    if args.topic:
        meta = topic_metadata(conn, args.topic, f"reassign --list --topic {args.topic}")
        topics = [{"name": args.topic, "partition_indexes": sorted(
            p["partition_index"] for p in meta["partitions"])}]
    ongoing = _ongoing(conn, topics)
    if not ongoing:
        print("no reassignment under way")
    for (topic, p), r in sorted(ongoing.items()):
        print(f"{topic}-{p}: replicas {_ids(r['replicas'])} adding "
              f"{_ids(r['adding_replicas'])} removing {_ids(r['removing_replicas'])}")
    return 0


def _verify(args, plan) -> int:
    _cluster, conn = _admin(args)
    ongoing = _ongoing(conn, None)
    meta = {}
    for topic in {t for t, _, _ in plan}:
        body = topic_metadata(conn, topic, f"reassign --verify: topic {topic}")
        meta.update({(topic, p["partition_index"]): p for p in body["partitions"]})
    pending = 0
    for topic, p, replicas in plan:
        m = meta.get((topic, p))
        if m is None:
            what, bad = "no such partition", True
        elif (topic, p) in ongoing:
            what, bad = "still in progress", True
        elif list(m["replica_nodes"]) == list(replicas):
            what, bad = "complete", False
        else:
            what, bad = (f"not under way, replicas are {_ids(m['replica_nodes'])} (was it "
                         "cancelled?)"), True
        pending += bad
        print(f"{topic}-{p}: {what}")
    return 1 if pending else 0


def _ids(nodes) -> str:
    return ",".join(str(n) for n in nodes) or "-"


def run(args) -> int:
    modes = [m for m in ("execute", "verify", "cancel") if getattr(args, m)] + (
        ["list"] if args.list else [])
    if len(modes) != 1:
        raise ConfigError("give exactly one of --execute FILE, --verify FILE, "
                           "--cancel FILE, --list")
    if args.topic and not args.list:
        raise ConfigError("--topic goes with --list")
    if args.list:
        return _list(args)
    path = args.execute or args.verify or args.cancel
    plan = read_plan(path)
    if args.verify:
        return _verify(args, plan)
    return _alter(args, plan, cancel=bool(args.cancel))


def add_parser(tsub, common) -> None:
    p = tsub.add_parser("reassign", help="move partitions' replicas to other brokers "
                        "(a kafka-reassign-partitions.sh plan file)")
    p.add_argument("--execute", metavar="FILE", help="start the moves in FILE")
    p.add_argument("--verify", metavar="FILE", help="whether the moves in FILE are done "
                   "(exit 1 while any is under way)")
    p.add_argument("--cancel", metavar="FILE", help="cancel the moves of FILE's partitions")
    p.add_argument("--list", action="store_true", help="the reassignments under way")
    p.add_argument("--topic", help="with --list: only this topic (default: every topic)")
    common(p)
    p.set_defaults(func=run)
