"""Network namespaces on a private bridge, for network-partition faults (replication
tests). Built on the `ip` command (iproute2) and nothing else: no iptables, nft or tc.
Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); a test asks netns_unavailable() first and
skips naming its reason when namespaces cannot be created at all.

Topology of one Network (prefix P = "pb<pid hex>n<counter hex>", unique per process
and per Network; the subnet 10.77.N.0/24 is the first N not used by an address of the
root namespace):

    root namespace (the test process, ZooKeeper bound to the gateway 10.77.N.1)
      bridge Pbr  10.77.N.1/24
        |-- Ph1 ====== veth ====== eth0 10.77.N.11/24  in namespace P-<name of host 1>
        |-- Ph2 ====== veth ====== eth0 10.77.N.12/24  in namespace P-<name of host 2>
        '-- Ph3 ====== veth ====== eth0 10.77.N.13/24  in namespace P-<name of host 3>
    every namespace also has its own loopback (up); nothing is routed beyond the subnet

A host's processes run in its namespace through exec_prefix (`ip netns exec NS`, which
execs the command: the pid a Popen sees is the pid of the command itself, so signals
by pid still reach it; it also enters a private mount namespace with its own /sys, the
file system is otherwise shared).

isolate(host) takes the bridge-side end Ph<i> down (`ip link set Ph<i> down`): the
host's eth0 loses its carrier, so nothing crosses between it and the bridge - not
ZooKeeper, not the other hosts, not the test process (their packets go unanswered;
connections hang until their timeouts, new ones fail with "No route to host"). The
namespace's own address stays local: connections made inside the namespace to its own
address - an established one, and new ones - keep working while it is down (checked
when this module was written: an echo server on 10.77.N.11 answered an established and
a new connection from inside the namespace with the link down, and neither from the
root namespace; tests/testing/test_netns.py checks it on every run). So a client run in
the isolated host's namespace stays connected to that host's broker, as in the Jepsen
scenario of 2013 (clients partitioned together with the old leader). heal(host) takes
the end up again (the addresses and routes survive).

Cleanup (cleanup(), also the context manager's exit and an atexit safety net) deletes
what this Network created, in this order, and carries on past errors: the bridge-side
veth ends (which deletes each pair), the namespaces, the bridge. Processes still
running in a namespace are not touched (their owner stops them; the namespace goes
away with its last process). create() first deletes leftovers of a dead process that
used this naming scheme (names whose pid is no longer alive), so crashed runs do not
accumulate, and never touches a live process's namespaces.
"""
from __future__ import annotations

import atexit
import ipaddress
import itertools
import os
import re
import subprocess
import threading
from dataclasses import dataclass, field

__all__ = ["Network", "Host", "NetnsError", "netns_unavailable", "IP_TIMEOUT_S"]

IP = "ip"
IP_TIMEOUT_S = 30.0
SUBNET_BASE = "10.77"          # 10.77.N.0/24, N = the first free one from 0
GATEWAY_HOST = 1               # 10.77.N.1 on the bridge
FIRST_HOST = 11                # host i (1-based) is 10.77.N.(10 + i)
MAX_HOSTS = 200
PROBE_COUNTER = 0xffff          # the counter in netns_unavailable()'s probe's name
_NAME = re.compile(r"^pb([0-9a-f]+)n([0-9a-f]+)(?:-|br$|[hp]\d+$)")
_counter = itertools.count()
_counter_lock = threading.Lock()


class NetnsError(RuntimeError):
    """An `ip` command failed; the message names it and carries its stderr."""


