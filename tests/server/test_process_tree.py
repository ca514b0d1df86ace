"""The process tree of `pybroker serve`: its workers and its private ZooKeeper never
outlive the supervisor, and one data dir admits one broker (every process of it) at a
time. Real processes, real signals; every wait bounded, nothing asserts on time."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from kazoo.client import KazooClient

from pybroker.testing.broker_plugin import EXIT_USAGE, free_port_run
from pybroker.testing.poll import wait_for

DIE_TIMEOUT_S = 30.0   # SIGKILL of a parent -> the kernel's death signal to its children
SERVE_TIMEOUT_S = 60.0
# The new private ZooKeeper restores the dead workers' sessions from its snapshot and
# expires them only after their timeout (zookeeper.session.timeout.ms, 10 s by
# default); until then the new workers wait (their predecessors' znodes are not
# provably theirs), so re-registration may take that long plus a tick.
REREGISTER_TIMEOUT_S = 60.0


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a dead child not yet reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def private_zookeeper_pid(broker) -> int:
    """The JVM pid of the broker's private ZooKeeper, from the header line each start
    writes to its log (the last start is the current one)."""
    text = (broker.data_dir / "zookeeper" / "zookeeper.log").read_text(errors="replace")
    return int(re.findall(r"ZooKeeper pid (\d+)", text)[-1])


def registration_owners(broker) -> dict[int, int | None]:
    """{node: ephemeralOwner of /brokers/ids/<node>} in the broker's private ZooKeeper
    (None: not registered), read with a short-lived client of its own."""
    connect = (broker.data_dir / "zookeeper.connect").read_text().strip()
    client = KazooClient(connect)
    client.start(timeout=SERVE_TIMEOUT_S)
    try:
        return {n: (stat.ephemeralOwner if (stat := client.exists(f"/brokers/ids/{n}"))
                    else None) for n in broker.node_ids}
    finally:
        client.stop()
        client.close()


def test_sigkilled_supervisor_takes_its_workers_and_zookeeper_along(broker_factory):
    broker = broker_factory(workers=2, zk_connect="")  # the private ZooKeeper
    broker.create_topic("tree", 2)
    for p in range(2):
        broker.produce_one("tree", p, b"before-%d" % p)
    supervisor, workers = broker.pid, broker.worker_pids()
    zookeeper = private_zookeeper_pid(broker)
    old_owners = registration_owners(broker)
    assert all(alive(pid) for pid in (supervisor, zookeeper, *workers))

    os.kill(supervisor, signal.SIGKILL)  # no handler runs: only the kernel can clean up
    broker.proc.wait()
    wait_for(lambda: not any(alive(pid) for pid in (zookeeper, *workers)),
             f"workers {workers} and ZooKeeper {zookeeper} to die with supervisor "
             f"{supervisor}", DIE_TIMEOUT_S,
             detail=lambda: {pid: alive(pid) for pid in (zookeeper, *workers)})

    broker.start(SERVE_TIMEOUT_S)  # same data dir: the lock is free, nothing holds a port
    assert private_zookeeper_pid(broker) != zookeeper
    for p in range(2):
        broker.produce_one("tree", p, b"after-%d" % p)
        assert broker.fetch_values("tree", p) == [b"before-%d" % p, b"after-%d" % p]
    # and every node ends up registered by its new incarnation, not by a dead session
    began = time.monotonic()
    wait_for(lambda: all(owner not in (None, old_owners[n])
                         for n, owner in registration_owners(broker).items()),
             "every node registered under a new session", REREGISTER_TIMEOUT_S, poll=0.5,
             detail=lambda: (old_owners, registration_owners(broker)))
    print(f"re-registered {time.monotonic() - began:.1f} s after the restart served")


def test_second_supervisor_is_refused_naming_the_data_dir_and_every_holder(
        broker_factory, zk_connect):
    broker = broker_factory(workers=2, zk_connect="")
    holders = [broker.pid, private_zookeeper_pid(broker), *broker.worker_pids()]
    port = free_port_run(1)
    done = subprocess.run(
        [sys.executable, "-m", "pybroker", "serve", "--data-dir", str(broker.data_dir),
         "--port", str(port), "--workers", "1", "--zookeeper", zk_connect],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=SERVE_TIMEOUT_S)
    assert done.returncode == EXIT_USAGE, done.stderr
    [line] = [ln for ln in done.stderr.splitlines() if "in use" in ln]
    assert str(broker.data_dir) in line
    # the lock is held by every process of the first broker: supervisor, ZooKeeper and
    # workers (the pids are listed after "held by pid")
    listed = {int(n) for n in re.search(r"held by pid ([\d, ]+)", line).group(1).split(",")}
    assert set(holders) <= listed, line
    assert f"(supervisor {broker.pid})" in line
    # and the first broker was not disturbed
    broker.create_topic("still", 1)
    broker.produce_one("still", 0, b"v")
    assert broker.fetch_values("still", 0) == [b"v"]
