"""Run a real, standalone Apache ZooKeeper (Debian's `zookeeper` package) as a child.

Used by `pybroker serve` when no `--zookeeper` is given, by `scripts/zookeeper`, and by
the test plugin `pybroker.testing.zk_plugin`. The server listens on one address:
127.0.0.1 unless its owner names another (`host=`, e.g. the bridge address of the
network-namespace tests, pybroker.testing.netns).

Files under `data_dir` (rewritten on every start, except the data and the log):
    zoo.cfg            the server's configuration
    log4j.properties   sends the server's log to its stdout
    zookeeper.log      stdout+stderr of the JVM, appended across restarts
    version-2/         ZooKeeper's snapshots and transaction logs
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pybroker.errors import PyBrokerError

DEFAULT_ENV_FILE = Path("/etc/zookeeper/conf/environment")
INSTALL_HINT = "install the Debian package `zookeeper` (`apt-get install -y zookeeper`)"
HOST = "127.0.0.1"  # the default listen address

# Debian's zookeeper.jar lists slf4j-api in its manifest Class-Path but no slf4j
# binding, so as packaged the server logs nothing at all (SLF4J falls back to its NOP
# logger). These two jars come with the package's dependencies (libslf4j-java,
# liblog4j1.2-java) and give the server a log we can show when something fails.
LOG_BINDING_JARS = ("/usr/share/java/slf4j-log4j12.jar", "/usr/share/java/log4j-1.2.jar")

# -Xmx256m: a test or single-host registry holds a few thousand znodes; 256 MiB is
#   ample and keeps several servers (one per pytest-xdist worker) within a 24 GiB host.
# SerialGC: one GC thread instead of one per core; pauses are irrelevant at this heap.
# preferIPv4Stack: we only ever bind one IPv4 address (127.0.0.1 by default).
DEFAULT_JVM_FLAGS = ("-Xmx256m", "-XX:+UseSerialGC", "-Djava.net.preferIPv4Stack=true")

DEFAULT_TICK_MS = 2000  # ZooKeeper's own default; sessions may last 2..20 ticks
STOP_GRACE_S = 10.0  # SIGTERM -> SIGKILL; a healthy server exits in well under 1 s
BIND_ATTEMPTS = 3  # fresh ports tried when a picked free port is taken before the JVM binds
PROBE_TIMEOUT_S = 1.0  # one ruok round trip on loopback takes about a millisecond
SERVING_MARK = b"Mode: "  # in the `srvr` answer only while requests are served
LOG_TAIL_BYTES = 4096  # how much of the server log goes into a start error

LOG4J_PROPERTIES = """\
# Written by pybroker.coord.zkserver: the server's log goes to stdout, which the
# launcher redirects to zookeeper.log in the data directory.
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p [%t:%C{1}@%L] - %m%n
"""


class ZooKeeperError(PyBrokerError):
    """Base of the errors about running a ZooKeeper server."""


class ZooKeeperNotInstalled(ZooKeeperError):
    """The ZooKeeper package or its Java runtime is missing or incomplete."""


class ZooKeeperStartError(ZooKeeperError):
    """The server did not come up; the message carries the tail of its log."""


@dataclass(frozen=True)
class ZooKeeperInstall:
    """What Debian's environment file says about the installed server."""

    java: str  # absolute path of the java launcher
    classpath: str  # ':'-separated, as the package gives it
    main: tuple[str, ...]  # ZOOMAIN split like a shell would: [flags...] main-class
    env_file: Path


def find_installation(env_file: Path | str = DEFAULT_ENV_FILE) -> ZooKeeperInstall:
    """Read JAVA, CLASSPATH and ZOOMAIN from Debian's environment file.

    The file is a shell fragment (assignments, quotes, `$VAR` references), so a shell
    evaluates it rather than a hand-written parser. Raises ZooKeeperNotInstalled with
    the install hint when the file, the java launcher or a named jar is missing.
    """
    env_file = Path(env_file)
    if not env_file.is_file():
        raise ZooKeeperNotInstalled(
            f"ZooKeeper environment file {env_file} not found; {INSTALL_HINT}")
    java, classpath, zoomain = _source_env_file(env_file)
    java = java or shutil.which("java") or ""
    if not (java and os.access(java, os.X_OK)):
        raise ZooKeeperNotInstalled(
            f"no Java runtime at JAVA={java!r} (from {env_file}); {INSTALL_HINT}, "
            "which brings a Java runtime")
    main = tuple(shlex.split(zoomain))
    if not main or not classpath:
        raise ZooKeeperNotInstalled(
            f"{env_file} defines no ZOOMAIN or CLASSPATH; {INSTALL_HINT}")
    missing = [p for p in classpath.split(":") if p.endswith(".jar") and not os.path.isfile(p)]
    if missing:
        raise ZooKeeperNotInstalled(
            f"ZooKeeper jar(s) {', '.join(missing)} named in {env_file} are missing; "
            f"{INSTALL_HINT}")
    return ZooKeeperInstall(java, classpath, main, env_file)


