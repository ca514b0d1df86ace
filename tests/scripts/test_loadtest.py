"""scripts/loadtest against a real broker: processes, JSON, plot, compare, refusals."""
import json
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "loadtest"


def loadtest(*args, timeout=120):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def test_processes_json_plot_and_compare(broker, tmp_path):
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    png = tmp_path / "run.png"
    done = loadtest("--bootstrap", broker.bootstrap, "--messages", 4000, "--partitions", 2,
                    "--producers", 2, "--consumers", 2, "--json", first, "--plot", png)
    assert done.returncode == 0, done.stderr
    result = json.loads(first.read_text())
    assert result["producer"]["messages"] == 4000 and result["producer"]["errors"] == 0
    assert result["consumer"]["messages"] == 4000
    assert result["producers"] == 2 and result["consumers"] == 2
    assert result["producer"]["msgs_per_s"] > 0 and result["producer"]["latency_ms_p99"] >= 0
    assert result["broker_pids"], "a local broker's processes should be found"
    assert "broker_cpu_s_per_million" in result["producer"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "produce:" in done.stdout and "consume:" in done.stdout

    again = loadtest("--bootstrap", broker.bootstrap, "--duration", 1, "--json", second,
                     "--compare", first)
    assert again.returncode == 0, again.stderr
    assert "produce msg/s" in again.stdout and "%" in again.stdout
    assert json.loads(second.read_text())["consumer"]["messages"] == \
        json.loads(second.read_text())["producer"]["messages"]


def test_more_consumers_than_partitions_is_refused():
    done = loadtest("--consumers", 3, "--partitions", 2)
    assert done.returncode == 2 and "--partitions" in done.stderr


# --- run metadata, acks all, progress, dead addresses, windows ---------------------------

import importlib.machinery  # noqa: E402
import importlib.util  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

ROOT = SCRIPT.parents[1]


def _load_script():
    loader = importlib.machinery.SourceFileLoader("loadtest_under_test", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


lt = _load_script()


def test_acks_all_json_metadata_windows_and_progress(broker, tmp_path):
    out = tmp_path / "all.json"
    done = loadtest("--bootstrap", broker.bootstrap, "--messages", 3000, "--acks", "all",
                    "--json", out, "--progress")
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["acks"] == "all"
    assert result["producer"]["messages"] == 3000 and result["consumer"]["messages"] == 3000
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", result["timestamp"])
    assert abs(time.time() - time.mktime(time.strptime(result["timestamp"],
                                                      "%Y-%m-%dT%H:%M:%SZ")) + time.timezone) < 600
    import pybroker
    assert result["pybroker_version"] == pybroker.__version__
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    if head.returncode == 0:
        assert result["git_commit"] == head.stdout.strip()
        assert result["git_dirty"] in (True, False)
    else:
        assert result["git_commit"] is None
    machine = result["machine"]
    assert machine["cpu_count"] >= 1 and machine["kernel"]
    assert "cpu_model" in machine
    assert result["window_s"] == 0.1
    for section in ("producer", "consumer"):
        series = result[section]["throughput_over_time"]
        assert series, section
        starts = [t for t, _ in series]
        assert starts == [round(i * 0.1, 6) for i in range(len(series))]
        assert all(rate >= 0 for _, rate in series)
    latency = result["producer"]["latency_over_time"]
    assert latency and all(len(w) == 4 and w[1] <= w[2] for w in latency)
    # the progress line: rate and ETA, one plain line per update when not a terminal
    lines = [line for line in done.stderr.splitlines() if line.startswith("produce")]
    assert lines and "msg/s" in lines[-1] and "ETA" in lines[-1]
    assert "\r" not in done.stderr


def test_acks_values_accepted_and_normalised():
    assert lt.parse_args(["--acks", "all"]).acks == "all"
    assert lt.parse_args(["--acks", "-1"]).acks == "all"
    assert lt.parse_args(["--acks", "0"]).acks == "0"
    assert lt.parse_args([]).acks == "1"
    bad = loadtest("--acks", "2")
    assert bad.returncode == 2 and "--acks" in bad.stderr


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: nothing listens there


def test_dead_address_is_one_line_and_exit_2_at_once():
    port = _dead_port()
    started = time.monotonic()
    done = loadtest("--bootstrap", f"127.0.0.1:{port}", "--messages", 10, timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "Traceback" not in done.stderr
    assert lines[0].startswith("loadtest: no broker reachable")
    assert elapsed < 20, elapsed  # not the 30 s of a TimeoutError


def test_bootstrap_without_port_is_refused():
    done = loadtest("--bootstrap", "127.0.0.1")
    assert done.returncode == 2 and "host:port" in done.stderr and "Traceback" not in done.stderr


def test_listener_that_is_not_kafka_is_refused_with_exit_2():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)  # accepts (the kernel does), never answers
        done = loadtest("--bootstrap", f"127.0.0.1:{server.getsockname()[1]}", timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Kafka broker answered" in lines[0], done.stderr


# windows on synthetic samples: BUCKET_S buckets (absolute numbers) into 100 ms windows

def _bucket(t: float) -> int:
    return round(t / lt.BUCKET_S)  # t on a bucket boundary in these tests


def test_windows_are_fixed_and_evenly_spaced():
    start = 1_000_000.0
    buckets = {}
    for i in range(100):             # 1 s at 1,000 msgs per 10 ms bucket: 100 k msgs/s
        buckets[_bucket(start + i * 0.01)] = 1000
    series = lt.window_rates(buckets, start, start + 1.0)
    assert [t for t, _ in series] == [round(i * 0.1, 6) for i in range(10)]
    assert [r for _, r in series] == pytest.approx([100_000] * 10)


def test_two_processes_reporting_microseconds_apart_make_no_spike():
    start = 2_000_000.0
    buckets = {}
    for proc in range(2):             # two consumers, each 50 k msgs/s, buckets coinciding
        for i in range(50):
            b = _bucket(start + i * 0.01 + proc * 1e-6)
            buckets[b] = buckets.get(b, 0) + 500
    series = lt.window_rates(buckets, start, start + 0.5)
    assert len(series) == 5
    assert max(r for _, r in series) == pytest.approx(100_000)
    assert min(r for _, r in series) == pytest.approx(100_000)


def test_a_short_tail_joins_the_window_before_and_a_long_one_stands():
    start = 3_000_000.0
    buckets = {_bucket(start + i * 0.01): 10 for i in range(21)}   # 0.21 s of 1,000/s
    short = lt.window_rates(buckets, start, start + 0.21)
    assert [t for t, _ in short] == [0.0, 0.1]          # the 10 ms tail folded in
    assert short[-1][1] == pytest.approx(110 / 0.11)    # 10 buckets + the tail's one
    buckets = {_bucket(start + i * 0.01): 10 for i in range(27)}
    long = lt.window_rates(buckets, start, start + 0.27)
    assert [t for t, _ in long] == [0.0, 0.1, 0.2]
    assert long[-1][1] == pytest.approx(70 / 0.07)
    assert lt.window_rates({_bucket(start): 5}, start, start + 0.02) == \
        [[0.0, pytest.approx(250.0)]]
    assert lt.window_rates({}, start, start) == [[0.0, 0.0]]


def test_latency_windows_give_percentiles_per_window():
    start = 4_000_000.0
    samples = [(start + 0.01 + i * 0.0001, 0.001) for i in range(100)]       # window 0: 1 ms
    samples += [(start + 0.15, 0.002)] * 99 + [(start + 0.16, 0.050)]        # window 1
    series = lt.window_latencies(samples, start, start + 0.2)
    assert [w[0] for w in series] == [0.0, 0.1]
    assert series[0][1:] == [pytest.approx(1.0), pytest.approx(1.0), 100]
    assert series[1][1] == pytest.approx(2.0) and series[1][2] == pytest.approx(50.0)
    assert series[1][3] == 100


def test_progress_line_has_rate_and_eta():
    class Sink:
        def __init__(self):
            self.text = ""

        def write(self, text):
            self.text += text

        def flush(self):
            pass

        def isatty(self):
            return False

    bar = lt.Progress("produce", 1000, True, stream=Sink())
    line = bar.line(250, now=bar.start + 1.0)   # 250/s, 750 to go: 3 s
    assert "250 msg/s" in line and "ETA     3s" in line and "250/1000" in line
    timed = lt.Progress("produce", 0, True, duration=90, stream=Sink())
    assert "ETA  1m00s" in timed.line(100, now=timed.start + 30)
    quiet = lt.Progress("produce", 1000, False, stream=Sink())
    quiet.update(10)
    assert quiet.stream.text == ""


def test_run_metadata_helpers(tmp_path):
    assert lt.git_commit(str(tmp_path)) == (None, None)   # not a git checkout
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", lt.utc_timestamp(0))
    assert lt.utc_timestamp(0) == "1970-01-01T00:00:00Z"
    info = lt.machine()
    assert set(info) >= {"cpu_count", "cpu_model", "kernel"}