def ip(*args: str, check: bool = True, timeout: float = IP_TIMEOUT_S) -> str:
    """Run `ip args...`; its stdout. Raises NetnsError naming the command on failure."""
    try:
        done = subprocess.run([IP, *args], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{IP} {' '.join(args)}: {exc}") from exc
    if check and done.returncode != 0:
        raise NetnsError(f"{IP} {' '.join(args)} exited {done.returncode}: "
                         f"{done.stderr.strip()}")
    return done.stdout


def netns_unavailable() -> str | None:
    """None if a network namespace can be created (and deleted) here, else why not."""
    name = f"pb{os.getpid():x}n{PROBE_COUNTER:x}-probe"   # remove_stale() knows the name
    try:
        ip("netns", "add", name)
    except NetnsError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        ip("netns", "delete", name)
    except NetnsError as exc:
        return f"cannot delete the network namespace {name}: {exc}"
    return None


@dataclass(eq=False)
class Host:
    """One namespace on the bridge: `address` is its eth0 address, `veth` the bridge-side
    end of its link (the one isolate() takes down)."""
    network: "Network"
    name: str
    netns: str
    address: str
    veth: str
    index: int

    @property
    def exec_prefix(self) -> list[str]:
        """Prepend to a command to run it in this host's namespace (it execs)."""
        return [IP, "netns", "exec", self.netns]

    # broker_plugin's cluster_factory reads a placement's address and command_prefix
    command_prefix = exec_prefix

    def isolate(self) -> None:
        """Cut this host off the bridge (its namespace stays reachable from inside)."""
        ip("link", "set", self.veth, "down")

    def heal(self) -> None:
        ip("link", "set", self.veth, "up")

    @property
    def isolated(self) -> bool:
        """True while the bridge-side end is administratively down."""
        out = ip("-o", "link", "show", "dev", self.veth)
        flags = out.split("<", 1)[1].split(">", 1)[0].split(",")
        return "UP" not in flags

    def run(self, *cmd: str, timeout: float = IP_TIMEOUT_S) -> subprocess.CompletedProcess:
        """Run a command in the namespace and wait for it (output captured)."""
        return subprocess.run([*self.exec_prefix, *cmd], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def __repr__(self) -> str:
        return f"Host({self.name!r}, netns={self.netns!r}, {self.address}, veth={self.veth})"


@dataclass(eq=False)
class Network:
    """A bridge in the root namespace and hosts (namespaces) on it; see the module doc."""
    prefix: str = ""
    subnet: ipaddress.IPv4Network | None = None
    bridge: str = ""
    hosts: list[Host] = field(default_factory=list)
    # what exists now, for cleanup: kinds "veth", "netns", "bridge"
    _created: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.prefix:
            with _counter_lock:
                self.prefix = f"pb{os.getpid():x}n{next(_counter):x}"
        self.bridge = f"{self.prefix}br"
        if len(self.bridge) > 15 or len(f"{self.prefix}h{MAX_HOSTS}") > 15:
            raise ValueError(f"prefix {self.prefix!r} too long for interface names")

    @property
    def gateway(self) -> str:
        """The bridge's address in the root namespace (bind ZooKeeper here)."""
        assert self.subnet is not None, "create() first"
        return str(self.subnet.network_address + GATEWAY_HOST)

    def create(self) -> "Network":
        """The bridge, up, with the gateway address on a free /24. On failure whatever
        was created is deleted again before the error propagates."""
        remove_stale()
        self._remove_own_names()
        _live.add(self)
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            self._created.append(("bridge", self.bridge))
            self.subnet = self._claim_subnet()
            ip("link", "set", self.bridge, "up")
        except BaseException:
            self.cleanup()
            raise
        return self

    def add_host(self, name: str) -> Host:
        """A namespace <prefix>-<name> with lo up and eth0 = 10.77.N.(10+i) on the bridge.
        On failure the whole network is deleted (cleanup()) before the error propagates."""
        assert self.subnet is not None, "create() first"
        index = len(self.hosts) + 1
        if index > MAX_HOSTS:
            raise ValueError(f"at most {MAX_HOSTS} hosts")
        netns = f"{self.prefix}-{name}"
        veth, peer = f"{self.prefix}h{index}", f"{self.prefix}p{index}"
        address = str(self.subnet.network_address + FIRST_HOST - 1 + index)
        try:
            ip("netns", "add", netns)
            self._created.append(("netns", netns))
            ip("-n", netns, "link", "set", "lo", "up")
            ip("link", "add", veth, "type", "veth", "peer", "name", peer)
            self._created.append(("veth", veth))
            ip("link", "set", peer, "netns", netns)
            ip("-n", netns, "link", "set", peer, "name", "eth0")
            ip("-n", netns, "addr", "add", f"{address}/{self.subnet.prefixlen}",
               "dev", "eth0")
            ip("-n", netns, "link", "set", "eth0", "up")
            ip("link", "set", veth, "master", self.bridge)
            ip("link", "set", veth, "up")
        except BaseException:
            self.cleanup()
            raise
        host = Host(self, name, netns, address, veth, index)
        self.hosts.append(host)
        return host

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def cleanup(self) -> list[str]:
        """Delete everything created, veth ends first, then namespaces, then the bridge;
        past errors (returned, one line each; a vanished object is no error)."""
        errors: list[str] = []
        order = {"veth": 0, "netns": 1, "bridge": 2}
        for kind, name in sorted(self._created, key=lambda c: order[c[0]]):
            try:
                if kind == "netns":
                    if name in _namespaces():
                        ip("netns", "delete", name)
                elif _link_exists(name):
                    ip("link", "delete", name)
            except NetnsError as exc:
                errors.append(str(exc))
        self._created.clear()
        _live.discard(self)
        return errors

    def __enter__(self) -> "Network":
        return self.create() if self.subnet is None else self

    def __exit__(self, *exc_info) -> None:
        self.cleanup()

    # --- internals -------------------------------------------------------------------

    def _claim_subnet(self) -> ipaddress.IPv4Network:
        """Put the gateway address on the bridge in the first 10.77.N.0/24 no other
        interface of the root namespace uses; re-checked after the add, so two runs
        claiming the same N at once both notice it (the later one moves on)."""
        for n in range(256):
            net = ipaddress.ip_network(f"{SUBNET_BASE}.{n}.0/24")
            if any(dev != self.bridge for dev, _ in _root_addresses(net)):
                continue
            gateway = f"{net.network_address + GATEWAY_HOST}/{net.prefixlen}"
            ip("addr", "add", gateway, "dev", self.bridge)
            others = [dev for dev, _ in _root_addresses(net) if dev != self.bridge]
            if not others:
                return net
            ip("addr", "delete", gateway, "dev", self.bridge)
        raise NetnsError(f"no free /24 in {SUBNET_BASE}.0.0/16 on this host")

    def _remove_own_names(self) -> None:
        """Objects bearing our exact prefix can only be a dead process's (same pid)."""
        mine = _owner(self.prefix + "br")
        for ns in _namespaces():
            if _owner(ns) == mine:
                ip("netns", "delete", ns, check=False)
        for link in _links():
            if _owner(link) == mine:
                ip("link", "delete", link, check=False)


def _owner(name: str) -> tuple[int, int] | None:
    """(pid, counter) of a name of this naming scheme, else None."""
    m = _NAME.match(name)
    return (int(m.group(1), 16), int(m.group(2), 16)) if m else None


def _namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def _links() -> list[str]:
    out = []
    for line in ip("-o", "link", "show").splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            out.append(parts[1].strip().split("@", 1)[0])
    return out


def _link_exists(name: str) -> bool:
    return ip("link", "show", "dev", name, check=False).strip() != ""


def _root_addresses(net: ipaddress.IPv4Network) -> list[tuple[str, str]]:
    """(device, address) of every IPv4 address of the root namespace inside `net`."""
    found = []
    for line in ip("-o", "-4", "addr", "show").splitlines():
        parts = line.split()
        if "inet" in parts:
            addr = parts[parts.index("inet") + 1]
            if ipaddress.ip_interface(addr).ip in net:
                found.append((parts[1].split("@", 1)[0], addr))
    return found


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def remove_stale() -> list[str]:
    """Delete the namespaces and links of this naming scheme whose creating pid is not
    alive (a crashed or killed test run); returns their names. A namespace that still
    has processes in it persists until they exit, only its name goes."""
    def stale(name: str) -> bool:
        owner = _owner(name)
        return owner is not None and owner[0] != os.getpid() and not _pid_alive(owner[0])
    removed = []
    for ns in filter(stale, _namespaces()):
        ip("netns", "delete", ns, check=False)
        removed.append(ns)
    for link in filter(stale, _links()):
        ip("link", "delete", link, check=False)
        removed.append(link)
    return removed


_live: set[Network] = set()


@atexit.register
def _cleanup_leftovers() -> None:
    for net in list(_live):
        net.cleanup()
