"""`pybroker topics alter --partitions N` (CreatePartitions) and `pybroker topics
elect-leaders` (ElectLeaders, preferred) against three real brokers: their output, their
exit codes and the refusals a person must be able to act on."""
import subprocess
import sys

from pybroker import config
from pybroker.testing.cluster import SESSION_S

PYBROKER = [sys.executable, "-m", "pybroker"]
# The controller's own preferred-replica rebalance off, so only the request moves leaders
# back (a pybroker.config without the key has no rebalance at all).
SETTINGS = {"replica.lag.time.max.ms": 3000,
            **({"auto.leader.rebalance.enable": False}
               if "auto.leader.rebalance.enable" in config.BY_KEY else {})}


def run(*args, timeout=90):
    return subprocess.run([*PYBROKER, *map(str, args)], capture_output=True, timeout=timeout)


def test_alter_partitions_and_elect_leaders(cluster_factory):
    cluster = cluster_factory(brokers=3, workers=1, settings=SETTINGS)
    b = ["--bootstrap", cluster.bootstrap]
    assert run("topics", "create", "cli-p", "--partitions", "2", "--replication-factor", "3",
               *b).returncode == 0

    done = run("topics", "alter", "cli-p", "--partitions", "4", *b)
    assert done.returncode == 0, done.stderr
    assert b"altered cli-p: 4 partition(s)" in done.stdout
    cluster.wait_isr("cli-p", range(4), 3, 60)
    assert b"cli-p\t4" in run("topics", "list", *b).stdout
    smaller = run("topics", "alter", "cli-p", "--partitions", "3", *b)
    assert smaller.returncode == 1 and b"INVALID_PARTITIONS" in smaller.stderr, smaller.stderr
    unknown = run("topics", "alter", "cli-absent", "--partitions", "3", *b)
    assert unknown.returncode == 1 and b"UNKNOWN_TOPIC_OR_PARTITION" in unknown.stderr
    nothing = run("topics", "alter", "cli-p", *b)
    assert nothing.returncode == 2 and b"--partitions N" in nothing.stderr

    # every partition led by its preferred replica: nothing to do
    done = run("topics", "elect-leaders", "--topic", "cli-p", *b)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines() == [
        f"cli-p-{p}: not needed (the preferred replica leads)" for p in range(4)]
    done = run("topics", "elect-leaders", *b)
    assert done.returncode == 0 and b"no partition needed an election" in done.stdout

    # the preferred leader of partition 0 goes away (controlled shutdown) and comes back
    before = cluster.wait_partition("cli-p", 0, lambda m: m.leader_id >= 0, SESSION_S + 10,
                                    "a leader")
    victim = cluster.broker_of(before.leader_id)
    cluster.terminate(victim)
    cluster.wait_partition("cli-p", 0, lambda m: m.leader_id not in victim.node_ids + [-1],
                           SESSION_S + 10, "another leader")
    down = run("topics", "elect-leaders", "--topic", "cli-p", "--partition", "0",
               "--bootstrap", cluster.live_bootstrap)
    assert down.returncode == 1, down.stdout
    assert b"cli-p-0: PREFERRED_LEADER_NOT_AVAILABLE (80)" in down.stdout, down.stdout
    cluster.restart(victim)
    cluster.wait_isr("cli-p", range(4), 3, 60)  # every partition: all are elected

    done = run("topics", "elect-leaders", *b)
    assert done.returncode == 0, done.stderr
    assert b"cli-p-0: preferred leader elected" in done.stdout, done.stdout
    cluster.wait_partition("cli-p", 0, lambda m: m.leader_id == before.replica_nodes[0],
                           SESSION_S + 10, "the preferred leader back")
    described = run("topics", "describe", "cli-p", *b).stdout.decode()
    assert "4 partition(s)" in described
    bad = run("topics", "elect-leaders", "--partition", "0", *b)
    assert bad.returncode == 1 and b"--partition needs --topic" in bad.stderr


def test_reassign_execute_verify_list(cluster_factory, tmp_path):
    """`pybroker topics reassign`: a kafka-reassign-partitions.sh plan moves partition 0
    from brokers 1, 2 to brokers 3, 2; --verify says in progress or complete (exit 1 /
    0); --list shows nothing once done; a bad plan is bad usage (exit 2)."""
    cluster = cluster_factory(brokers=3, workers=1, settings=SETTINGS)
    b = ["--bootstrap", cluster.bootstrap]
    assert cluster.create_topic("cli-r", assignments={0: [100, 200]})["error_code"] == 0
    plan = tmp_path / "plan.json"
    plan.write_text('{"version": 1, "partitions": [{"topic": "cli-r", "partition": 0, '
                    '"replicas": [300, 200]}]}')
    done = run("topics", "reassign", "--execute", plan, *b)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines() == ["cli-r-0: reassignment started"]
    cluster.wait_partition("cli-r", 0, lambda m: m.replica_nodes == (300, 200) and
                           len(m.isr_nodes) == 2, 60, "the move done")

    def verified() -> bool:
        out = run("topics", "reassign", "--verify", plan, *b)
        return out.returncode == 0 and out.stdout.decode().splitlines() == [
            "cli-r-0: complete"]
    cluster.wait_for(verified, 60, "--verify to say complete")
    listed = run("topics", "reassign", "--list", *b)
    assert listed.returncode == 0 and b"no reassignment under way" in listed.stdout
    cancel = run("topics", "reassign", "--cancel", plan, *b)
    assert cancel.returncode == 1
    assert b"cli-r-0: NO_REASSIGNMENT_IN_PROGRESS (85)" in cancel.stdout, cancel.stdout
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"partitions": [{"topic": "cli-r"}]}')
    bad = run("topics", "reassign", "--execute", wrong, *b)
    assert bad.returncode == 2 and b"partitions[0] needs topic, partition and replicas" \
        in bad.stderr, bad.stderr
    neither = run("topics", "reassign", *b)
    assert neither.returncode == 2 and b"exactly one of" in neither.stderr