def _source_env_file(env_file: Path) -> tuple[str, str, str]:
    # A clean environment, so the result depends on the file and not on our caller.
    script = '. "$1" && printf "%s\\0" "$JAVA" "$CLASSPATH" "$ZOOMAIN"'
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    try:
        done = subprocess.run(["bash", "-c", script, "bash", str(env_file)],
                              env=env, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ZooKeeperNotInstalled(f"cannot evaluate {env_file} with bash: {exc}") from exc
    values = done.stdout.decode(errors="replace").split("\0")
    if done.returncode != 0 or len(values) != 4:
        raise ZooKeeperNotInstalled(
            f"evaluating {env_file} failed (exit {done.returncode}): "
            f"{done.stderr.decode(errors='replace').strip()}; {INSTALL_HINT}")
    return values[0], values[1], values[2]


def four_letter_word(port: int, word: str, timeout: float = PROBE_TIMEOUT_S,
                     host: str = HOST) -> bytes:
    """Send one four-letter command (ruok, srvr, stat) and return the whole answer.

    Raises OSError when nothing answers. The server closes the connection after its
    answer, so reading to EOF is how we know we have all of it.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(word.encode("ascii"))
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def pick_free_port(host: str = HOST) -> int:
    """A port that was free a moment ago. Racy by nature: the caller retries on bind failure."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Loaded in the parent, never after a fork: dlopen in a forked child of a threaded
# process may deadlock on the loader's lock.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent(parent_pid: int, signum: int = signal.SIGKILL) -> None:
    """In a just-forked child: have the kernel send `signum` when the parent dies, and
    exit at once if it already has. Linux only (prctl PR_SET_PDEATHSIG); elsewhere a
    no-op.

    Why prctl and not a lifeline pipe: it also covers a child that execs a program we
    cannot teach to watch a pipe (the JVM), costs no fd and no thread, and the kernel
    delivers it even when the parent is SIGKILLed. Its two traps: (1) the parent dying
    between fork and prctl is missed, hence the getppid() check after setting it;
    (2) "parent" is the forking *thread*, so the caller must fork from a thread that
    lives as long as the child should (the main thread). The setting survives execve.
    """
    if _LIBC is None:
        return
    if _LIBC.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent died before prctl took effect: nobody to serve


class EmbeddedZooKeeper:
    """A standalone ZooKeeper server running as a child process of this Python process.

    Ownership: the object that started the JVM owns it; only `stop()` (or the context
    manager's exit, or the interpreter's exit as a last resort) ends it. The child runs
    in its own session, so a Ctrl-C meant for us does not reach the JVM before we
    decide to stop it. The JVM never outlives us: it gets SIGKILL from the kernel when
    the thread that called start() ends (die_with_parent), so call start() from the
    main thread, or from a thread that outlives the server. Its pid is in the header
    line that each start writes to `log_path`.

    `hold_fds`: file descriptors the JVM inherits and keeps open for its whole life,
    e.g. the supervisor's flock on its data dir, so the lock outlives no holder and
    no holder outlives the lock.

    Readiness: `start()` returns only once the port answers `ruok` with `imok` and
    `srvr` reports the server serving (polled with a short backoff, never a fixed
    sleep; see is_ready). If the child exits first, or the timeout passes, it stops
    the child and raises ZooKeeperStartError with the tail of the server's log.

    Address: `host` is the one IPv4 address the server listens on (clientPortAddress),
    127.0.0.1 unless given; connect_string and the readiness probes use it.

    Ports: `port=0` picks a free port on `host` at the first start and keeps it
    across restarts, so clients can keep their connect string. A picked port that
    another process takes before the JVM binds it is replaced by a fresh one, up to
    BIND_ATTEMPTS times; an explicit port is never changed.

    Durability: transaction logs are fsynced (ZooKeeper's `forceSync=yes`) unless
    `fast_unsafe=True`, which is for tests only: a machine crash may then lose
    acknowledged writes.

    stop() guarantees: SIGTERM, then SIGKILL after `grace` seconds, then the child is
    reaped, so no process or zombie is left. It is idempotent, and the server can be
    started again on the same data directory. Not thread-safe: one owner calls
    start/stop.
    """

    def __init__(self, data_dir: Path | str, port: int = 0, tick_ms: int = DEFAULT_TICK_MS,
                 log_path: Path | str | None = None, *, fast_unsafe: bool = False,
                 env_file: Path | str = DEFAULT_ENV_FILE,
                 jvm_flags: tuple[str, ...] = DEFAULT_JVM_FLAGS,
                 hold_fds: tuple[int, ...] = (), host: str = HOST):
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is outside 0..65535")
        if tick_ms <= 0:
            raise ValueError(f"tick_ms {tick_ms} must be positive")
        # Configuration, fixed for the object's life.
        self.data_dir = Path(data_dir).resolve()
        self.log_path = Path(log_path).resolve() if log_path else self.data_dir / "zookeeper.log"
        self.tick_ms = tick_ms  # ms; sessions may last 2..20 ticks
        self.fast_unsafe = fast_unsafe
        self.env_file = Path(env_file)
        self.jvm_flags = tuple(jvm_flags)
        self.hold_fds = tuple(hold_fds)
        self.host = host
        # Chosen at the first start, kept across restarts.
        self._port = port
        # Per run of the child; None/0 while stopped.
        self._proc: subprocess.Popen | None = None
        self._log_file = None
        self._log_start = 0  # byte offset in log_path where this run's output begins

    # -- public surface ---------------------------------------------------------------

    @property
    def port(self) -> int:
        """The client port; 0 until a start has chosen one."""
        return self._port

    @property
    def connect_string(self) -> str:
        """'HOST:PORT' ('127.0.0.1:PORT' by default), for kazoo and for
        `pybroker serve --zookeeper`."""
        if self._port == 0:
            raise ZooKeeperError("no port chosen yet: call start() first")
        return f"{self.host}:{self._port}"

    @property
    def pid(self) -> int | None:
        """The JVM's pid while it runs, else None."""
        return self._proc.pid if self.is_running() else None

    def is_running(self) -> bool:
        """True while our child process has not exited (it may not be ready yet)."""
        return self._proc is not None and self._proc.poll() is None

    def is_ready(self) -> bool:
        """True when our child runs, its port answers `ruok` with `imok`, and `srvr`
        shows it serving.

        ZooKeeper 3.8 answers `imok` as soon as its port is bound, some 40 ms before it
        has loaded its database and serves requests (`srvr` says "This ZooKeeper
        instance is not currently serving requests" meanwhile), so `imok` alone would
        let a client's first request race the server's start. Checking that the child
        is ours and alive first means another server on the port never passes for it.
        """
        if not self.is_running():
            return False
        try:
            return (four_letter_word(self._port, "ruok", host=self.host) == b"imok"
                    and SERVING_MARK in four_letter_word(self._port, "srvr",
                                                         host=self.host))
        except OSError:
            return False

    def start(self, timeout: float = 30.0) -> EmbeddedZooKeeper:
        """Start the server and wait until it answers; returns self. See the class doc."""
        if self.is_running():
            raise ZooKeeperError(f"ZooKeeper already running (pid {self._proc.pid}, "
                                 f"port {self._port})")
        self._reap()  # a child that died on its own since the last start
        install = find_installation(self.env_file)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        may_repick = self._port == 0
        for attempt in range(1, BIND_ATTEMPTS + 1):
            if may_repick:
                # the default address keeps the one-argument-less call (which tests
                # replace to hand out a busy port)
                self._port = (pick_free_port() if self.host == HOST
                              else pick_free_port(self.host))
            self._spawn(install)
            try:
                ready = self._wait_ready(deadline, timeout)
            except BaseException:  # timeout, or Ctrl-C while waiting: no orphan JVM
                self.stop(grace=1.0)
                raise
            if ready:
                return self
            tail, code = self.log_tail(), self._reap()
            if may_repick and attempt < BIND_ATTEMPTS and "java.net.BindException" in tail:
                continue  # someone took the picked port between our probe and the JVM's bind
            raise ZooKeeperStartError(
                f"ZooKeeper exited with code {code} before answering ruok on "
                f"{self.host}:{self._port} (attempt {attempt}); {self.log_path} ends:\n{tail}")
        raise AssertionError("unreachable: the last attempt returns or raises")

    def stop(self, grace: float = STOP_GRACE_S) -> int | None:
        """Stop the server: SIGTERM, SIGKILL after `grace` s, reap. Returns the exit code
        (143 when the JVM exits on SIGTERM, -9 when SIGKILL was needed), or None when
        no child was running."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._proc.kill()  # SIGKILL also ends a stopped (SIGSTOP) process
        return self._reap()

    def log_offset(self) -> int:
        """Current size of the server log, to read only what follows later."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def read_log(self, since: int = 0, max_bytes: int = 64 * 1024) -> str:
        """The log from byte `since` to its end, keeping only the last `max_bytes`."""
        end = self.log_offset()
        start = max(since, end - max_bytes)
        if start >= end:
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(start)
            return log.read(end - start).decode(errors="replace")

    def log_tail(self, max_bytes: int = LOG_TAIL_BYTES) -> str:
        """The end of this run's log (or the last run's, when stopped)."""
        return self.read_log(self._log_start, max_bytes)

    def __enter__(self) -> EmbeddedZooKeeper:
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"EmbeddedZooKeeper(data_dir={str(self.data_dir)!r}, host={self.host}, "
                f"port={self._port}, pid={self.pid})")

    # -- the child process --------------------------------------------------------------

    def _spawn(self, install: ZooKeeperInstall) -> None:
        config = self._write_config()
        log4j = self.data_dir / "log4j.properties"
        log4j.write_text(LOG4J_PROPERTIES)
        argv = [install.java, *self.jvm_flags,
                f"-Dlog4j.configuration=file:{log4j}",
                f"-Dzookeeper.log.dir={self.log_path.parent}",
                "-cp", _with_log_binding(install.classpath), *install.main, str(config)]
        self._open_log()
        parent = os.getpid()
        try:
            self._proc = subprocess.Popen(
                argv, cwd=self.data_dir, stdin=subprocess.DEVNULL, stdout=self._log_file,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                pass_fds=self.hold_fds, preexec_fn=lambda: die_with_parent(parent))
        except OSError as exc:
            self._reap()
            raise ZooKeeperStartError(f"cannot run {install.java}: {exc}") from exc
        _live_servers.add(self)
        self._log_file.write(f"=== pybroker: ZooKeeper pid {self._proc.pid} port {self._port}"
                             f" started {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
        self._log_file.flush()

    def _write_config(self) -> Path:
        lines = [
            "# Written by pybroker.coord.zkserver on every start; edits are lost.",
            f"tickTime={self.tick_ms}",
            f"dataDir={self.data_dir}",
            f"clientPort={self._port}",
            f"clientPortAddress={self.host}",
            "admin.enableServer=false",  # no Jetty admin port to collide with
            "4lw.commands.whitelist=ruok,srvr,stat",
            # Every client of a loopback server comes from 127.0.0.1 (and every broker
            # of one network namespace from its one address), so the default
            # per-address cap of 60 connections would cap the whole cluster: no cap.
            "maxClientCnxns=0",
            # A long-running embedded server would otherwise keep every snapshot.
            "autopurge.snapRetainCount=3",
            "autopurge.purgeInterval=1",  # hours
        ]
        if self.fast_unsafe:
            lines += [
                "# fast_unsafe: tests only. No fsync of the transaction log, and",
                "# 4 MiB instead of 64 MiB preallocated per transaction log file.",
                "forceSync=no",
                "preAllocSize=4096",  # KiB
            ]
        config = self.data_dir / "zoo.cfg"
        config.write_text("\n".join(lines) + "\n")
        return config

    def _open_log(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        self._log_start = self._log_file.tell()

    def _wait_ready(self, deadline: float, timeout: float) -> bool:
        """True once ready; False if the child exited; raises on timeout (the caller
        stops the child)."""
        # A probe of a port nobody listens on yet is refused in microseconds, so polling
        # often is cheap; the cap bounds how late we notice (the JVM answers ~0.3 s in).
        delay = 0.005  # s, doubling up to 0.05
        while True:
            if self._proc.poll() is not None:
                return False
            if self.is_ready():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ZooKeeperStartError(
                    f"ZooKeeper (port {self._port}) did not answer ruok within {timeout} s;"
                    f" {self.log_path} ends:\n{self.log_tail()}")
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)

    def _reap(self) -> int | None:
        """Wait for the exited child, close our log handle, forget the child."""
        code = self._proc.wait() if self._proc is not None else None
        self._proc = None
        _live_servers.discard(self)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code


def _with_log_binding(classpath: str) -> str:
    present = [jar for jar in LOG_BINDING_JARS if os.path.isfile(jar)]
    return ":".join([classpath, *present])


# Last resort for an owner that forgot stop(): no JVM outlives a normal interpreter exit.
# Strong references: a running server stays reachable until it is stopped.
_live_servers: set[EmbeddedZooKeeper] = set()


@atexit.register
def _stop_live_servers() -> None:
    for server in list(_live_servers):
        server.stop(grace=2.0)
