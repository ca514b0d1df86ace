"""The pybroker command line as a new user meets it: every bad usage is one line on
stderr naming the problem and exit 2 (never a traceback), a dead address is one line
and exit 1, `--version`, defaults in `--help`, $PYBROKER_BOOTSTRAP, and Ctrl-C
(exit 130 with the count of what was sent or read). Real subprocesses throughout."""
import os
import signal
import socket
import subprocess
import sys

import pytest

import pybroker
from pybroker import cli

PYBROKER = [sys.executable, "-m", "pybroker"]


def _env(bootstrap=None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != cli.BOOTSTRAP_ENV}
    if bootstrap is not None:
        env[cli.BOOTSTRAP_ENV] = bootstrap
    return env


def run(*args, input=None, bootstrap_env=None, timeout=60):
    return subprocess.run([*PYBROKER, *map(str, args)], input=input, capture_output=True,
                          timeout=timeout, env=_env(bootstrap_env))


def assert_one_line(done, rc: int, *named: bytes) -> None:
    """rc, no traceback, exactly one line on stderr, naming each of `named`."""
    err = done.stderr
    assert done.returncode == rc, (done.returncode, err)
    assert b"Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    for word in named:
        assert word in err, (word, err)


def _interruptible():
    """Children get SIGINT's default action back (a test run in the background may
    have it ignored, and Python keeps an ignored SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# --- bad usage, no broker needed --------------------------------------------------------

BAD_USAGE = [
    (["serve", "--config", "/nonexistent/broker.properties"],
     [b"--config", b"/nonexistent/broker.properties", b"no such file"]),
    (["serve", "--config", "/"], [b"--config", b"directory"]),
    (["serve", "--log-level", "LOUD"], [b"--log-level", b"LOUD", b"DEBUG"]),
    (["--log-level", "loud", "stats"], [b"--log-level", b"LOUD"]),
    (["serve", "--set", "num.partitions"], [b"--set", b"KEY=VALUE"]),
    (["consume", "t", "--from", "bogus"], [b"--from", b"bogus", b"earliest"]),
    (["consume", "t", "--from", "time:abc"], [b"--from", b"time:abc"]),
    (["consume", "t", "--partition", "-1"], [b"--partition", b"-1"]),
    (["consume", "t", "--count", "zero"], [b"--count", b"zero"]),
    (["produce", "t", "--file", "/nonexistent/lines.txt"],
     [b"--file", b"/nonexistent/lines.txt", b"no such file"]),
    (["produce", "t", "--file", "/"], [b"--file", b"directory"]),
    (["produce", "t", "--acks", "2"], [b"--acks", b"'2'"]),
    (["consume", "t", "--bootstrap", "127.0.0.1"], [b"--bootstrap", b"127.0.0.1", b"port"]),
    (["produce", "t", "--bootstrap", "127.0.0.1:9092,127.0.0.1"], [b"--bootstrap", b"port"]),
    (["topics", "list", "--bootstrap", "127.0.0.1"], [b"--bootstrap", b"port"]),
    (["groups", "list", "--bootstrap", "localhost"], [b"--bootstrap", b"port"]),
    (["topics", "create", "t", "--partitions", "0"], [b"--partitions", b"0"]),
    (["topics", "create", "t", "--config", "retention.ms"], [b"--config", b"KEY=VALUE"]),
    (["topics", "alter", "t"], [b"nothing to alter", b"--partitions N"]),
    (["topics"], [b"required"]),
    ([], [b"required"]),
]


@pytest.mark.parametrize("argv, named", BAD_USAGE, ids=[" ".join(a) or "none"
                                                         for a, _ in BAD_USAGE])
def test_bad_usage_is_one_line_and_exit_2(argv, named):
    # a dead bootstrap address: anything that got past the checks would fail otherwise
    assert_one_line(run(*argv, bootstrap_env="127.0.0.1:1"), 2, *named)


def test_a_bad_bootstrap_from_the_environment_names_the_variable():
    done = run("topics", "list", bootstrap_env="localhost")
    assert_one_line(done, 2, cli.BOOTSTRAP_ENV.encode(), b"localhost", b"port")


def test_log_level_is_case_insensitive():
    done = run("--log-level", "debug", "stats", "--data-dir", "/nonexistent")
    assert_one_line(done, 1, b"no control block")


# --- an unexpected error: one line, the traceback only with --log-level debug -----------

def test_an_unexpected_error_is_one_line_unless_debugging(monkeypatch, capsys):
    def broken(args):
        return {}[9]   # the KeyError: 9 a missing partition once gave

    monkeypatch.setattr(cli, "cmd_stats", broken)
    assert cli.main(["stats"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith("pybroker stats: KeyError: 9") and "--log-level debug" in err
    assert cli.main(["--log-level", "debug", "stats"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("pybroker stats: KeyError")


# --- dead and stuck addresses: one line, exit 1 -----------------------------------------

def test_a_refused_address_is_one_line_and_exit_1(zk_connect):
    with socket.socket() as bound:   # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        address = "127.0.0.1:%d" % bound.getsockname()[1]
        for argv in (["topics", "list"], ["topics", "describe", "t"],
                     ["consume", "t", "--exit"], ["groups", "list", "--zookeeper", zk_connect]):
            done = run(*argv, "--bootstrap", address)
            assert_one_line(done, 1, address.encode())
            assert b"refused" in done.stderr
        done = run("produce", "t", "--bootstrap", address, input=b"x\n")
        assert_one_line(done, 1, address.encode(), b"refused")


def test_an_address_that_never_answers_is_one_line_and_exit_1():
    with socket.socket() as stuck:   # listening, never accepting, never answering
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(64)
        address = "127.0.0.1:%d" % stuck.getsockname()[1]
        for argv in (["topics", "list", "--timeout", "1"],
                     ["consume", "t", "--exit", "--timeout", "1"]):
            assert_one_line(run(*argv, "--bootstrap", address), 1, address.encode())
        done = run("produce", "t", "--timeout", "1", "--bootstrap", address, input=b"x\n")
        assert_one_line(done, 1, address.encode())


# --- bad usage that needs the topic: against a broker -----------------------------------

def test_a_partition_the_topic_lacks_is_bad_usage(broker):
    b = ["--bootstrap", broker.bootstrap]
    broker.create_topic("two-parts", 2)
    done = run("consume", "two-parts", "--partition", "9", "--exit", *b)
    assert_one_line(done, 2, b"--partition 9", b"two-parts", b"2 partition(s)")
    done = run("produce", "two-parts", "--partition", "9", *b, input=b"a\nb\n")
    assert_one_line(done, 2, b"--partition 9", b"two-parts", b"2 partition(s)")
    assert run("consume", "two-parts", "--exit", *b).stdout == b""   # nothing was sent
    done = run("topics", "alter", "two-parts", *b)
    assert_one_line(done, 2, b"nothing to alter")


# --- --version, --help ------------------------------------------------------------------

def test_version():
    done = run("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split() == ["pybroker", cli.version()]
    assert cli.version() == pybroker.__version__   # the installed one is this tree's


def test_help_shows_the_defaults():
    expected = {
        ("serve",): ["(default: 9092)", "(default: INFO", "(default: text)"],
        ("stats",): ["(default: ./pybroker-data)"],
        ("produce",): ["(default: all)", "(default: 60",
                        "(default: $PYBROKER_BOOTSTRAP, else 127.0.0.1:9092)"],
        ("consume",): ["(default: earliest)", "(default: raw)", "(default: all partitions)"],
        ("topics", "create"): ["(default: 1)", "(default: 30.0)"],
        ("groups", "list"): ["(default: ./pybroker-data)"],
    }
    for argv, shown in expected.items():
        done = run(*argv, "--help")
        assert done.returncode == 0, done.stderr
        text = " ".join(done.stdout.decode().split())   # unwrap the columns
        for default in shown:
            assert default in text, (argv, default, text)
        assert "(default: None)" not in text, argv


def test_help_names_the_bootstrap_variable():
    done = run("consume", "--help", bootstrap_env="10.0.0.7:9092")
    text = " ".join(done.stdout.decode().split())
    assert f"(default: 10.0.0.7:9092, from ${cli.BOOTSTRAP_ENV})" in text


# --- $PYBROKER_BOOTSTRAP ----------------------------------------------------------------

def test_bootstrap_from_the_environment(broker):
    env = broker.bootstrap
    done = run("produce", "from-env", bootstrap_env=env, input=b"one\ntwo\nthree\n")
    assert done.returncode == 0, done.stderr
    done = run("consume", "from-env", "--exit", bootstrap_env=env)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [b"one", b"three", b"two"]
    assert b"from-env\t" in run("topics", "list", bootstrap_env=env).stdout

    # the flag wins over the variable
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        dead = "127.0.0.1:%d" % bound.getsockname()[1]
        done = run("consume", "from-env", "--exit", "--bootstrap", broker.bootstrap,
                   bootstrap_env=dead)
        assert done.returncode == 0 and len(done.stdout.splitlines()) == 3, done.stderr
        # and without the flag the variable is what is used
        assert_one_line(run("consume", "from-env", "--exit", bootstrap_env=dead), 1,
                        dead.encode())


# --- Ctrl-C -----------------------------------------------------------------------------

def test_ctrl_c_during_produce_prints_what_was_sent(broker):
    b = ["--bootstrap", broker.bootstrap]
    broker.create_topic("interrupted", 1)
    proc = subprocess.Popen([*PYBROKER, "produce", "interrupted", *b], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
                            preexec_fn=_interruptible)
    try:
        proc.stdin.write(b"".join(b"line %d\n" % i for i in range(10)))
        proc.stdin.flush()
        # all ten are in the log (the pipe stays open: the producer waits for more)
        seen = run("consume", "interrupted", "--count", "10", *b)
        assert seen.stdout.splitlines() == [b"line %d" % i for i in range(10)], seen.stderr
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
        err = proc.stderr.read()
    finally:
        proc.stdin.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 130, err
    assert b"Traceback" not in err, err
    assert err.splitlines() == [b"pybroker produce: interrupted: 10 messages sent to "
                                b"interrupted"], err


def test_ctrl_c_during_consume_prints_what_was_read(broker):
    b = ["--bootstrap", broker.bootstrap]
    broker.create_topic("read-then-stopped", 1)
    assert run("produce", "read-then-stopped", *b,
               input=b"".join(b"m%d\n" % i for i in range(5))).returncode == 0
    proc = subprocess.Popen([*PYBROKER, "consume", "read-then-stopped", *b],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
                            preexec_fn=_interruptible)
    try:
        lines = [proc.stdout.readline() for _ in range(5)]   # then it waits for more
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert lines == [b"m%d\n" % i for i in range(5)]
    assert rc == 130, err
    assert err.splitlines() == [b"pybroker consume: interrupted: 5 messages read"], err
