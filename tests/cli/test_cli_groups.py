"""pybroker groups list|describe and consume --group, against a real broker: the
paper's consumer and a Kafka-protocol group side by side in one offset registry."""
import subprocess
import sys
import time

from confluent_kafka import Consumer

PYBROKER = [sys.executable, "-m", "pybroker"]


def run(*args, input=None, timeout=60):
    return subprocess.run([*PYBROKER, *map(str, args)], input=input, capture_output=True,
                          timeout=timeout)


def test_groups_of_both_kinds_list_and_describe(broker, zk_connect):
    b = ["--bootstrap", broker.bootstrap]
    z = ["--zookeeper", zk_connect]
    broker.create_topic("grouped", 2)
    lines = b"".join(b"m%d\n" % i for i in range(100))
    assert run("produce", "grouped", "--partition", "0", *b, input=lines).returncode == 0

    # the paper's consumer, from the CLI: reads 40, commits what it printed
    paper = run("consume", "grouped", "--group", "paper-g", "--count", "40", *z, *b)
    assert paper.returncode == 0, paper.stderr
    assert paper.stdout.splitlines() == [b"m%d" % i for i in range(40)]

    # a Kafka-protocol group through the broker's coordinator
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "kafka-g",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(["grouped"])
    got, deadline = 0, time.monotonic() + 30
    while got < 70 and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None and msg.error() is None:
            got += 1
    assert got == 70
    consumer.commit(asynchronous=False)
    try:
        listed = run("groups", "list", *z, *b)
        assert listed.returncode == 0, listed.stderr
        assert {b"paper-g", b"kafka-g"} <= set(listed.stdout.split())
        kinds = {line.split()[0]: line.split()[1:] for line in listed.stdout.decode().splitlines()}
        assert kinds["paper-g"] == ["zookeeper", "Empty"]   # its consumer has exited
        assert kinds["kafka-g"] == ["kafka", "Stable"]
        # from the bootstrap address alone the paper group shows as offsets on a broker
        alone = run("groups", "list", *b, "--data-dir", "/nonexistent")
        assert alone.returncode == 0, alone.stderr
        kinds = {line.split()[0]: line.split()[1:] for line in alone.stdout.decode().splitlines()}
        assert kinds["paper-g"] == ["kafka", "Empty"] and kinds["kafka-g"] == ["kafka", "Stable"]

        kafka = run("groups", "describe", "kafka-g", *z, *b).stdout.decode()
        row = next(line for line in kafka.splitlines() if line.startswith("grouped-0 "))
        assert row.split()[-3:] == ["70", "100", "30"]  # committed, log end, lag
        assert "Kafka group member" in kafka
        assert "kind: kafka\nstate: Stable\n" in kafka
    finally:
        consumer.close()

    paper_view = run("groups", "describe", "paper-g", *z, *b).stdout.decode()
    row = next(line for line in paper_view.splitlines() if line.startswith("grouped-0 "))
    assert row.split()[-3:] == ["40", "100", "60"]
    assert "kind: zookeeper\nstate: Empty\n" in paper_view

    missing = run("groups", "describe", "no-such-group", *z, *b)
    assert missing.returncode == 1 and b"no-such-group" in missing.stderr
    assert len(missing.stderr.splitlines()) == 1 and b"Traceback" not in missing.stderr
