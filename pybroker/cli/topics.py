"""`pybroker topics create|list|describe|delete|alter|elect-leaders|reassign`: topic
administration through the Kafka protocol (any node of the cluster answers)."""
from __future__ import annotations


import argparse

from pybroker.cli import (CommandError, UsageError, add_bootstrap, key_value, non_negative_int,
                          positive_float, positive_int, reach)
from pybroker.client.connection import Cluster, KafkaError
from pybroker.coord import topic_ids
from pybroker.protocol import ApiKey, ErrorCode

TOPIC_RESOURCE = 2
SET, DELETE = 0, 1


def _admin(args) -> tuple[Cluster, object]:
    """The cluster and a connection to the controller the Metadata names, or, when it
    does not answer (ApiVersions within 10 s), to the first other node that does."""
    probe = min(args.timeout, 10)
    reach(args.bootstrap, probe)
    cluster = Cluster(args.bootstrap, client_id="pybroker-cli", timeout=args.timeout,
                      allow_auto_create=False)
    cluster.refresh([])
    controller = _controller_id(cluster, probe)
    errors = []
    for node in sorted(cluster.nodes, key=lambda n: (n != controller, n)):
        conn = cluster.connection(node)
        try:
            conn.request(ApiKey.API_VERSIONS, 0, {}, timeout=probe)
            return cluster, conn
        except KafkaError as exc:
            conn.close()
            errors.append(f"node {node}: {exc}")
    raise CommandError("no node answered: " + "; ".join(errors))


def _controller_id(cluster: Cluster, timeout: float) -> int:
    """controller_id from the first node that answers Metadata (-1: none did)."""
    for node in sorted(cluster.nodes):
        conn = cluster.connection(node)
        try:
            return conn.request(ApiKey.METADATA, 4, {"topics": [],
                                "allow_auto_topic_creation": False},
                                timeout=timeout)["controller_id"]
        except KafkaError:
            continue
        finally:
            conn.close()
    return -1


def _check(code: int, message, what: str) -> None:
    if code:  # KafkaError names the code; main() reports it like a CommandError (exit 1)
        raise KafkaError(code, f"{what}: {message}" if message else what)


def _parse_configs(pairs) -> dict:
    configs = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:  # argparse's key_value already refused it
            raise UsageError(f"--config {pair!r}: expected key=value")
        configs[key.strip()] = value.strip()
    return configs


def create(args) -> int:
    cluster, conn = _admin(args)
    body = {"topics": [{"name": args.topic, "num_partitions": args.partitions,
                        "replication_factor": args.replication_factor, "assignments": [],
                        "configs": [{"name": k, "value": v}
                                    for k, v in _parse_configs(args.config).items()]}],
            "timeout_ms": int(args.timeout * 1000), "validate_only": False}
    result = conn.request(ApiKey.CREATE_TOPICS, 4, body)["topics"][0]
    _check(result["error_code"], result["error_message"], f"create {args.topic}")
    factor = ("default.replication.factor" if args.replication_factor == -1
              else args.replication_factor)
    print(f"created {args.topic} with {args.partitions} partition(s), replication factor "
          f"{factor}")
    return 0


def topic_metadata(conn, topic: str, what: str) -> dict:
    """Metadata v12 of one topic (its `topics` entry, with its topic ID); KafkaError
    naming `what` when the topic is unknown or has no answer."""
    meta = conn.request(ApiKey.METADATA, 12, {
        "topics": [{"name": topic}], "allow_auto_topic_creation": False,
        "include_topic_authorized_operations": False})["topics"][0]
    _check(meta["error_code"], None, what)
    return meta


def _nodes(nodes) -> str:
    return ",".join(str(n) for n in nodes) or "-"


def list_topics(args) -> int:
    cluster, conn = _admin(args)
    meta = conn.request(ApiKey.METADATA, 8, {"topics": None, "allow_auto_topic_creation": False,
                                             "include_cluster_authorized_operations": False,
                                             "include_topic_authorized_operations": False})
    for topic in sorted(meta["topics"], key=lambda t: t["name"]):
        print(f"{topic['name']}\t{len(topic['partitions'])}")
    return 0


