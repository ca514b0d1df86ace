"""The benchmark regression guard: compare two pytest-benchmark JSON files by ratios to
the floor measured in the same run, not by raw times.

    scripts/bench-guard BASE.json NEW.json [--threshold 25%] [--statistic median]

Raw times on a shared machine move with the machine: another process on one of two
cores slows every benchmark of that moment by up to 2x, the floors (a raw os.write, a
memcpy, os.sendfile, a pread) as much as the pybroker paths. So each benchmark's median
is divided by the median of its floor IN THE SAME FILE, and only the change of that
ratio between BASE and NEW is judged:

    ratio  = median(benchmark) / median(its floor), per file
    change = ratio(NEW) / ratio(BASE) - 1

Its floor is, when both files have it, the PAIRED floor: the group's floor operation
timed before each round of the benchmark itself, on the same inputs
(extra_info["paired_floor"], from record(floor=...) in bench/conftest.py), so that both
saw the same moments of the machine. Otherwise it is the floor benchmark of its group
(the group is one operation at one size: "append 50x200B", "lookup 1M-entries"),
measured in its own test a few seconds before or after.

A change above +threshold (default 25%) is FLAGGED (the benchmark got slower relative
to what the machine could do at the time); below -threshold it is shown as "faster",
not flagged (--both flags it too). A benchmark may declare a larger threshold of its
own (record(guard_threshold=...): the spread its ratio shows between same-commit runs,
for the few whose work is split over threads and processes sharing the two cores); the
larger of the two applies, and the table's "limit" column shows which. Floors are
never flagged: their raw change is shown so that a reader sees how much the machine
itself moved, and neither are the baselines that are not pybroker code (zlib, bisect,
pread+sendall, confluent-kafka: record(guard=False)), shown as "baseline", nor a path
marked so ("not judged": the loop latency, whose floor is another broker's run). A
group with several floors is divided by their geometric mean. A benchmark with neither
a paired floor in both files nor a floor in its group in both is reported "no floor",
the file named, and is not judged (--strict makes that fail too). Benchmarks found in
only one file are listed and not judged.

Exit status: 0 nothing flagged, 1 something flagged (or, with --strict, a benchmark left
unjudged for want of a floor), 2 a file that cannot be read or is not pytest-benchmark
JSON. The table goes to stdout, one line per benchmark.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field

DEFAULT_THRESHOLD = 0.25
STATISTICS = ("median", "min", "mean")


class GuardError(Exception):
    """A file the guard cannot use (exit 2)."""


@dataclass
class Row:
    name: str                       # fullname: module::test[param]
    group: str
    role: str
    status: str                     # ok, FLAGGED, faster, floor, no floor, only in ...
    base: float | None = None       # the statistic, seconds per call
    new: float | None = None
    base_ratio: float | None = None
    new_ratio: float | None = None
    change: float | None = None     # of the ratio (of the raw time, for a floor)
    floor: str = ""                 # what it was divided by: "paired" or "group"
    limit: float | None = None      # the threshold applied
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    threshold: float = DEFAULT_THRESHOLD

    def with_status(self, *statuses: str) -> list[Row]:
        return [r for r in self.rows if r.status in statuses]

    @property
    def flagged(self) -> list[Row]:
        return self.with_status("FLAGGED")

    @property
    def no_floor(self) -> list[Row]:
        return self.with_status("no floor")


def load(path: str) -> dict:
    """The benchmarks of a --benchmark-json (or --benchmark-autosave) file by fullname."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as exc:
        raise GuardError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise GuardError(f"{path} is not JSON: {exc}") from None
    return load_data(data, path)


def load_data(data, path: str = "the results") -> dict:
    """The benchmarks of parsed pytest-benchmark JSON, by fullname."""
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise GuardError(f"{path} is not a pytest-benchmark JSON file "
                         "(no 'benchmarks' list; write one with --benchmark-json=FILE)")
    out = {}
    for bench in data["benchmarks"]:
        if not isinstance(bench, dict) or "stats" not in bench:
            continue
        name = bench.get("fullname") or bench.get("name")
        out[name] = bench
    return out


def role(bench: dict) -> str:
    return (bench.get("extra_info") or {}).get("role") or "none"


def stat(bench: dict, statistic: str) -> float:
    return float(bench["stats"][statistic])


def paired(bench: dict, statistic: str) -> float | None:
    """The floor timed alongside this benchmark's rounds, if it was."""
    value = ((bench.get("extra_info") or {}).get("paired_floor") or {}).get(statistic)
    return float(value) if value else None


def floors(benches: dict, statistic: str) -> dict[str, tuple[float, list[str]]]:
    """group -> (the geometric mean of its floors' statistic, the floors' names)."""
    by_group: dict[str, list[tuple[str, float]]] = {}
    for name, bench in benches.items():
        if role(bench) == "floor" and bench.get("group"):
            by_group.setdefault(bench["group"], []).append((name, stat(bench, statistic)))
    return {g: (math.exp(sum(math.log(v) for _, v in fl) / len(fl)), [n for n, _ in fl])
            for g, fl in by_group.items()}


