"""The ZooKeeper launcher, the session-expiry helper and the pytest plugin, against a
real ZooKeeper (Debian's package). No timing assertions: only behaviour."""

import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from pybroker.coord import zkserver
from pybroker.coord.zkserver import (EmbeddedZooKeeper, ZooKeeperNotInstalled,
                                     ZooKeeperStartError, find_installation,
                                     four_letter_word)
from pybroker.errors import PyBrokerError
from pybroker.testing.poll import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]


def assert_reaped(pid: int) -> None:
    """The pid is neither running nor a zombie waiting to be reaped by us."""
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    assert not Path(f"/proc/{pid}").exists(), f"process {pid} still exists"


def assert_port_closed(port: int) -> None:
    with pytest.raises(OSError):
        four_letter_word(port, "ruok")


# -- the shared server and the fixtures -----------------------------------------------

def test_server_answers_ruok_on_the_reported_port(zk_server):
    host, port = zk_server.connect_string.split(":")
    assert (host, int(port)) == ("127.0.0.1", zk_server.port)
    assert zk_server.is_ready()
    assert four_letter_word(zk_server.port, "ruok") == b"imok"
    assert b"Mode: standalone" in four_letter_word(zk_server.port, "srvr")


def test_kazoo_creates_and_reads_znodes(zk):
    zk.create("/brokers/ids/0", b'{"host":"127.0.0.1"}', makepath=True)
    zk.create("/brokers/ids/1", b"")
    data, stat = zk.get("/brokers/ids/0")
    assert data == b'{"host":"127.0.0.1"}'
    assert stat.version == 0
    assert sorted(zk.get_children("/brokers/ids")) == ["0", "1"]


def test_ephemeral_node_disappears_after_session_expiry(zk, zk_root, zk_chroot,
                                                        expire_zk_session):
    zk.create("/brokers/ids/7", b"", ephemeral=True, makepath=True)
    old_session = zk.client_id[0]
    expire_zk_session(zk)
    assert zk.client_id[0] != old_session  # kazoo opened a new session
    assert zk.exists("/brokers/ids/7") is None
    assert zk_root.exists(f"{zk_chroot}/brokers/ids/7") is None
    assert zk.exists("/brokers/ids") is not None  # persistent nodes stay


@pytest.mark.parametrize("run", ["first", "second"])
def test_each_test_gets_a_fresh_chroot(run, zk, zk_root, zk_chroot, zk_connect):
    assert zk_connect.endswith(zk_chroot)
    assert zk.get_children("/") == []
    zk.create("/marker", run.encode())  # NodeExists here would mean a shared chroot
    assert zk_root.get(f"{zk_chroot}/marker")[0] == run.encode()
    # Earlier tests' chroots were deleted: ours is the only test chroot at the root.
    test_chroots = [c for c in zk_root.get_children("/") if c.startswith("t-")]
    assert test_chroots == [zk_chroot.lstrip("/")]


# -- installation errors ----------------------------------------------------------------

def test_missing_environment_file_is_a_clear_install_error(tmp_path):
    server = EmbeddedZooKeeper(tmp_path, env_file=tmp_path / "no-such-environment")
    with pytest.raises(ZooKeeperNotInstalled) as info:
        server.start()
    assert isinstance(info.value, PyBrokerError)
    assert "apt-get install -y zookeeper" in str(info.value)
    assert "no-such-environment" in str(info.value)
    assert server.pid is None


def test_missing_java_is_a_clear_install_error(tmp_path):
    env_file = tmp_path / "environment"
    env_file.write_text('JAVA=/nonexistent/bin/java\nCLASSPATH="/etc/zookeeper/conf"\n'
                        "ZOOMAIN=org.apache.zookeeper.server.quorum.QuorumPeerMain\n")
    with pytest.raises(ZooKeeperNotInstalled, match="Java runtime") as info:
        find_installation(env_file)
    assert "apt-get install -y zookeeper" in str(info.value)


def test_environment_file_is_evaluated_like_a_shell(tmp_path):
    jar = tmp_path / "zookeeper.jar"
    jar.write_bytes(b"")
    env_file = tmp_path / "environment"
    env_file.write_text(textwrap.dedent(f"""\
        # comment
        JARS={tmp_path}
        CLASSPATH="/etc/zookeeper/conf:$JARS/zookeeper.jar"
        ZOOMAIN="-Dfoo=bar org.example.Main"
        JAVA={sys.executable}
        """))
    install = find_installation(env_file)
    assert install.classpath == f"/etc/zookeeper/conf:{jar}"
    assert install.main == ("-Dfoo=bar", "org.example.Main")
    assert install.java == sys.executable


# -- the launcher's own lifecycle (private servers) --------------------------------------

def test_stop_leaves_no_child_process(tmp_path):
    with EmbeddedZooKeeper(tmp_path, fast_unsafe=True) as server:
        pid, port = server.pid, server.port
        assert server.is_ready()
        assert (tmp_path / "zookeeper.log").read_text().count(f"pid {pid}") == 1
    assert server.pid is None and not server.is_ready()
    assert_reaped(pid)
    assert_port_closed(port)
    assert server.stop() is None  # idempotent


