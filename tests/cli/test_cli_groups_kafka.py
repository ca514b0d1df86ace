"""pybroker groups list|describe from a bootstrap address alone (no ZooKeeper option):
Kafka-protocol groups coordinated by different nodes, their states, committed offsets,
log ends and lag, against a real broker."""
import os
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from pybroker.server.groups import coordinator_node

PYBROKER = [sys.executable, "-m", "pybroker"]
REPO = str(Path(__file__).resolve().parents[2])


def run(*args, cwd, input=None, timeout=60):
    """The CLI in an empty directory: no ./pybroker-data, so no ZooKeeper to find."""
    env = {**os.environ, "PYTHONPATH": REPO}
    env.pop("PYBROKER_BOOTSTRAP", None)
    return subprocess.run([*PYBROKER, *map(str, args)], input=input, capture_output=True,
                          timeout=timeout, cwd=cwd, env=env)


def group_on(node, nodes, prefix):
    return next(f"{prefix}-{i}" for i in range(1000)
                if coordinator_node(f"{prefix}-{i}", nodes) == node)


def consumer(broker, group, topic):
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    return c


def poll_until(c, want, deadline):
    got = 0
    while got < want and time.monotonic() < deadline:
        msg = c.poll(0.2)
        if msg is not None and msg.error() is None:
            got += 1
    return got


def listed(out: bytes) -> dict:
    lines = out.decode().splitlines()
    assert lines[0].split() == ["GROUP", "KIND", "STATE"]
    return {line.split()[0]: line.split()[1:] for line in lines[1:]}


def rows(out: bytes) -> dict:
    """{partition: [committed, log end, lag]} of a describe table."""
    lines = out.decode().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("partition "))
    return {line.split()[0]: line.split()[-3:] for line in lines[start + 1:]}


def test_kafka_groups_from_bootstrap_alone(broker, tmp_path):
    b = ["--bootstrap", broker.bootstrap]
    broker.create_topic("kgroups", 2)
    for partition, n in ((0, 100), (1, 10)):
        lines = b"".join(b"m%d\n" % i for i in range(n))
        sent = run("produce", "kgroups", "--partition", partition, *b, input=lines,
                   cwd=tmp_path)
        assert sent.returncode == 0, sent.stderr

    nodes = broker.node_ids
    assert len(nodes) == 2
    # one group coordinated by each node: ListGroups must ask both
    whole = group_on(nodes[0], nodes, "kafka-whole")
    part = group_on(nodes[1], nodes, "kafka-part")
    deadline = time.monotonic() + 60

    a = consumer(broker, whole, "kgroups")
    assert poll_until(a, 110, deadline) == 110
    a.commit(asynchronous=False)          # positions: 100 and 10
    c = consumer(broker, part, "kgroups")
    while not c.assignment() and time.monotonic() < deadline:
        c.poll(0.2)
    assert len(c.assignment()) == 2
    c.commit(offsets=[TopicPartition("kgroups", 0, 40), TopicPartition("kgroups", 1, 5)],
             asynchronous=False)
    try:
        out = run("groups", "list", *b, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert out.stderr == b""
        groups = listed(out.stdout)
        assert groups[whole] == ["kafka", "Stable"]
        assert groups[part] == ["kafka", "Stable"]

        out = run("groups", "describe", whole, *b, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        text = out.stdout.decode()
        assert f"group {whole}\nkind: kafka\nstate: Stable\n" in text
        assert text.count("Kafka group member") == 1
        assert rows(out.stdout) == {"kgroups-0": ["100", "100", "0"],
                                    "kgroups-1": ["10", "10", "0"]}

        more = b"".join(b"n%d\n" % i for i in range(25))
        assert run("produce", "kgroups", "--partition", "0", *b, input=more,
                   cwd=tmp_path).returncode == 0
        out = run("groups", "describe", whole, *b, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert rows(out.stdout) == {"kgroups-0": ["100", "125", "25"],
                                    "kgroups-1": ["10", "10", "0"]}
        out = run("groups", "describe", part, *b, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert rows(out.stdout) == {"kgroups-0": ["40", "125", "85"],
                                    "kgroups-1": ["5", "10", "5"]}

        # the consumer catches up and commits: lag 0 again
        assert poll_until(a, 25, deadline) == 25
        a.commit(asynchronous=False)
        out = run("groups", "describe", whole, *b, cwd=tmp_path)
        assert rows(out.stdout) == {"kgroups-0": ["125", "125", "0"],
                                    "kgroups-1": ["10", "10", "0"]}
    finally:
        a.close()
        c.close()

    # the members left (LeaveGroup on close): the groups stay, Empty, with their offsets
    out = run("groups", "list", *b, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    groups = listed(out.stdout)
    assert groups[whole] == ["kafka", "Empty"] and groups[part] == ["kafka", "Empty"]
    out = run("groups", "describe", part, *b, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "state: Empty\nmembers:\n  (none)\n" in out.stdout.decode()
    assert rows(out.stdout) == {"kgroups-0": ["40", "125", "85"],
                                "kgroups-1": ["5", "10", "5"]}


def test_unknown_group_is_one_line(broker, tmp_path):
    out = run("groups", "describe", "no-such-group", "--bootstrap", broker.bootstrap,
              cwd=tmp_path)
    assert out.returncode == 1
    assert out.stdout == b""
    assert len(out.stderr.splitlines()) == 1
    assert b"no-such-group" in out.stderr and b"Traceback" not in out.stderr


def test_nothing_to_ask_is_a_usage_error(tmp_path):
    out = run("groups", "list", "--bootstrap", "", cwd=tmp_path)
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1 and b"Traceback" not in out.stderr


def test_admin_requests_go_to_the_controller_else_a_live_node(broker):
    """(topics commands' routing, kept here with the other Kafka-protocol CLI lookups)"""
    import argparse
    import signal

    from pybroker.cli.topics import _admin
    from pybroker.protocol import ApiKey

    def controller():
        with broker.client() as c:
            return c.request(ApiKey.METADATA, 4, {"topics": [],
                             "allow_auto_topic_creation": False})["controller_id"]
    args = argparse.Namespace(bootstrap=broker.bootstrap_all, timeout=2.0)
    wanted = controller()
    assert wanted in broker.node_ids
    cluster, conn = _admin(args)
    try:
        assert conn.node_id == wanted
    finally:
        conn.close()
        cluster.close()

    # the controller's worker stuck (SIGSTOP): the other node answers instead
    stuck = broker.node_ids.index(wanted)
    pid = broker.worker_pids()[stuck]
    os.kill(pid, signal.SIGSTOP)
    try:
        cluster, conn = _admin(args)
        try:
            assert conn.node_id != wanted
            assert conn.request(ApiKey.API_VERSIONS, 0, {})["error_code"] == 0
        finally:
            conn.close()
            cluster.close()
    finally:
        os.kill(pid, signal.SIGCONT)