def describe(args) -> int:
    cluster, conn = _admin(args)
    topic = topic_metadata(conn, args.topic, f"describe {args.topic}")
    offsets = _offsets(cluster, args.topic, topic["partitions"])
    print(f"topic {args.topic}: {len(topic['partitions'])} partition(s), "
          f"topic id {topic_ids.to_text(topic['topic_id'])}")
    print(f"{'partition':>9} {'leader':>7} {'epoch':>6} {'log start':>12} {'log end':>12}  "
          "replicas  isr  offline")
    for p in sorted(topic["partitions"], key=lambda p: p["partition_index"]):
        start, end = offsets.get(p["partition_index"], (-1, -1))
        print(f"{p['partition_index']:>9} {p['leader_id']:>7} {p['leader_epoch']:>6} "
              f"{start:>12} {end:>12}  {_nodes(p['replica_nodes'])}  {_nodes(p['isr_nodes'])}"
              f"  {_nodes(p['offline_replicas'])}")
    configs = conn.request(ApiKey.DESCRIBE_CONFIGS, 1, {
        "resources": [{"resource_type": TOPIC_RESOURCE, "resource_name": args.topic,
                       "configuration_keys": None}], "include_synonyms": False})["results"][0]
    _check(configs["error_code"], configs["error_message"], f"configs of {args.topic}")
    print("configs:")
    for entry in configs["configs"]:
        origin = "default" if entry["config_source"] == 5 else "topic override"
        print(f"  {entry['name']}={entry['value']}  ({origin})")
    return 0


def _offsets(cluster: Cluster, topic: str, partitions: list) -> dict:
    """partition -> (log start, log end), asking each partition's leader."""
    indexes = [p["partition_index"] for p in partitions if p["leader_id"] >= 0]
    starts = cluster.list_offsets({(topic, i): -2 for i in indexes})
    ends = cluster.list_offsets({(topic, i): -1 for i in indexes})
    return {i: (starts[(topic, i)][1], ends[(topic, i)][1]) for i in indexes}


def delete(args) -> int:
    cluster, conn = _admin(args)
    result = conn.request(ApiKey.DELETE_TOPICS, 3, {"topic_names": [args.topic],
                                                    "timeout_ms": int(args.timeout * 1000)})
    _check(result["responses"][0]["error_code"], None, f"delete {args.topic}")
    print(f"deleted {args.topic}")
    return 0


def alter(args) -> int:
    changes = [{"name": k, "config_operation": SET, "value": v}
               for k, v in _parse_configs(args.config).items()]
    changes += [{"name": k, "config_operation": DELETE, "value": None}
                for k in args.delete_config or []]
    if not changes and args.partitions is None:
        raise UsageError("nothing to alter: give --partitions N, --config key=value or "
                         "--delete-config key")
    cluster, conn = _admin(args)
    if args.partitions is not None:
        _add_partitions(conn, args)
    if not changes:
        return 0
    result = conn.request(ApiKey.INCREMENTAL_ALTER_CONFIGS, 0, {
        "resources": [{"resource_type": TOPIC_RESOURCE, "resource_name": args.topic,
                       "configs": changes}], "validate_only": False})["responses"][0]
    _check(result["error_code"], result["error_message"], f"alter {args.topic}")
    print(f"altered {args.topic}: " + ", ".join(
        f"{c['name']}={c['value']}" if c["config_operation"] == SET else f"{c['name']} (default)"
        for c in changes))
    return 0


def _add_partitions(conn, args) -> None:
    """CreatePartitions: raise the topic's partition count to args.partitions (the
    brokers place the new partitions at the topic's replication factor)."""
    result = conn.request(ApiKey.CREATE_PARTITIONS, 3, {
        "topics": [{"name": args.topic, "count": args.partitions, "assignments": None}],
        "timeout_ms": int(args.timeout * 1000), "validate_only": False})["results"][0]
    _check(result["error_code"], result["error_message"], f"alter {args.topic}")
    print(f"altered {args.topic}: {args.partitions} partition(s)")


PREFERRED = 0


