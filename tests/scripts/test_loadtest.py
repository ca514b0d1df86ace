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
