"""kcat (librdkafka, the Debian package) against a real 2-worker broker: metadata,
producing lines from stdin, consuming them back."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

KCAT_TIMEOUT_S = 120
LINES = 10_000


def kcat(broker, *args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """Run kcat against the broker; a missing kcat is an install error, not a skip."""
    path = shutil.which("kcat")
    if path is None:
        pytest.fail("kcat is not installed (Debian: apt-get install -y kcat)", pytrace=False)
    result = subprocess.run([path, "-b", broker.bootstrap, *args], input=stdin,
                            capture_output=True, timeout=KCAT_TIMEOUT_S)
    assert result.returncode == 0, (f"kcat {' '.join(args)} exited {result.returncode}: "
                                    f"{result.stderr.decode(errors='replace')}")
    return result


def test_metadata_lists_both_nodes_and_a_controller(broker):
    out = kcat(broker, "-L").stdout.decode()
    # " broker 0 at 127.0.0.1:20000 (controller)"
    listed = {int(node): int(port)
              for node, port in re.findall(r"broker (\d+) at 127\.0\.0\.1:(\d+)", out)}
    assert listed == dict(zip(broker.node_ids, broker.ports)), out
    controllers = re.findall(r"broker (\d+) at \S+ \(controller\)", out)
    assert len(controllers) == 1 and int(controllers[0]) in broker.node_ids, out


def test_produce_lines_from_stdin_and_consume_them_back(broker):
    topic = "kcat-lines"
    # distinct, varied lengths (1..~60 bytes) so a lost, duplicated or reordered line shows
    lines = [f"line-{i:05d}-" + "x" * (i % 50) for i in range(LINES)]
    kcat(broker, "-P", "-t", topic, stdin=("\n".join(lines) + "\n").encode())

    out = kcat(broker, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-e", "-q").stdout
    assert out.decode().splitlines() == lines


def test_consume_with_offsets_shows_dense_offsets(broker):
    topic = "kcat-offsets"
    kcat(broker, "-P", "-t", topic, "-p", "0", stdin=b"a\nb\nc\n")
    out = kcat(broker, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-e", "-q",
               "-f", "%o:%s\n").stdout.decode()
    assert out.splitlines() == ["0:a", "1:b", "2:c"]


def test_keys_and_headers_round_trip(broker):
    topic = "kcat-keyed"
    kcat(broker, "-P", "-t", topic, "-p", "0", "-K", ":", "-H", "origin=kcat", "-H", "n=1",
         stdin=b"k1:v1\nk2:v2\nk3:\n")
    out = kcat(broker, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-e", "-q",
               "-f", "%k|%s|%h\n").stdout.decode()
    assert out.splitlines() == ["k1|v1|origin=kcat,n=1", "k2|v2|origin=kcat,n=1",
                                "k3||origin=kcat,n=1"]
