"""`pybroker groups list|describe`: both kinds of consumer group in one view.

The paper's consumers (pybroker.client.Consumer) live in ZooKeeper: members under
/consumers/<g>/ids, owners under /consumers/<g>/owners. Kafka-protocol groups keep
their members in the coordinating node's memory (DescribeGroups). Both commit to the
same offset registry, /consumers/<g>/offsets, so the offsets, log ends and lag below
come from one place.
"""
from __future__ import annotations

import json
import struct
import sys

from pybroker.cli import add_bootstrap, bootstrap_or_empty, open_zk, reach, zk_children
from pybroker.client.connection import Cluster, KafkaError
from pybroker.coord import offsets as registry
from pybroker.protocol import ApiKey, ErrorCode


def list_groups(args) -> int:
    zk = open_zk(args)
    try:
        names = set(registry.list_groups(zk))
    finally:
        zk.stop()
        zk.close()
    if args.bootstrap:
        reach(args.bootstrap)
        cluster = Cluster(args.bootstrap, client_id="pybroker-cli", allow_auto_create=False)
        cluster.refresh([])
        for node in cluster.nodes:
            conn = cluster.connection(node)
            try:
                answer = conn.request(ApiKey.LIST_GROUPS, 2, {})
                names.update(g["group_id"] for g in answer["groups"])
            finally:
                conn.close()
        cluster.close()
    for name in sorted(names):
        print(name)
    return 0


def _kafka_members(args, group: str) -> list[tuple[str, str, list]]:
    """(member id, client id/host, [(topic, partition)]) of a Kafka-protocol group."""
    if not args.bootstrap:
        return []
    reach(args.bootstrap)
    cluster = Cluster(args.bootstrap, client_id="pybroker-cli", allow_auto_create=False)
    try:
        cluster.refresh([])
        any_node = cluster.connection(min(cluster.nodes))
        found = any_node.request(ApiKey.FIND_COORDINATOR, 1, {"key": group, "key_type": 0})
        any_node.close()
        if found["error_code"]:
            return []
        coordinator = cluster.connection(found["node_id"])
        described = coordinator.request(ApiKey.DESCRIBE_GROUPS, 0, {"groups": [group]})
        coordinator.close()
    finally:
        cluster.close()
    members = []
    for g in described["groups"]:
        for m in g["members"]:
            members.append((m["member_id"], f"{m['client_id']}@{m['client_host']}",
                            _assignment(m["member_assignment"])))
    return members


def _assignment(data) -> list[tuple[str, int]]:
    """Partitions in a "consumer" protocol assignment (version i16, [topic, [i32]])."""
    data = bytes(data or b"")
    out, pos = [], 2
    try:
        (ntopics,) = struct.unpack_from(">i", data, pos)
        pos += 4
        for _ in range(ntopics):
            (n,) = struct.unpack_from(">h", data, pos)
            topic = data[pos + 2:pos + 2 + n].decode()
            pos += 2 + n
            (nparts,) = struct.unpack_from(">i", data, pos)
            pos += 4
            parts = struct.unpack_from(f">{nparts}i", data, pos)
            pos += 4 * nparts
            out += [(topic, p) for p in parts]
    except (struct.error, UnicodeDecodeError):
        return []
    return out


def _log_ends(args, partitions) -> dict:
    if not args.bootstrap or not partitions:
        return {}
    cluster = Cluster(args.bootstrap, client_id="pybroker-cli", allow_auto_create=False)
    try:
        found = cluster.list_offsets({tp: -1 for tp in partitions})
    except KafkaError:  # no broker to ask: the table shows no log ends or lag
        return {}
    finally:
        cluster.close()
    return {tp: offset for tp, (code, offset) in found.items() if code == ErrorCode.NONE}


def describe(args) -> int:
    group = args.group
    zk = open_zk(args)
    try:
        if not registry.group_exists(zk, group) and not args.bootstrap:
            print(f"pybroker groups: no group {group!r} in the registry", file=sys.stderr)
            return 1
        paper_members = {c: json.loads(zk.get(f"/consumers/{group}/ids/{c}")[0] or b"{}")
                         for c in zk_children(zk, f"/consumers/{group}/ids")}
        owners = {}
        for topic in zk_children(zk, f"/consumers/{group}/owners"):
            for p in zk_children(zk, f"/consumers/{group}/owners/{topic}"):
                owner = zk.get(f"/consumers/{group}/owners/{topic}/{p}")[0]
                owners[(topic, int(p))] = owner.decode()
        committed = registry.fetch_offsets(zk, group)
    finally:
        zk.stop()
        zk.close()
    kafka_members = _kafka_members(args, group)
    for member, who, parts in kafka_members:
        for tp in parts:
            owners.setdefault(tp, f"{member} ({who})")
    if not (paper_members or kafka_members or committed):
        print(f"pybroker groups: no group {group!r}", file=sys.stderr)
        return 1
    print(f"group {group}")
    print("members:")
    for cid, info in sorted(paper_members.items()):
        print(f"  {cid}  (pybroker consumer, subscription {info.get('subscription', {})})")
    for member, who, parts in kafka_members:
        print(f"  {member}  (Kafka group member {who}, {len(parts)} partition(s))")
    if not (paper_members or kafka_members):
        print("  (none)")
    partitions = sorted(set(committed) | set(owners))
    ends = _log_ends(args, partitions)
    print(f"{'partition':<30} {'owner':<40} {'committed':>10} {'log end':>10} {'lag':>8}")
    for tp in partitions:
        offset = committed.get(tp, (-1,))[0]
        end = ends.get(tp, -1)
        lag = end - offset if offset >= 0 and end >= 0 else (end if end >= 0 else -1)
        print(f"{tp[0] + '-' + str(tp[1]):<30} {owners.get(tp, '-'):<40} "
              f"{offset if offset >= 0 else '-':>10} {end if end >= 0 else '-':>10} "
              f"{lag if lag >= 0 else '-':>8}")
    return 0


def add_parser(sub) -> None:
    groups = sub.add_parser("groups", help="list and describe consumer groups (both kinds)")
    gsub = groups.add_subparsers(dest="groups_command", required=True, metavar="COMMAND")

    def common(p):
        p.add_argument("--zookeeper", help="connect string (default: from --data-dir)")
        p.add_argument("--data-dir", default="./pybroker-data", help="a local broker's data "
                       "dir, to find its ZooKeeper")
        add_bootstrap(p, "any node, for Kafka-group members and log ends ('' to skip)",
                      type=bootstrap_or_empty)

    p = gsub.add_parser("list", help="every group in the registry and on the coordinators")
    common(p)
    p.set_defaults(func=list_groups)
    p = gsub.add_parser("describe", help="members, owners, committed offsets, log ends, lag")
    p.add_argument("group")
    common(p)
    p.set_defaults(func=describe)