def test_start_timeout_leaves_no_child_process(tmp_path):
    server = EmbeddedZooKeeper(tmp_path, fast_unsafe=True)
    with pytest.raises(ZooKeeperStartError, match="did not answer ruok within"):
        server.start(timeout=0.05)  # far less than the JVM needs to start
    assert server.pid is None
    pid = int(re.search(r"ZooKeeper pid (\d+)", server.log_tail()).group(1))
    assert_reaped(pid)


def test_server_that_died_on_its_own_can_be_started_again(tmp_path):
    server = EmbeddedZooKeeper(tmp_path, fast_unsafe=True).start()
    try:
        os.kill(server.pid, signal.SIGKILL)
        dead = server._proc.pid
        server._proc.wait()  # let it die; the object still holds it
        assert not server.is_running() and not server.is_ready()
        server.start()
        assert server.is_ready()
        assert_reaped(dead)
    finally:
        server.stop()


def test_stop_escalates_to_sigkill_when_sigterm_is_not_enough(tmp_path):
    server = EmbeddedZooKeeper(tmp_path, fast_unsafe=True).start()
    pid = server.pid
    os.kill(pid, signal.SIGSTOP)  # a stopped JVM cannot act on SIGTERM
    assert server.stop(grace=0.5) == -signal.SIGKILL
    assert_reaped(pid)


def test_restart_keeps_port_and_data(tmp_path):
    server = EmbeddedZooKeeper(tmp_path)  # default durability: forceSync on
    try:
        server.start()
        port = server.port
        client = KazooClient(server.connect_string)
        client.start(timeout=15)
        client.create("/kept", b"v1")
        client.stop()
        client.close()
        server.stop()
        server.start()
        assert server.port == port
        client = KazooClient(server.connect_string)
        client.start(timeout=15)
        assert client.get("/kept")[0] == b"v1"
        client.stop()
        client.close()
    finally:
        server.stop()


def test_picked_port_taken_before_the_jvm_binds_is_replaced(tmp_path, monkeypatch):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        picks = iter([busy])
        real_pick = zkserver.pick_free_port
        monkeypatch.setattr(zkserver, "pick_free_port", lambda: next(picks, None) or real_pick())
        with EmbeddedZooKeeper(tmp_path, fast_unsafe=True) as server:
            assert server.port != busy
            assert server.is_ready()
    log = (tmp_path / "zookeeper.log").read_text()
    assert f"port {busy}" in log and "java.net.BindException" in log


def test_explicit_busy_port_fails_with_the_log_tail(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        server = EmbeddedZooKeeper(tmp_path, port=busy, fast_unsafe=True)
        with pytest.raises(ZooKeeperStartError, match="java.net.BindException"):
            server.start()
    assert server.pid is None and server.port == busy


# -- the plugin's failure report and the launcher script ----------------------------------

def test_failing_test_report_carries_the_zookeeper_log(tmp_path):
    (tmp_path / "test_sample.py").write_text(textwrap.dedent("""\
        def test_passes(zk):
            zk.create("/ok")

        def test_fails(zk):
            zk.create("/doomed")
            assert False, "deliberate"
        """))
    env = dict(os.environ, PYTHONPATH=f"{REPO_ROOT}{os.pathsep}"
               + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "pybroker.testing.zk_plugin",
         "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "base"), "-rA",
         str(tmp_path / "test_sample.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "1 failed, 1 passed" in out
    failures = out.split("= FAILURES =")[1].split("= PASSES =")[0]
    assert "ZooKeeper log" in failures and "zookeeper.log" in failures
    assert "ZooKeeper log" not in out.split("= PASSES =")[1]


def test_script_prints_connect_string_and_stops_on_sigterm(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "scripts" / "zookeeper"),
         "--data-dir", str(tmp_path), "--fast-unsafe"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        connect = proc.stdout.readline().strip()
        host, port = connect.split(":")
        assert host == "127.0.0.1"
        assert four_letter_word(int(port), "ruok") == b"imok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_port_closed(int(port))
    assert "pybroker: ZooKeeper pid" in (tmp_path / "zookeeper.log").read_text()


# -- the JVM never outlives its parent, and can hold its parent's lock --------------------

def _gone(pid: int) -> bool:
    """No such process, or only a zombie (dead, waiting for whoever is its parent now)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_jvm_dies_when_its_parent_is_sigkilled(tmp_path):
    script = textwrap.dedent(f"""\
        import sys, time
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from pybroker.coord.zkserver import EmbeddedZooKeeper
        server = EmbeddedZooKeeper({str(tmp_path)!r}, fast_unsafe=True).start()
        print(server.pid, server.port, flush=True)
        time.sleep(600)
        """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        jvm, port = map(int, parent.stdout.readline().split())
        assert four_letter_word(port, "ruok") == b"imok"
    finally:
        parent.kill()  # SIGKILL: no atexit, no stop(); only the kernel can end the JVM
        parent.wait()
    wait_for(lambda: _gone(jvm), f"ZooKeeper pid {jvm} to die with its parent", 30.0)
    assert_port_closed(port)


def test_held_fd_keeps_the_lock_for_the_jvm_life(tmp_path):
    lock_path = tmp_path / ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    server = EmbeddedZooKeeper(tmp_path / "zk", fast_unsafe=True, hold_fds=(fd,)).start()
    os.close(fd)  # our copy is gone; the JVM's copy of the open file still holds the lock
    probe = os.open(lock_path, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        server.stop()
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released with its last holder
    finally:
        server.stop()
        os.close(probe)
