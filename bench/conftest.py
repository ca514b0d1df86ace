"""Shared pieces of the benchmark suite, as fixtures (`record`, `bench_dir`,
`make_bench_dir`), and the throughput table printed after a run (scripts/bench-report
prints the same table from a --benchmark-json file).

Every benchmark belongs to a group, one operation at one parameter (size), holding
the measured paths and the baselines they stand beside, all measured in the same run:
- role "path":      pybroker code under test;
- role "floor":     the raw syscall or memory operation the path cannot beat
                    (os.write of the same bytes, a memcpy, os.sendfile, a pread);
- role "reference": the obvious alternative the path must earn its place against
                    (zlib.crc32, bisect on a Python list, pread + sendall).
`extra_info` records the work one call does (bytes, messages or lookups), so the
table reads as MB/s, msgs/s or ns/op rather than seconds. Nothing here asserts on time.
"""
from __future__ import annotations

import functools
import os
import shutil
import statistics
import tempfile
import time

import pytest

# The real broker and ZooKeeper fixtures of tests/ (bench/ is run on its own, so its
# conftest brings them in; pytest_plugins is only honoured in the root conftest).
from pybroker.testing.broker_plugin import *  # noqa: F401,F403,E402
from pybroker.testing.zk_plugin import *  # noqa: F401,F403,E402

ROLES = ("path", "floor", "reference")


def _record(benchmark, operation: str, role: str, *, nbytes: int = 0, messages: int = 0,
            lookups: int = 0, targets: tuple = (), group_param: str | None = None,
            floor=None, floor_max_factor: int = 8, guard: bool = True,
            guard_threshold: float | None = None, **info) -> None:
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {ROLES}")
    if not guard:
        info["guard"] = False
    if guard_threshold is not None:
        info["guard_threshold"] = guard_threshold
    if not (nbytes or messages or lookups):
        raise ValueError(f"{benchmark.name}: record bytes, messages or lookups per call")
    param = benchmark.param if group_param is None else group_param
    benchmark.group = f"{operation} {param}" if param else operation
    benchmark.extra_info.update(role=role, bytes=nbytes, messages=messages,
                                lookups=lookups, targets=list(targets), **info)
    if floor is not None:
        benchmark._pybroker_floor = floor
        benchmark._pybroker_floor_max_factor = floor_max_factor


@pytest.fixture
def record(benchmark):
    """record(operation, role, nbytes=, messages=, lookups=, targets=, group_param=,
    **extra): the group (operation + the test's parameter id, so "crc 64KiB", or +
    group_param when the parameter is not a size but the role), the role, and the work
    done by ONE call of the benchmarked function. targets: dicts such as
    {"metric": "MB/s", "min": 5000}, {"metric": "ns/op", "max": 2000} or
    {"vs": "os_write", "min": 0.5} (speed relative to the group's benchmark
    test_os_write; 0.5 = "within 2x").
    floor: a callable doing ONE call of the group's floor on the same inputs; it is
    then timed before every round of this benchmark (for about as long as the last
    round took), and its median per call is recorded as extra_info["paired_floor"]:
    the floor measured at the same moments as the benchmark, which is what
    scripts/bench-guard divides by. floor_max_factor caps its calls per round at that
    many times the benchmark's (8: a floor writing to disk must not flood the page
    cache).
    guard=False: the guard shows this benchmark but never judges it (a baseline that
    is not pybroker code: zlib, bisect, pread+sendall; a path with no floor it can
    fairly be divided by).
    guard_threshold: the ratio change (0.25 = 25%) below which the guard does not flag
    this benchmark even when its --threshold is lower: the spread its ratio shows
    between same-commit runs on the 2-core machine."""
    return functools.partial(_record, benchmark)


def _slowdown(node) -> int:
    """The factor PYBROKER_BENCH_SLOWDOWN asks for this test: a comma-separated list of
    test names (test_append_tuned, or test_append_tuned[50x200B] for one variant), each
    optionally =FACTOR (default 2). 1 when the test is not named."""
    for item in filter(None, os.environ.get("PYBROKER_BENCH_SLOWDOWN", "").split(",")):
        name, _, factor = item.strip().partition("=")
        if name in (node.name, node.originalname):
            try:
                value = int(factor or 2)
            except ValueError:
                raise pytest.UsageError(f"PYBROKER_BENCH_SLOWDOWN: {item!r}: the factor "
                                        "must be a whole number") from None
            if value < 1:
                raise pytest.UsageError(f"PYBROKER_BENCH_SLOWDOWN: {item!r}: factor < 1")
            return value
    return 1


def _repeat(fn, factor: int):
    def slowed(*args, **kwargs):
        for _ in range(factor - 1):
            fn(*args, **kwargs)
        return fn(*args, **kwargs)
    return slowed


