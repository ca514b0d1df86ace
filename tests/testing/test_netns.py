"""pybroker.testing.netns against the real kernel: the topology the isolation test
relies on (an isolated host's own namespace still reaches it, nothing else does), the
cleanup, and a ZooKeeper on the bridge address reachable from a namespace."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pybroker.coord.zkserver import EmbeddedZooKeeper
from pybroker.testing import netns
from pybroker.testing.netns import Network

_REASON = netns.netns_unavailable()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"network namespaces "
                                f"unavailable: {_REASON}")

PORT = 5077
PROBE_TIMEOUT_S = 1.0
CHILD_TIMEOUT_S = 20.0

# An echo server on one address: every connection gets back what it sends.
ECHO_SERVER = """
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen()
print("listening", flush=True)
def echo(c):
    while (d := c.recv(100)):
        c.sendall(d)
while True:
    c, _ = s.accept()
    threading.Thread(target=echo, args=(c,), daemon=True).start()
"""

# A client holding one connection; on each stdin line it reports (JSON) whether that
# established connection and a new one both still make an echo round trip.
PROBE_CLIENT = """
import json, socket, sys
addr, timeout = (sys.argv[1], int(sys.argv[2])), float(sys.argv[3])
def round_trip(c):
    c.sendall(b"x")
    return c.recv(1) == b"x"
held = socket.create_connection(addr, timeout=timeout)
print(json.dumps({"ready": round_trip(held)}), flush=True)
for _ in sys.stdin:
    out = {}
    try:
        out["established"] = round_trip(held)
    except OSError as exc:
        out["established"] = repr(exc)
    try:
        with socket.create_connection(addr, timeout=timeout) as c:
            out["new"] = round_trip(c)
    except OSError as exc:
        out["new"] = repr(exc)
    print(json.dumps(out), flush=True)
"""


class Child:
    """A `python -c` child (optionally in a namespace) speaking lines on stdin/stdout;
    killed by its pid at close."""

    def __init__(self, prefix: list[str], code: str, *args: str):
        self.proc = subprocess.Popen([*prefix, sys.executable, "-c", code, *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def line(self) -> str:
        out = self.proc.stdout.readline()
        assert out, f"child exited {self.proc.wait(CHILD_TIMEOUT_S)}: {self.proc.stderr.read()}"
        return out

    def ask(self) -> dict:
        self.proc.stdin.write("probe\n")
        self.proc.stdin.flush()
        return json.loads(self.line())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(CHILD_TIMEOUT_S)


@pytest.fixture
def network():
    net = Network().create()
    try:
        yield net
    finally:
        assert net.cleanup() == []


def test_an_isolated_host_is_reached_from_its_own_namespace_only(network):
    a, b = network.add_host("a"), network.add_host("b")
    children = []
    try:
        server = Child(a.exec_prefix, ECHO_SERVER, a.address, str(PORT))
        children.append(server)
        assert server.line().strip() == "listening"
        probes = {}
        for where, prefix in (("inside", a.exec_prefix), ("other", b.exec_prefix),
                              ("root", [])):
            probes[where] = Child(prefix, PROBE_CLIENT, a.address, str(PORT),
                                  str(PROBE_TIMEOUT_S))
            children.append(probes[where])
            assert json.loads(probes[where].line()) == {"ready": True}, where
        assert all(p.ask() == {"established": True, "new": True} for p in probes.values())

        a.isolate()
        assert a.isolated and not b.isolated
        assert probes["inside"].ask() == {"established": True, "new": True}
        for where in ("other", "root"):
            answer = probes[where].ask()
            assert answer["established"] is not True and answer["new"] is not True, \
                (where, answer)

        a.heal()
        assert not a.isolated
        # the root's held connection may have been given up by now; new ones work
        assert probes["root"].ask()["new"] is True
        assert probes["inside"].ask() == {"established": True, "new": True}
    finally:
        for child in children:
            child.close()


def test_cleanup_deletes_the_namespaces_veths_and_bridge():
    net = Network().create()
    hosts = [net.add_host(f"h{i}") for i in range(2)]
    hosts[0].isolate()
    assert set(h.netns for h in hosts) <= set(netns._namespaces())
    assert net.cleanup() == []
    assert not [ns for ns in netns._namespaces() if ns.startswith(net.prefix)]
    assert not [link for link in netns._links() if link.startswith(net.prefix)]
    assert net.cleanup() == []      # idempotent


def test_a_failed_setup_leaves_nothing_behind():
    net = Network().create()
    net.add_host("x")
    with pytest.raises(netns.NetnsError):
        net.add_host("x")           # the namespace exists: `ip netns add` fails
    assert not [ns for ns in netns._namespaces() if ns.startswith(net.prefix)]
    assert not [link for link in netns._links() if link.startswith(net.prefix)]


def test_leftovers_of_a_dead_process_are_removed():
    dead = next(pid for pid in range(4_000_000, 4_100_000) if not os.path.exists(f"/proc/{pid}"))
    name = f"pb{dead:x}n0-left"
    netns.ip("netns", "add", name)
    try:
        assert name in netns.remove_stale()
        assert name not in netns._namespaces()
    finally:
        netns.ip("netns", "delete", name, check=False)


def test_zookeeper_on_the_bridge_serves_a_namespace(network, tmp_path):
    host = network.add_host("zkc")
    server = EmbeddedZooKeeper(tmp_path / "zk", tick_ms=500, fast_unsafe=True,
                               host=network.gateway).start()
    try:
        assert server.connect_string == f"{network.gateway}:{server.port}"
        code = ("import sys; from kazoo.client import KazooClient; "
                "c = KazooClient(hosts=sys.argv[1]); c.start(timeout=10); "
                "c.create('/from-netns', b'hello'); print(c.get('/from-netns')[0]); c.stop()")
        done = subprocess.run([*host.exec_prefix, sys.executable, "-c", code,
                               server.connect_string], capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT_S)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "b'hello'"
    finally:
        server.stop()
