"""scripts/replication-bench with tiny sizes: it runs to the end and its JSON carries
every figure, each a positive number. No time is asserted (figures are measured, never
asserted in tests): only that each measurement produced one."""
import json
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "replication-bench"
# three brokers and a ZooKeeper, 2 x 2000 messages, two faults each followed by a restart
# and a wait for the ISR: about 20 s here; the bound is for a loaded machine
TIMEOUT_S = 300


def test_tiny_run_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--messages", "2000", "--rounds", "1",
                           "--failovers", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["session_timeout_ms"] == 6000 and result["zookeeper_tick_ms"] > 0

    t = result["throughput"]
    assert [r["rf"] for r in t["runs"]] == [1, 3]
    for run in t["runs"]:
        assert run["acked"] == 2000 and run["errors"] == 0, run
        assert run["msgs_per_s"] > 0 and run["broker_cpu_us_per_msg"] > 0, run
    for key in ("rf1_msgs_per_s", "rf3_msgs_per_s", "ratio_rf3_rf1",
                "rf1_broker_cpu_us_per_msg", "rf3_broker_cpu_us_per_msg"):
        assert t[key] > 0, (key, t[key])
    lag = t["runs"][1]["replica_lag"]
    assert lag["samples"] > 0 and lag["max_messages"] >= 0, lag
    assert t["replica_lag_max_messages"] >= 0

    f = result["failover"]
    assert f["session_timeout_ms"] == 6000
    assert [x["kind"] for x in f["faults"]] == ["kill9", "sigterm"]
    for fault in f["faults"]:
        assert "error" not in fault, fault
        assert fault["first_ack_s"] > 0 and fault["longest_ack_gap_s"] > 0, fault
        assert fault["leader_after"] != fault["leader_before"], fault
        assert fault["epoch_after"] > fault["epoch_before"], fault
    for kind in ("kill9", "sigterm"):
        assert f[kind]["max_s"] > 0 and f[kind]["target_s"] > 0
    assert f["producer"]["acked"] > 0 and f["producer"]["failed"] == 0
    assert "RF3/RF1" in done.stdout and "kill9" in done.stdout and "sigterm" in done.stdout
