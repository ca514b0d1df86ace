"""`pybroker groups list|describe`: both kinds of consumer group in one view.

Kafka-protocol groups are asked over the Kafka protocol alone, from a bootstrap
address: ListGroups to every node the Metadata names (each lists the groups it
coordinates), FindCoordinator for one group, then DescribeGroups and OffsetFetch to its
coordinator, and ListOffsets (latest) to each partition's leader for the log ends; lag is
log end minus committed offset. The versions are the highest the node advertises
(ApiVersions), up to the ones this tool reads.

The paper's consumers (pybroker.client.Consumer) coordinate through ZooKeeper: members
under /consumers/<g>/ids, owners under /consumers/<g>/owners. ZooKeeper is read only
for them, when --zookeeper is given or --data-dir holds a local broker's ZooKeeper
address. Both kinds commit to the same offset registry, so a paper group also shows on
the brokers (as an Empty group with offsets); with ZooKeeper it is marked as such.
"""
from __future__ import annotations

import json
import os
import struct
import sys
import time

from pybroker.cli import (CommandError, UsageError, add_bootstrap, bootstrap_or_empty,
                          open_zk, reach, zk_children)
from pybroker.client.connection import Cluster, KafkaError
from pybroker.config import ConfigError
from pybroker.coord import offsets as registry
from pybroker.protocol import ApiKey, ErrorCode

# the highest version of each API this tool reads (FindCoordinator v4+ and OffsetFetch
# v8+ batch several groups: one group at a time needs neither)
HIGHEST = {ApiKey.LIST_GROUPS: 5, ApiKey.FIND_COORDINATOR: 3, ApiKey.DESCRIBE_GROUPS: 6,
           ApiKey.OFFSET_FETCH: 7}
RETRY_CODES = (ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, ErrorCode.COORDINATOR_NOT_AVAILABLE,
               ErrorCode.NOT_COORDINATOR)
ATTEMPTS, RETRY_PAUSE = 20, 0.25   # a coordinator still loading, or just moved
KAFKA, ZOOKEEPER = "kafka", "zookeeper"


def _warn(args, text: str) -> None:
    print(f"pybroker groups {args.groups_command}: {text}", file=sys.stderr)


# --- the Kafka protocol ----------------------------------------------------------------

def _cluster(bootstrap: str) -> Cluster:
    reach(bootstrap)
    cluster = Cluster(bootstrap, client_id="pybroker-cli", allow_auto_create=False)
    cluster.refresh([])
    return cluster


def _version(conn, api_key: int) -> int:
    """The highest version of api_key both the node (ApiVersions, asked once per
    connection) and this tool know; KafkaError if the node has none."""
    advertised = getattr(conn, "_cli_versions", None)
    if advertised is None:
        answer = conn.request(ApiKey.API_VERSIONS, 0, {})
        if answer["error_code"]:
            raise KafkaError(answer["error_code"], f"ApiVersions from node {conn.node_id}")
        advertised = {a["api_key"]: (a["min_version"], a["max_version"])
                      for a in answer["api_keys"]}
        conn._cli_versions = advertised
    low, high = advertised.get(api_key, (0, -1))
    version = min(high, HIGHEST[api_key])
    if version < low or version < 0:
        raise KafkaError(ErrorCode.UNSUPPORTED_VERSION, f"node {conn.node_id} does not "
                         f"speak a version of api {api_key} this tool reads")
    return version


def _request(conn, api_key: int, body: dict) -> dict:
    return conn.request(api_key, _version(conn, api_key), body)


def _kafka_groups(args) -> dict[str, tuple[str, str]]:
    """{group: (protocol type, state)} from ListGroups on every node (a node that does
    not answer is named on stderr; CommandError if none does)."""
    cluster = _cluster(args.bootstrap)
    groups: dict[str, tuple[str, str]] = {}
    failed = []
    try:
        for node in sorted(cluster.nodes):
            conn = cluster.connection(node)
            try:
                answer = _request(conn, ApiKey.LIST_GROUPS,
                                  {"states_filter": [], "types_filter": []})
                if answer["error_code"]:
                    raise KafkaError(answer["error_code"])
            except KafkaError as exc:
                failed.append(f"node {node}: {exc}")
                continue
            finally:
                conn.close()
            for g in answer["groups"]:
                kind, state = g["protocol_type"] or "", g.get("group_state") or "-"
                if g["group_id"] not in groups or kind:   # its coordinator's view wins
                    groups[g["group_id"]] = (kind, state)
    finally:
        cluster.close()
    if failed and len(failed) == len(cluster.nodes):
        raise CommandError("no node answered ListGroups: " + "; ".join(failed))
    for problem in failed:
        _warn(args, f"ListGroups not answered, its groups are missing ({problem})")
    return groups