def _pair_with_floor(benchmark, samples: list) -> None:
    """Before each timed round of the benchmark, time its floor (record(floor=...)) for
    about as long as the benchmark's last round took (at least as many calls as the
    round makes, at most floor_max_factor (8) times that): floor and benchmark then each
    average over a stretch of the same length, so both see the same share of the
    machine (a 9 ms floor before a 700 ms round saw either a quiet moment or a busy
    one). samples gets the floor's seconds per call, one per round."""
    make_runner = benchmark._make_runner
    state = {"round": None, "per_call": None}

    def paired_runner(function, args, kwargs):
        runner = make_runner(function, args, kwargs)
        floor = getattr(benchmark, "_pybroker_floor", None)
        if floor is None:
            return runner
        timer = benchmark._timer

        def paired(loops_range, timer=timer):
            calls = len(loops_range) if loops_range else 1
            if state["round"] and state["per_call"]:  # about as long as the last round
                most = calls * getattr(benchmark, "_pybroker_floor_max_factor", 8)
                calls = max(calls, min(most, round(state["round"] / state["per_call"])))
            cpu = time.thread_time()
            start = timer()
            for _ in range(calls):
                floor()
            state["per_call"] = (timer() - start) / calls
            samples.append(state["per_call"])
            benchmark.pybroker_floor_cpu = (getattr(benchmark, "pybroker_floor_cpu", 0.0)
                                            + time.thread_time() - cpu)
            result = runner(loops_range, timer)
            state["round"] = result if loops_range else result[0]
            return result
        return paired

    benchmark._make_runner = paired_runner


@pytest.fixture
def benchmark(benchmark, request):
    """pytest-benchmark's fixture, with two additions:
    - a benchmark given a floor (record(floor=...)) has it timed before each of its
      rounds: extra_info["paired_floor"] = the floor's median/min/mean per call over
      the timed rounds (warm-up and calibration calls left out);
    - under PYBROKER_BENCH_SLOWDOWN=test_name[=FACTOR] the named test's benchmarked
      function runs FACTOR times per call while its recorded work stays that of one
      call: a deliberate slowdown, to show that scripts/bench-guard flags it
      (extra_info["slowdown"] records it)."""
    factor = _slowdown(request.node)
    if factor > 1:
        raw, raw_pedantic = benchmark._raw, benchmark._raw_pedantic
        benchmark._raw = lambda fn, *a, **k: raw(_repeat(fn, factor), *a, **k)
        benchmark._raw_pedantic = lambda fn, *a, **k: raw_pedantic(_repeat(fn, factor), *a, **k)
        benchmark.extra_info["slowdown"] = factor
    samples: list[float] = []
    _pair_with_floor(benchmark, samples)
    yield benchmark
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if samples and stats is not None and stats.data:
        kept = sorted(samples[-len(stats.data):])  # the timed rounds' floors
        benchmark.extra_info["paired_floor"] = {
            "median": statistics.median(kept), "min": kept[0],
            "mean": statistics.fmean(kept), "rounds": len(kept)}


def pytest_collection_modifyitems(session, config, items):
    """Within each module, run the tests of one parameter (one group: the path, its
    floor, its references) one after the other, so that a floor is measured next to
    its paths in time, not after every other size: the machine's speed drifts over
    seconds, and scripts/bench-guard divides each benchmark by its floor."""
    first: dict = {}  # module, then (module, parameter id): index of first appearance

    def param(item):
        callspec = getattr(item, "callspec", None)
        return callspec.id if callspec else ""

    for item in items:
        first.setdefault(item.module, len(first))
        first.setdefault((item.module, param(item)), len(first))

    def key(item):
        return first[item.module], first[(item.module, param(item))]

    items[:] = sorted(items, key=key)  # stable: file order within a parameter


def _new_bench_dir(tmp_path_factory, name: str) -> str:
    root = os.environ.get("PYBROKER_BENCH_DIR")
    if root:
        return tempfile.mkdtemp(prefix=f"pybroker-bench-{name}-", dir=root)
    return str(tmp_path_factory.mktemp(name))


@pytest.fixture(scope="session")
def make_bench_dir(tmp_path_factory):
    """make_bench_dir(name): a fresh directory for benchmark files, under
    $PYBROKER_BENCH_DIR (to choose the disk) or pytest's temporary directory. Flushes
    are fdatasyncs, so on a tmpfs the default-policy append variants flatter the log."""
    return functools.partial(_new_bench_dir, tmp_path_factory)


@pytest.fixture
def bench_dir(make_bench_dir, request):
    """A fresh directory for one test, removed afterwards (an unlinked file's dirty
    pages are dropped, never written back, so one benchmark's writes do not slow the
    next)."""
    path = make_bench_dir(request.node.originalname)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- the throughput table ------------------------------------------------------------

