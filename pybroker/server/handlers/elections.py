"""ElectLeaders (key 43): move leadership to each partition's preferred replica.

election_type (v1+; v0 means PREFERRED):
  0 PREFERRED  per partition, in this order (Kafka's ReplicationControlManager.
               electLeader):
               - not in this node's view: UNKNOWN_TOPIC_OR_PARTITION;
               - its preferred replica (replicas[0]) leads already: ELECTION_NOT_NEEDED;
               - the preferred replica is not live (ClusterState.is_live), not in the
                 ISR, or the partition has no state znode yet (the controller writes
                 one shortly): PREFERRED_LEADER_NOT_AVAILABLE;
               - else the state znode is written by compare-and-set over the version
                 this view read (Registry.write_partition_state, no controller fence:
                 any node may write, as a leader changing its ISR does): leader
                 replicas[0], leader epoch + 1, the same ISR. A BadVersionError (the
                 state changed since this view: an ISR change, the controller's
                 election, another ElectLeaders) answers LEADER_NOT_AVAILABLE, which
                 is retriable: Kafka's meaning, "in the middle of a leadership
                 election", and asking again decides on the new state.
  1 UNCLEAN    INVALID_REQUEST per known partition: unclean election is off
               (unclean.leader.election.enable=false), so there is nothing to do.
  other        INVALID_REQUEST, also as the top-level error (Kafka's "Unknown
               election type").
A null topic_partitions asks for every partition in the view; as in Kafka, the
answer then leaves out the partitions whose election was not needed. A partition
named twice is decided and written once, and answered at each place it was named.
The top-level error_code is NONE (v1+). Once the writes are done the answer waits,
bounded by timeout_ms and admin.MAX_CLUSTER_WAIT_S, until this node's view shows
each new leader at its new epoch.
"""
from __future__ import annotations

import logging

from kazoo.exceptions import BadVersionError, NoNodeError

from pybroker.protocol import ErrorCode
from pybroker.server.handlers import admin

log = logging.getLogger("pybroker.server")

PREFERRED, UNCLEAN = 0, 1
UNCLEAN_REFUSED = ("unclean leader election is not supported "
                   "(unclean.leader.election.enable=false)")


def decide(state, topic: str, p: int, election_type: int):
    """(error code, message, new PartitionInfo or None) of one partition."""
    info = state.partition(topic, p)
    if info is None:
        return (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                f"partition {topic}-{p} does not exist", None)
    if election_type == UNCLEAN:
        return ErrorCode.INVALID_REQUEST, UNCLEAN_REFUSED, None
    if election_type != PREFERRED:
        return ErrorCode.INVALID_REQUEST, f"unknown election type {election_type}", None
    first = info.replicas[0]
    if info.leader == first:
        return ErrorCode.ELECTION_NOT_NEEDED, f"preferred replica {first} leads already", None
    if info.version < 0:
        return (ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE, f"partition {topic}-{p} has no "
                "state in ZooKeeper yet (the controller is writing it)", None)
    if not state.is_live(first, topic, p):
        return (ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE,
                f"preferred replica {first} is not live", None)
    if first not in info.isr:
        return (ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE, f"preferred replica {first} is "
                f"not in the ISR {list(info.isr)}", None)
    return ErrorCode.NONE, None, info._replace(leader=first,
                                               leader_epoch=info.leader_epoch + 1)


def _write_all(registry, writes: list, controller_epoch: int) -> list:
    """On the ZooKeeper thread: per (topic, p, info) the new znode version or the
    exception that stopped that write."""
    outcomes = []
    for topic, p, info in writes:
        try:
            outcomes.append(registry.write_partition_state(topic, p, info, controller_epoch))
        except Exception as exc:  # noqa: BLE001 - sorted out on the loop, per partition
            outcomes.append(exc)
    return outcomes


def _outcome(worker, topic: str, p: int, result) -> tuple[ErrorCode, str | None]:
    if not isinstance(result, Exception):
        return ErrorCode.NONE, None
    if isinstance(result, BadVersionError):
        return (ErrorCode.LEADER_NOT_AVAILABLE, f"the state of {topic}-{p} changed during "
                "the election (an ISR change or another election); retry")
    if isinstance(result, NoNodeError):
        return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"partition {topic}-{p} was deleted"
    return admin.zk_error(worker, f"election of {topic}-{p}", result)


def _asked(state, request) -> tuple[list, bool]:
    """[(topic, [partitions])] the request names (all of the view's when null), and
    whether it was null."""
    if request["topic_partitions"] is None:
        by_topic: dict = {}
        for topic, p in sorted(state.partitions):
            by_topic.setdefault(topic, []).append(p)
        return sorted(by_topic.items()), True
    return [(t["topic"], list(t["partitions"])) for t in request["topic_partitions"]], False


def handle(ctx, request):
    worker = ctx.worker
    state = worker.cluster
    election_type = request.get("election_type", PREFERRED)
    asked, everything = _asked(state, request)
    decided: dict = {}   # (topic, p) -> [error code, message, new info or None]
    for topic, parts in asked:
        for p in parts:
            if (topic, p) not in decided:
                decided[(topic, p)] = list(decide(state, topic, p, election_type))
    top = (ErrorCode.NONE if election_type in (PREFERRED, UNCLEAN)
           else ErrorCode.INVALID_REQUEST)

    def response():
        results = []
        for topic, parts in asked:
            rows = [{"partition_id": p, "error_code": decided[(topic, p)][0],
                     "error_message": decided[(topic, p)][1]} for p in parts]
            if everything:
                rows = [r for r in rows if r["error_code"] != ErrorCode.ELECTION_NOT_NEEDED]
            results.append({"topic": topic, "partition_result": rows})
        return {"throttle_time_ms": 0, "error_code": top, "replica_election_results": results}

    writes = [(t, p, d[2]) for (t, p), d in decided.items() if d[2] is not None]
    if not writes:
        return response()
    wait_s = min(max(0, request["timeout_ms"]) / 1000, admin.MAX_CLUSTER_WAIT_S)

    def answer(outcome):
        code, message, written = outcome
        elected = []
        for (topic, p, info), result in zip(writes, written or [None] * len(writes)):
            row = decided[(topic, p)]
            row[0], row[1] = (code, message) if code else _outcome(worker, topic, p, result)
            if row[0] == ErrorCode.NONE:
                elected.append((topic, p, info))
                log.info("node=%d tp=%s-%d preferred leader elected: node %d, epoch %d",
                         worker.node_id, topic, p, info.leader, info.leader_epoch)

        def shown(st) -> bool:
            """Every elected leader in the view at its epoch (or a later epoch: it
            moved on; or gone: deleted)."""
            for topic, p, info in elected:
                now = st.partition(topic, p)
                if now is not None and now.leader_epoch <= info.leader_epoch and (
                        now.leader_epoch < info.leader_epoch or now.leader != info.leader):
                    return False
            return True
        if not elected:
            return response()
        return admin.chain(worker.when_cluster(shown, wait_s, None), lambda _: response())
    what = f"preferred election of {len(writes)} partition(s)"
    return admin.chain(admin.zk_call(worker, what, _write_all, worker.registry, writes,
                                     state.controller_epoch), answer)
