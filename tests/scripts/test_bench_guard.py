"""scripts/bench-guard (bench/guard.py) on synthetic pytest-benchmark JSON files: the ratio
to the floor in the same file is judged, not the raw time. Deterministic: no timing."""
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench-guard"


def _load_guard():
    spec = importlib.util.spec_from_file_location("bench_guard_under_test",
                                                  ROOT / "bench" / "guard.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


guard = _load_guard()


def bench(name, group, role, median, **extra):
    """One benchmark entry as pytest-benchmark's --benchmark-json writes it."""
    test = name.split("[")[0]
    return {"group": group, "name": name, "fullname": f"bench/test_bench_x.py::{name}",
            "param": name[len(test) + 1:-1] if "[" in name else None,
            "extra_info": {"role": role, "bytes": 100, **extra},
            "stats": {"min": median * 0.9, "max": median * 2, "mean": median * 1.1,
                      "median": median, "rounds": 100, "iqr": median * 0.1}}


def run_file(*benches):
    return {"machine_info": {}, "commit_info": {}, "datetime": "2026-12-03T00:00:00",
            "version": "5.2.3", "benchmarks": list(benches)}


def append_run(path_s, floor_s, ref_s=None):
    out = [bench("test_append_tuned[50x200B]", "append 50x200B", "path", path_s),
           bench("test_os_write[50x200B]", "append 50x200B", "floor", floor_s)]
    if ref_s is not None:
        out.append(bench("test_core_append[50x200B]", "append 50x200B", "reference", ref_s))
    return run_file(*out)


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def guard_cli(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def rows(report):
    return {r.name.split("::")[-1]: r for r in report.rows}


def test_a_ratio_change_is_flagged():
    base = guard.load_data(append_run(10e-6, 5e-6, 8e-6))
    new = guard.load_data(append_run(20e-6, 5e-6, 8e-6))   # the path doubled, floor did not
    report = guard.compare(base, new)
    by = rows(report)
    assert by["test_append_tuned[50x200B]"].status == "FLAGGED"
    assert by["test_append_tuned[50x200B]"].change == pytest.approx(1.0)
    assert by["test_core_append[50x200B]"].status == "ok"
    assert by["test_os_write[50x200B]"].status == "floor"
    assert [r.name for r in report.flagged] == ["bench/test_bench_x.py::test_append_tuned[50x200B]"]


def test_a_common_slowdown_of_floor_and_benchmark_is_not_flagged():
    base = guard.load_data(append_run(10e-6, 5e-6, 8e-6))
    new = guard.load_data(append_run(21e-6, 10.5e-6, 16.8e-6))  # the machine: all 2.1x
    report = guard.compare(base, new)
    assert report.flagged == []
    by = rows(report)
    assert by["test_append_tuned[50x200B]"].change == pytest.approx(0.0)
    assert by["test_os_write[50x200B]"].change == pytest.approx(1.1)  # shown, not judged
    assert by["test_os_write[50x200B]"].status == "floor"


def test_a_floor_is_never_flagged_even_when_it_alone_slows_down():
    base = guard.load_data(append_run(10e-6, 5e-6))
    new = guard.load_data(append_run(10e-6, 50e-6))
    report = guard.compare(base, new)
    assert report.flagged == []
    assert rows(report)["test_os_write[50x200B]"].status == "floor"
    assert rows(report)["test_append_tuned[50x200B]"].status == "faster"
    assert guard.compare(base, new, both=True).flagged  # --both flags the other way too


def test_threshold_is_configurable_and_strictly_exceeded():
    base = guard.load_data(append_run(10e-6, 5e-6))
    new = guard.load_data(append_run(12e-6, 5e-6))    # +20%
    assert guard.compare(base, new).flagged == []
    assert len(guard.compare(base, new, threshold=0.10).flagged) == 1
    assert guard.parse_threshold("10%") == guard.parse_threshold("10") == pytest.approx(0.10)


def test_a_missing_floor_is_reported_clearly(tmp_path):
    base = write(tmp_path, "base.json", append_run(10e-6, 5e-6))
    no_floor = append_run(30e-6, 5e-6)
    no_floor["benchmarks"] = [b for b in no_floor["benchmarks"]
                              if b["extra_info"]["role"] != "floor"]
    new = write(tmp_path, "new.json", no_floor)
    report = guard.compare(guard.load(str(base)), guard.load(str(new)))
    row = rows(report)["test_append_tuned[50x200B]"]
    assert row.status == "no floor" and row.change is None
    assert "'append 50x200B'" in row.note and "NEW" in row.note and "BASE" not in row.note
    assert rows(report)["test_os_write[50x200B]"].status == "only in BASE"

    done = guard_cli(base, new)
    assert done.returncode == 0, done.stdout + done.stderr  # not judged is not flagged...
    assert "no floor" in done.stdout and "1 not judged: no floor" in done.stdout
    assert "test_append_tuned[50x200B]: not judged, group 'append 50x200B' has no floor" \
        in done.stderr
    strict = guard_cli(base, new, "--strict")
    assert strict.returncode == 1                            # ...unless --strict


def test_several_floors_are_combined_by_geometric_mean():
    def run(path_s):
        return guard.load_data(run_file(
            bench("test_p[a]", "g a", "path", path_s),
            bench("test_f1[a]", "g a", "floor", 1e-6),
            bench("test_f2[a]", "g a", "floor", 4e-6)))
    report = guard.compare(run(2e-6), run(2e-6))
    assert rows(report)["test_p[a]"].base_ratio == pytest.approx(1.0)  # 2 / sqrt(1 * 4)


def test_groups_are_separate():
    def run(p1, p2):
        return guard.load_data(run_file(
            bench("test_p[1KiB]", "crc 1KiB", "path", p1),
            bench("test_f[1KiB]", "crc 1KiB", "floor", 1e-6),
            bench("test_p[1MiB]", "crc 1MiB", "path", p2),
            bench("test_f[1MiB]", "crc 1MiB", "floor", 2e-6)))
    report = guard.compare(run(2e-6, 4e-6), run(2e-6, 8e-6))
    assert [r.name.split("::")[-1] for r in report.flagged] == ["test_p[1MiB]"]


def test_cli_table_and_exit_status(tmp_path):
    base = write(tmp_path, "base.json", append_run(10e-6, 5e-6, 8e-6))
    same = write(tmp_path, "same.json", append_run(20e-6, 10e-6, 16e-6))
    slow = write(tmp_path, "slow.json", append_run(20e-6, 5e-6, 8e-6))
    ok = guard_cli(base, same)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 flagged of 2 judged" in ok.stdout
    header = ok.stdout.splitlines()[0].split()
    assert header[:3] == ["benchmark", "group", "role"] and header[-1] == "status"
    bad = guard_cli(base, slow)
    assert bad.returncode == 1
    flagged = [line for line in bad.stdout.splitlines() if "FLAGGED" in line]
    assert len(flagged) == 1 and "test_append_tuned[50x200B]" in flagged[0]
    assert "+100.0%" in flagged[0]
    assert guard_cli(base, slow, "--threshold", "150%").returncode == 0
    only = guard_cli(base, slow, "--flagged-only")
    assert [line.split() for line in only.stdout.splitlines() if "FLAGGED" in line] == \
        [line.split() for line in flagged]
    assert "test_core_append" not in only.stdout and "test_os_write" not in only.stdout


def test_unreadable_or_foreign_files_exit_2(tmp_path):
    base = write(tmp_path, "base.json", append_run(10e-6, 5e-6))
    missing = guard_cli(base, tmp_path / "nope.json")
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    assert "Traceback" not in missing.stderr
    foreign = write(tmp_path, "foreign.json", {"producer": {}})
    done = guard_cli(base, foreign)
    assert done.returncode == 2 and "not a pytest-benchmark JSON file" in done.stderr
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    assert guard_cli(base, garbage).returncode == 2
    bad = guard_cli(base, base, "--threshold", "lots")
    assert bad.returncode == 2 and "--threshold" in bad.stderr


def test_slowdown_recorded_by_the_bench_suite_is_named():
    base = guard.load_data(append_run(10e-6, 5e-6))
    slowed = append_run(20e-6, 5e-6)
    slowed["benchmarks"][0]["extra_info"]["slowdown"] = 2
    row = rows(guard.compare(base, guard.load_data(slowed)))["test_append_tuned[50x200B]"]
    assert row.status == "FLAGGED" and "PYBROKER_BENCH_SLOWDOWN x2" in row.note


def test_a_paired_floor_is_preferred_to_the_group_floor():
    def run(path_s, paired_s, group_floor_s):
        data = append_run(path_s, group_floor_s)
        data["benchmarks"][0]["extra_info"]["paired_floor"] = {
            "median": paired_s, "min": paired_s, "mean": paired_s, "rounds": 25}
        return guard.load_data(data)
    # the machine slowed 2x while the path ran (its paired floor saw it), not when the
    # floor's own test ran: judged by the paired floor, nothing changed
    report = guard.compare(run(10e-6, 5e-6, 5e-6), run(20e-6, 10e-6, 5e-6))
    row = rows(report)["test_append_tuned[50x200B]"]
    assert row.floor == "paired" and row.change == pytest.approx(0.0) and row.status == "ok"
    # paired in one file only: both fall back to the group's floor
    only_one = guard.compare(guard.load_data(append_run(10e-6, 5e-6)), run(20e-6, 10e-6, 5e-6))
    row = rows(only_one)["test_append_tuned[50x200B]"]
    assert row.floor == "group" and row.status == "FLAGGED"
    # a paired floor alone (no floor benchmark in the group) is enough
    alone = run(10e-6, 5e-6, 5e-6)
    del alone["bench/test_bench_x.py::test_os_write[50x200B]"]
    assert rows(guard.compare(alone, alone))["test_append_tuned[50x200B]"].status == "ok"


def test_a_benchmark_s_own_threshold_and_baselines_that_are_not_judged():
    def run(path_s, zlib_s):
        data = append_run(path_s, 5e-6)
        data["benchmarks"][0]["extra_info"]["guard_threshold"] = 1.5
        data["benchmarks"].append(bench("test_zlib_crc32[50x200B]", "append 50x200B",
                                        "reference", zlib_s, guard=False))
        return guard.load_data(data)
    report = guard.compare(run(10e-6, 1e-6), run(24e-6, 9e-6))   # +140%, +800%
    by = rows(report)
    assert by["test_append_tuned[50x200B]"].status == "ok"
    assert by["test_append_tuned[50x200B]"].limit == pytest.approx(1.5)
    assert by["test_zlib_crc32[50x200B]"].status == "baseline"
    assert by["test_zlib_crc32[50x200B]"].change == pytest.approx(8.0)
    assert report.flagged == []
    worse = guard.compare(run(10e-6, 1e-6), run(26e-6, 1e-6))     # +160%: beyond its own
    assert [r.name.split("::")[-1] for r in worse.flagged] == ["test_append_tuned[50x200B]"]
    # a benchmark's own threshold never lowers the guard's
    loose = guard.compare(run(10e-6, 1e-6), run(26e-6, 1e-6), threshold=2.0)
    assert loose.flagged == [] and rows(loose)["test_append_tuned[50x200B]"].limit == 2.0