def _coordinator(cluster: Cluster, group: str):
    """A connection to group's coordinator (FindCoordinator to any node)."""
    errors = []
    for node in sorted(cluster.nodes):
        conn = cluster.connection(node)
        try:
            found = _request(conn, ApiKey.FIND_COORDINATOR, {"key": group, "key_type": 0})
        except KafkaError as exc:
            errors.append(f"node {node}: {exc}")
            continue
        finally:
            conn.close()
        if found["error_code"]:
            raise KafkaError(found["error_code"], f"FindCoordinator for {group!r}: "
                             f"{found.get('error_message') or ''}".rstrip(": "))
        cluster.nodes.setdefault(found["node_id"], (found["host"], found["port"]))
        return cluster.connection(found["node_id"])
    raise CommandError("no node answered FindCoordinator: " + "; ".join(errors))


def _kafka_describe(args, group: str) -> dict:
    """{"exists", "state", "protocol", "members": [(id, who, [(topic, p)])],
    "committed": {(topic, p): offset}} of group, from its coordinator."""
    cluster = _cluster(args.bootstrap)
    try:
        for attempt in range(ATTEMPTS):
            conn = _coordinator(cluster, group)
            try:
                [described] = _request(conn, ApiKey.DESCRIBE_GROUPS, {
                    "groups": [group], "include_authorized_operations": False})["groups"]
                code = described["error_code"]
                if code in RETRY_CODES and attempt + 1 < ATTEMPTS:
                    time.sleep(RETRY_PAUSE)
                    continue
                if code and code != ErrorCode.GROUP_ID_NOT_FOUND:
                    raise KafkaError(code, f"DescribeGroups {group!r}")
                fetched = _request(conn, ApiKey.OFFSET_FETCH, {
                    "group_id": group, "topics": None, "require_stable": False})
                code = fetched.get("error_code", 0)
                if code in RETRY_CODES and attempt + 1 < ATTEMPTS:
                    time.sleep(RETRY_PAUSE)
                    continue
                if code:
                    raise KafkaError(code, f"OffsetFetch {group!r}")
                break
            finally:
                conn.close()
    finally:
        cluster.close()
    committed = {}
    for t in fetched["topics"]:
        for p in t["partitions"]:
            if p["error_code"]:
                raise KafkaError(p["error_code"], f"OffsetFetch {group!r} "
                                 f"{t['name']}-{p['partition_index']}")
            if p["committed_offset"] >= 0:
                committed[(t["name"], p["partition_index"])] = p["committed_offset"]
    members = [(m["member_id"], f"{m['client_id']}@{m['client_host']}",
                _assignment(m["member_assignment"])) for m in described["members"]]
    state = described["group_state"] or "-"
    exists = (described["error_code"] == ErrorCode.NONE and state != "Dead") or bool(committed)
    return {"exists": exists, "state": state, "protocol": described["protocol_type"] or "",
            "members": members, "committed": committed}


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
    """{(topic, p): log end offset} from ListOffsets (latest) to each leader."""
    if not args.bootstrap or not partitions:
        return {}
    cluster = Cluster(args.bootstrap, client_id="pybroker-cli", allow_auto_create=False)
    try:
        found = cluster.list_offsets({tp: -1 for tp in partitions})
    except KafkaError as exc:  # no leader to ask: the table shows no log ends or lag
        _warn(args, f"no log ends ({exc})")
        return {}
    finally:
        cluster.close()
    return {tp: offset for tp, (code, offset) in found.items() if code == ErrorCode.NONE}


# --- ZooKeeper (the paper consumer's groups) -------------------------------------------

def _open_zk(args):
    """A kazoo client when --zookeeper is given or --data-dir names a broker's
    ZooKeeper; else None. A ZooKeeper found through --data-dir that does not answer is
    a warning while the brokers can still be asked."""
    if args.zookeeper:
        return open_zk(args)
    from pybroker.server.supervisor import ZK_CONNECT_FILE
    if not os.path.exists(os.path.join(args.data_dir, ZK_CONNECT_FILE)):
        if not args.bootstrap:
            raise UsageError("nothing to ask: --bootstrap '' and no ZooKeeper (give "
                             "--zookeeper, or --data-dir of a running broker)")
        return None
    try:
        return open_zk(args)
    except ConfigError as exc:
        if not args.bootstrap:
            raise
        _warn(args, f"{exc}; the paper consumer's groups are not shown")
        return None


def _close(zk) -> None:
    if zk is not None:
        zk.stop()
        zk.close()


def _is_paper(zk, group: str) -> bool:
    """A paper consumer has registered in the group (its ids node stays)."""
    return zk.exists(f"/consumers/{group}/ids") is not None


def _kind(kafka_members: bool, paper: bool) -> str:
    if kafka_members and paper:
        return f"{KAFKA}+{ZOOKEEPER}"
    return ZOOKEEPER if paper else KAFKA


