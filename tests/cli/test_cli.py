"""The pybroker command line against a real broker: every command, its output and its
exit code, and the refusals a person must be able to act on."""
import json
import re
import socket
import subprocess
import sys
import time

PYBROKER = [sys.executable, "-m", "pybroker"]


def run(*args, input=None, timeout=60):
    return subprocess.run([*PYBROKER, *map(str, args)], input=input, capture_output=True,
                          timeout=timeout)


def test_every_command_has_help():
    for cmd in (["--help"], ["serve", "--help"], ["stats", "--help"], ["zk", "--help"],
                ["topics", "--help"], ["topics", "create", "--help"], ["produce", "--help"],
                ["consume", "--help"]):
        done = run(*cmd)
        assert done.returncode == 0, cmd
        assert b"usage: pybroker" in done.stdout


def test_topics_lifecycle(broker):
    b = ["--bootstrap", broker.bootstrap]
    done = run("topics", "create", "cli-t", "--partitions", "3", "--config",
               "retention.ms=60000", *b)
    assert done.returncode == 0, done.stderr
    again = run("topics", "create", "cli-t", *b)
    assert again.returncode == 1 and b"TOPIC_ALREADY_EXISTS" in again.stderr
    listed = run("topics", "list", *b)
    assert b"cli-t\t3" in listed.stdout
    described = run("topics", "describe", "cli-t", *b).stdout.decode()
    assert re.search(r"3 partition\(s\), topic id [A-Za-z0-9_-]{22}\n", described)
    assert "retention.ms=60000  (topic override)" in described
    assert run("topics", "alter", "cli-t", "--config", "flush.ms=7", *b).returncode == 0
    deadline = time.monotonic() + 15
    while "flush.ms=7" not in run("topics", "describe", "cli-t", *b).stdout.decode():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    bad = run("topics", "alter", "cli-t", "--config", "flush.ms=soon", *b)
    assert bad.returncode == 1 and b"flush.ms" in bad.stderr
    illegal = run("topics", "create", "bad/name", *b)
    assert illegal.returncode == 1 and b"INVALID_TOPIC_EXCEPTION" in illegal.stderr
    assert run("topics", "delete", "cli-t", *b).returncode == 0
    gone = run("topics", "delete", "cli-t", *b)
    assert gone.returncode == 1 and b"UNKNOWN_TOPIC_OR_PARTITION" in gone.stderr


def test_produce_and_consume_round_trip(broker, tmp_path):
    b = ["--bootstrap", broker.bootstrap]
    assert run("topics", "create", "lines", "--partitions", "2", *b).returncode == 0
    lines = b"".join(b"key%d:value %d\n" % (i % 4, i) for i in range(300))
    done = run("produce", "lines", "--key-separator", ":", *b, input=lines)
    assert done.returncode == 0, done.stderr
    out = run("consume", "lines", "--exit", "--format", "json", *b)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted(r["value"] for r in records) == sorted(f"value {i}" for i in range(300))
    partition_of = {}
    for r in records:  # each key in one partition, in order within it
        assert partition_of.setdefault(r["key"], r["partition"]) == r["partition"]
    for p in (0, 1):
        offsets = [r["offset"] for r in records if r["partition"] == p]
        assert offsets == sorted(offsets)

    file = tmp_path / "more.txt"
    file.write_bytes(b"".join(b"file line %d\n" % i for i in range(1000)))
    done = run("produce", "from-file", "--file", file, "--progress", "--partition", "0", *b)
    assert done.returncode == 0, done.stderr
    assert b"100.0%" in done.stderr
    raw = run("consume", "from-file", "--exit", *b).stdout.splitlines()
    assert raw == [b"file line %d" % i for i in range(1000)]
    some = run("consume", "from-file", "--from", "990", "--count", "3", *b).stdout.splitlines()
    assert some == [b"file line 990", b"file line 991", b"file line 992"]
    assert run("consume", "from-file", "--from", "latest", "--exit", *b).stdout == b""
    later = run("consume", "from-file", "--from", f"time:{int(time.time() * 1000) + 60000}",
                "--exit", *b)
    assert later.returncode == 0 and later.stdout == b""


def test_consume_unknown_topic_fails_clearly(broker):
    done = run("consume", "never-there", "--exit", "--bootstrap", broker.bootstrap)
    assert done.returncode == 1 and b"never-there" in done.stderr


def test_stats_and_zk_read_a_running_broker(broker):
    run("produce", "seen", "--bootstrap", broker.bootstrap, input=b"x\n")
    stats = run("stats", "--data-dir", broker.data_dir)
    assert stats.returncode == 0
    assert b"serving" in stats.stdout and b"seen-0" in stats.stdout
    workers, partitions = stats.stdout.decode().split("\n\n")
    header, *rows = workers.splitlines()
    assert header.split()[-3:] == ["parts", "opening", "offline"]
    assert len(rows) == 2
    for line in rows:
        # heartbeat and loop ages: both monotonic, so never negative (a wall-clock
        # heartbeat read against the monotonic clock, or the reverse, would be)
        ages = [float(a[:-1]) for a in re.findall(r"(-?[0-9.]+s) ago", line)]
        assert len(ages) == 2 and all(a >= 0 for a in ages), line
        assert line.split()[-2:] == ["0", "0"]  # nothing opening, nothing offline
    seen = next(line for line in partitions.splitlines() if line.startswith("seen-0 "))
    assert seen.split()[2] == "online"
    zk = run("zk", "--zookeeper", broker.zk_connect)
    assert zk.returncode == 0
    text = zk.stdout.decode()
    assert "brokers:" in text and "  seen: " in text
    assert run("stats", "--data-dir", "/nonexistent").returncode == 1


def test_serve_refusals_name_the_problem(tmp_path, zk_connect):
    def serve(*extra):
        return run("serve", "--data-dir", tmp_path / "d", "--zookeeper", zk_connect,
                   "--workers", "1", *extra, timeout=60)

    unknown = serve("--set", "no.such.key=1")
    assert unknown.returncode == 2 and b"no.such.key" in unknown.stderr
    bad = serve("--set", "num.partitions=zero")
    assert bad.returncode == 2 and b"num.partitions" in bad.stderr and b"zero" in bad.stderr
    props = tmp_path / "broker.properties"
    props.write_text("num.partitions=0\n")
    out_of_range = serve("--config", props)
    assert out_of_range.returncode == 2 and b">= 1" in out_of_range.stderr

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        in_use = serve("--port", port)
        as_json = serve("--port", port, "--log-format", "json")
    assert in_use.returncode == 2 and b"in use" in in_use.stderr
    entries = [json.loads(line) for line in as_json.stderr.splitlines()]
    assert any(e["level"] == "ERROR" and "in use" in e["msg"] for e in entries)

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "meta.properties").write_text("version=0\nbroker.id=7\n")
    other = run("serve", "--data-dir", tmp_path / "other", "--zookeeper", zk_connect,
                "--workers", "1", "--broker-id", "3")
    assert other.returncode == 2 and b"broker.id 7" in other.stderr

    # a data dir nobody may write, root included: a read-only mount
    locked = tmp_path / "locked"
    locked.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(locked)],
                             capture_output=True, text=True)
    assert mounted.returncode == 0, f"cannot mount a tmpfs (tests run as root): {mounted.stderr}"
    try:
        denied = run("serve", "--data-dir", locked, "--zookeeper", zk_connect, "--workers", "1")
    finally:
        subprocess.run(["umount", "-l", str(locked)], check=True)
    assert denied.returncode == 2
    assert b"not usable" in denied.stderr and b"Read-only file system" in denied.stderr