def elect_leaders(args) -> int:
    """ElectLeaders PREFERRED: each partition back to its preferred (first) replica.
    Without --topic, every partition of the cluster (the answer then lists only the
    partitions that changed or could not). Exit 1 if any partition failed."""
    if args.partition and not args.topic:
        raise CommandError("--partition needs --topic")
    cluster, conn = _admin(args)
    asked = None
    if args.topic:
        partitions = args.partition
        if not partitions:
            meta = topic_metadata(conn, args.topic, f"elect-leaders {args.topic}")
            partitions = sorted(p["partition_index"] for p in meta["partitions"])
        asked = [{"topic": args.topic, "partitions": list(partitions)}]
    body = conn.request(ApiKey.ELECT_LEADERS, 2, {
        "election_type": PREFERRED, "topic_partitions": asked,
        "timeout_ms": int(args.timeout * 1000)})
    _check(body["error_code"], None, "elect-leaders")
    failed = shown = 0
    for topic in sorted(body["replica_election_results"], key=lambda t: t["topic"]):
        for r in sorted(topic["partition_result"], key=lambda r: r["partition_id"]):
            shown += 1
            code = r["error_code"]
            if code == ErrorCode.NONE:
                what = "preferred leader elected"
            elif code == ErrorCode.ELECTION_NOT_NEEDED:
                what = "not needed (the preferred replica leads)"
            else:
                failed += 1
                what = _error_name(code) + (f": {r['error_message']}"
                                            if r["error_message"] else "")
            print(f"{topic['topic']}-{r['partition_id']}: {what}")
    if not shown:
        print("no partition needed an election")
    return 1 if failed else 0


def _error_name(code: int) -> str:
    try:
        return f"{ErrorCode(code).name} ({code})"
    except ValueError:
        return f"ERROR_{code}"


def replication_factor(text: str) -> int:
    """--replication-factor: >= 1, or -1 for the broker's default."""
    if text.strip() == "-1":
        return -1
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (nor -1, the broker's default)") from None


def add_parser(sub) -> None:
    topics = sub.add_parser("topics", help="create, list, describe, delete, alter topics; "
                            "elect preferred leaders; reassign partitions")
    tsub = topics.add_subparsers(dest="topics_command", required=True, metavar="COMMAND")

    def common(p):
        add_bootstrap(p)
        p.add_argument("--timeout", type=positive_float, default=30.0,
                       help="seconds per request")

    p = tsub.add_parser("create", help="create a topic")
    p.add_argument("topic")
    p.add_argument("--partitions", type=positive_int, default=1, help="partition count")
    p.add_argument("--replication-factor", type=replication_factor, default=-1,
                   help="replicas per partition, each on another broker (default: the "
                        "broker's default.replication.factor)")
    p.add_argument("--config", action="append", metavar="KEY=VALUE", type=key_value,
                   help="topic config override, e.g. retention.ms=3600000 (repeatable)")
    common(p)
    p.set_defaults(func=create)
    p = tsub.add_parser("list", help="list topics with their partition counts")
    common(p)
    p.set_defaults(func=list_topics)
    p = tsub.add_parser("describe", help="partitions, leaders, offsets and configs of a topic")
    p.add_argument("topic")
    common(p)
    p.set_defaults(func=describe)
    p = tsub.add_parser("delete", help="delete a topic and its data")
    p.add_argument("topic")
    common(p)
    p.set_defaults(func=delete)
    p = tsub.add_parser("alter", help="add partitions, set or reset topic configs")
    p.add_argument("topic")
    p.add_argument("--partitions", type=positive_int, metavar="N",
                   help="raise the partition count to N (partitions are never removed)")
    p.add_argument("--config", action="append", metavar="KEY=VALUE", type=key_value,
                   help="set (repeatable)")
    p.add_argument("--delete-config", action="append", metavar="KEY",
                   help="back to the broker default (repeatable)")
    common(p)
    p.set_defaults(func=alter)
    p = tsub.add_parser("elect-leaders", help="move leadership back to each partition's "
                        "preferred (first) replica")
    p.add_argument("--topic", help="only this topic (default: every partition)")
    p.add_argument("--partition", type=non_negative_int, action="append", metavar="P",
                   help="only this partition of --topic (repeatable) (default: every "
                   "partition of --topic)")
    common(p)
    p.set_defaults(func=elect_leaders)
    from pybroker.cli import reassign  # it uses this module's helpers
    reassign.add_parser(tsub, common)