# --- the commands ----------------------------------------------------------------------

def list_groups(args) -> int:
    zk = _open_zk(args)
    rows: dict[str, tuple[str, str]] = {}
    try:
        kafka = _kafka_groups(args) if args.bootstrap else {}
        paper: dict[str, int] = {}     # group -> live paper consumers
        stored = set()
        if zk is not None:
            stored = set(registry.list_groups(zk))
            paper = {g: len(zk_children(zk, f"/consumers/{g}/ids"))
                     for g in stored if _is_paper(zk, g)}
    finally:
        _close(zk)
    for name in sorted(set(kafka) | stored):
        protocol, state = kafka.get(name, ("", "Empty"))
        has_members = bool(protocol) or state not in ("Empty", "Dead", "-")
        if name in paper and not has_members:
            state = "Stable" if paper[name] else "Empty"
        rows[name] = (_kind(has_members, name in paper), state)
    width = max([len(n) for n in rows] + [len("GROUP")])
    print(f"{'GROUP':<{width}}  {'KIND':<15}  STATE")
    for name, (kind, state) in rows.items():
        print(f"{name:<{width}}  {kind:<15}  {state}")
    return 0


def describe(args) -> int:
    group = args.group
    zk = _open_zk(args)
    paper_members, owners, committed, in_registry, paper = {}, {}, {}, False, False
    try:
        if zk is not None:
            in_registry = registry.group_exists(zk, group)
            paper = in_registry and _is_paper(zk, group)
            paper_members = {c: json.loads(zk.get(f"/consumers/{group}/ids/{c}")[0] or b"{}")
                             for c in zk_children(zk, f"/consumers/{group}/ids")}
            for topic in zk_children(zk, f"/consumers/{group}/owners"):
                for p in zk_children(zk, f"/consumers/{group}/owners/{topic}"):
                    owner = zk.get(f"/consumers/{group}/owners/{topic}/{p}")[0]
                    owners[(topic, int(p))] = owner.decode()
            committed = {tp: v[0] for tp, v in registry.fetch_offsets(zk, group).items()
                         if v[0] >= 0}
    finally:
        _close(zk)
    kafka = (_kafka_describe(args, group) if args.bootstrap else
             {"exists": False, "state": "-", "protocol": "", "members": [], "committed": {}})
    committed.update(kafka["committed"])   # one registry: the coordinator's read is newer
    kafka_members = kafka["members"]
    for member, who, parts in kafka_members:
        for tp in parts:
            owners.setdefault(tp, f"{member} ({who})")
    if not (kafka["exists"] or in_registry or paper_members or committed):
        where = " or in ZooKeeper" if zk is not None else ""
        raise CommandError(f"no group {group!r} on the brokers{where}")
    has_members = bool(kafka_members) or bool(kafka["protocol"])
    state = kafka["state"]
    if paper and not kafka_members:
        state = "Stable" if paper_members else "Empty"
    print(f"group {group}")
    print(f"kind: {_kind(has_members, paper)}")
    print(f"state: {state}")
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
        offset = committed.get(tp, -1)
        end = ends.get(tp, -1)
        lag = end - offset if offset >= 0 and end >= 0 else (end if end >= 0 else -1)
        print(f"{tp[0] + '-' + str(tp[1]):<30} {owners.get(tp, '-'):<40} "
              f"{offset if offset >= 0 else '-':>10} {end if end >= 0 else '-':>10} "
              f"{lag if lag >= 0 else '-':>8}")
    return 0


def add_parser(sub) -> None:
    groups = sub.add_parser("groups", help="list and describe consumer groups (both kinds)",
                            description="Kafka-protocol groups from a bootstrap address "
                            "alone; the paper consumer's ZooKeeper groups too when "
                            "--zookeeper (or --data-dir of a running broker) is given.")
    gsub = groups.add_subparsers(dest="groups_command", required=True, metavar="COMMAND")

    def common(p):
        p.add_argument("--zookeeper", help="connect string, for the paper consumer's "
                       "groups (default: from --data-dir, if it has a broker's)")
        p.add_argument("--data-dir", default="./pybroker-data", help="a local broker's data "
                       "dir, to find its ZooKeeper (none there: brokers only)")
        add_bootstrap(p, "any node, for Kafka-protocol groups and log ends ('' to skip)",
                      type=bootstrap_or_empty)

    p = gsub.add_parser("list", help="every group on the coordinators (and in ZooKeeper): "
                        "kind and state")
    common(p)
    p.set_defaults(func=list_groups)
    p = gsub.add_parser("describe", help="state, members, owners, committed offsets, log "
                        "ends, lag")
    p.add_argument("group")
    common(p)
    p.set_defaults(func=describe)