def _label(bench: dict) -> str:
    return bench["name"].split("[")[0].removeprefix("test_")


def _rate(bench: dict, unit: str) -> float:
    """Units per second in the median round. The median drops the odd round slowed by
    another process on the machine; benchmarks with periodic costs (fdatasync of a
    flush policy, waits on a full socket) make each round long enough to hold several
    of them, so the median round still pays for them."""
    return bench["extra_info"][unit] / bench["stats"]["median"]


def _common_unit(a: dict, b: dict) -> str | None:
    for unit in ("lookups", "bytes", "messages"):
        if a["extra_info"].get(unit) and b["extra_info"].get(unit):
            return unit
    return None


def _speed(bench: dict, baseline: dict) -> float | None:
    """How many times faster bench is than baseline (> 1: faster), per unit of work."""
    unit = _common_unit(bench, baseline)
    return _rate(bench, unit) / _rate(baseline, unit) if unit else None


def throughput_text(bench: dict) -> str:
    info = bench["extra_info"]
    if info.get("lookups"):
        return f"{1e9 / _rate(bench, 'lookups'):,.0f} ns/op"
    mb_s = f"{_rate(bench, 'bytes') / 1e6:,.0f} MB/s" if info.get("bytes") else ""
    if info.get("cpu_seconds"):  # CPU time of the benchmarking thread, if recorded
        mb_s += f" ({info['cpu_bytes'] / info['cpu_seconds'] / 1e6:,.0f} MB per CPU-s)"
    if info.get("messages"):
        msgs = f"{_rate(bench, 'messages'):,.0f} msgs/s"
        return f"{msgs} ({mb_s})" if mb_s else msgs
    return mb_s


def _metric(bench: dict, name: str) -> float:
    if name == "MB/s":
        return _rate(bench, "bytes") / 1e6
    if name == "msgs/s":
        return _rate(bench, "messages")
    if name == "ns/op":
        return 1e9 / _rate(bench, "lookups")
    raise ValueError(f"unknown target metric {name!r}")


def _num(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:g}"


def _target_text(bench: dict, target: dict, by_label: dict) -> str:
    if "vs" in target:
        other = by_label.get(target["vs"])
        value = _speed(bench, other) if other else None
        what = f"{_num(target['min'])}x {target['vs']}"
        bound, ok = f">= {what}", value is not None and value >= target["min"]
    elif "min" in target:
        value = _metric(bench, target["metric"])
        bound, ok = f">= {_num(target['min'])} {target['metric']}", value >= target["min"]
    else:
        value = _metric(bench, target["metric"])
        bound, ok = f"<= {_num(target['max'])} {target['metric']}", value <= target["max"]
    return f"{bound}: {'met' if ok else 'MISSED'}"


def markdown_table(benchmarks: list[dict]) -> list[str]:
    """One row per measured path and baseline of its group; the path's throughput,
    each baseline's, and the speed ratio (path / baseline, per unit of work)."""
    groups: dict[str, list[dict]] = {}
    for bench in benchmarks:
        if bench.get("stats") and bench["extra_info"].get("role") in ROLES:
            groups.setdefault(bench["group"], []).append(bench)
    lines = ["| benchmark | throughput | baseline | ratio vs baseline | target |",
             "|---|---:|---|---:|---|"]
    for group, members in groups.items():
        by_label = {_label(b): b for b in members}
        baselines = [b for b in members if b["extra_info"]["role"] != "path"]
        baselines.sort(key=lambda b: b["extra_info"]["role"])  # floor before reference
        for path in (b for b in members if b["extra_info"]["role"] == "path"):
            targets = [_target_text(path, t, by_label) for t in path["extra_info"]["targets"]]
            name = f"{_label(path)} [{group}]"
            rows = [(b, _speed(path, b)) for b in baselines] or [(None, None)]
            for i, (base, ratio) in enumerate(rows):
                base_text = (f"{_label(base)} ({base['extra_info']['role']}): "
                             f"{throughput_text(base)}" if base else "-")
                ratio_text = f"{ratio:.2f}x" if ratio is not None else "-"
                lines.append(f"| {name if i == 0 else ''} | "
                             f"{throughput_text(path) if i == 0 else ''} | {base_text} | "
                             f"{ratio_text} | {'; '.join(targets) if i == 0 else ''} |")
    return lines


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    benches = [b.as_dict(include_data=False) for b in session.benchmarks if b]
    terminalreporter.write_sep("-", "throughput (median round; ratio > 1: faster than baseline)")
    for line in markdown_table(benches):
        terminalreporter.write_line(line)