def compare(base: dict, new: dict, threshold: float = DEFAULT_THRESHOLD,
            statistic: str = "median", both: bool = False,
            base_label: str = "BASE", new_label: str = "NEW") -> Report:
    """Judge every benchmark of new against base, by ratio to its group's floor."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic {statistic!r} is not one of {STATISTICS}")
    report = Report(threshold=threshold)
    base_floor, new_floor = floors(base, statistic), floors(new, statistic)
    names = list(base) + [n for n in new if n not in base]
    for name in names:
        b, n = base.get(name), new.get(name)
        ref = n or b
        group, kind = ref.get("group") or "-", role(ref)
        if b is None or n is None:
            label = new_label if b is None else base_label
            report.rows.append(Row(name, group, kind, f"only in {label}",
                                   base=b and stat(b, statistic),
                                   new=n and stat(n, statistic)))
            continue
        row = Row(name, group, kind, "ok", base=stat(b, statistic), new=stat(n, statistic))
        report.rows.append(row)
        info = n.get("extra_info") or {}
        if kind == "floor" or info.get("guard") is False:
            row.status = {"floor": "floor", "reference": "baseline"}.get(kind, "not judged")
            row.change = row.new / row.base - 1
            continue
        base_paired, new_paired = paired(b, statistic), paired(n, statistic)
        missing = [label for label, fl in ((base_label, base_floor), (new_label, new_floor))
                   if group not in fl]
        if base_paired and new_paired:
            row.floor = "paired"
            row.base_ratio, row.new_ratio = row.base / base_paired, row.new / new_paired
        elif missing:
            row.status = "no floor"
            row.note = (f"group {group!r} has no floor benchmark (role 'floor') in "
                        f"{' and '.join(missing)}, and no paired floor")
            continue
        else:
            row.floor = "group"
            row.base_ratio = row.base / base_floor[group][0]
            row.new_ratio = row.new / new_floor[group][0]
        row.change = row.new_ratio / row.base_ratio - 1
        row.limit = max(threshold, float(info.get("guard_threshold") or 0))
        slowed = info.get("slowdown")
        if slowed:
            row.note = f"NEW ran with PYBROKER_BENCH_SLOWDOWN x{slowed}"
        if row.change > row.limit:
            row.status = "FLAGGED"
        elif row.change < -row.limit:
            row.status = "FLAGGED" if both else "faster"
    return report


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if value >= scale or unit == "ns":
            return f"{value / scale:.3g} {unit}"
    return "-"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.1f}%"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(report: Report, statistic: str = "median", flagged_only: bool = False) -> list[str]:
    header = ("benchmark", "group", "role", f"base {statistic}", f"new {statistic}",
              "floor", "base /floor", "new /floor", "change", "limit", "status")
    rows = [header]
    for r in report.rows:
        if flagged_only and r.status not in ("FLAGGED", "no floor"):
            continue
        name = r.name.split("::", 1)[-1]
        status = r.status + (f" ({r.note})" if r.note else "")
        rows.append((name, r.group, r.role, _seconds(r.base), _seconds(r.new),
                     r.floor or "-", _ratio(r.base_ratio), _ratio(r.new_ratio),
                     _pct(r.change), "-" if r.limit is None else f"{r.limit * 100:g}%",
                     status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in
                 enumerate(zip(row, widths))]
        lines.append("  ".join(cells + [row[-1]]).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return lines


def summary(report: Report) -> str:
    judged = [r for r in report.rows if r.limit is not None]
    worst = max(judged, key=lambda r: abs(r.change), default=None)
    parts = [f"{len(report.flagged)} flagged of {len(judged)} judged "
             f"(threshold {report.threshold * 100:g}% on the ratio to the floor)"]
    if worst is not None:
        parts.append(f"largest change {_pct(worst.change)} "
                     f"({worst.name.split('::', 1)[-1]})")
    if report.no_floor:
        parts.append(f"{len(report.no_floor)} not judged: no floor")
    only = [r for r in report.rows if r.status.startswith("only in")]
    if only:
        parts.append(f"{len(only)} in one file only")
    return "; ".join(parts)


def parse_threshold(text: str) -> float:
    value = text.strip()
    try:
        number = float(value.removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--threshold {text!r}: expected a percentage such as 25 or 25%") from None
    if not 0 < number < 1000:
        raise argparse.ArgumentTypeError(f"--threshold {text!r}: must be above 0 and below 1000%")
    return number / 100


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench-guard",
        description="Compare two pytest-benchmark JSON files by each benchmark's ratio to "
                    "its group's floor in the same file; flag ratio changes beyond a "
                    "threshold (exit 1).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("base", help="the reference run (--benchmark-json output)")
    parser.add_argument("new", help="the run to judge")
    parser.add_argument("--threshold", type=parse_threshold, default=DEFAULT_THRESHOLD,
                        metavar="PCT", help="flag a ratio change above this (25 or 25%%); "
                        "default 25%%")
    parser.add_argument("--statistic", choices=STATISTICS, default="median",
                        help="the per-benchmark statistic divided by the floor's")
    parser.add_argument("--both", action="store_true",
                        help="flag ratio changes in both directions (faster too)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 also when a benchmark has no floor to be judged by")
    parser.add_argument("--flagged-only", action="store_true",
                        help="print only the flagged and unjudged rows")
    args = parser.parse_args(argv)
    try:
        base, new = load(args.base), load(args.new)
    except GuardError as exc:
        print(f"bench-guard: {exc}", file=sys.stderr)
        return 2
    report = compare(base, new, args.threshold, args.statistic, args.both)
    for line in table(report, args.statistic, args.flagged_only):
        print(line)
    print()
    print(summary(report))
    for row in report.no_floor:
        print(f"bench-guard: {row.name}: not judged, {row.note}", file=sys.stderr)
    failed = bool(report.flagged) or (args.strict and bool(report.no_floor))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
