"""Kill a real process at each step of a segment roll, a retention delete and a
checkpoint write (pybroker.failpoints), then reopen: one consistent segment list, and
the recovery-point checkpoint either the old or the new one, never torn. The page cache
survives a process kill, so everything reported flushed must still be there."""
import logging
import os
import signal
import subprocess
import sys

import pytest

from helpers import value_for
from pybroker import failpoints
from pybroker.log import PartitionLog, checkpoint, files
from pybroker.records import parse_batches, parse_records

import failpoint_child

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CHILD = os.path.join(HERE, "failpoint_child.py")

# the n-th hit of each point: past the first roll and retention, so there is history
POINTS = ["roll.after_seal=kill@3", "roll.after_create=kill@3",
          "retention.after_log_unlink=kill@2", "retention.after_delete=kill@2",
          "checkpoint.before_rename=kill@9", "checkpoint.after_rename=kill@9"]


def run_until_killed(directory: str, spec: str) -> list[int]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO, HERE, env.get("PYTHONPATH", "")])
    env[failpoints.ENV] = spec
    proc = subprocess.run([sys.executable, CHILD, directory], env=env, capture_output=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, (
        f"the failpoint {spec} never fired (exit {proc.returncode}): {proc.stderr[-2000:]!r}")
    return [int(line.split()[1]) for line in proc.stdout.decode().splitlines()
            if line.startswith("flushed ")]


@pytest.mark.parametrize("spec", POINTS)
def test_a_kill_at_each_step_leaves_a_consistent_log(tmp_path, spec, caplog):
    directory = str(tmp_path / "fail-0")
    flushed = run_until_killed(directory, spec)
    assert flushed, "the child flushed nothing before the kill"
    point = checkpoint.read_recovery_point(directory)
    with caplog.at_level(logging.WARNING, logger="pybroker.log"):
        assert point in {0, *flushed}        # the old or the new value, never torn
        assert not [r for r in caplog.records if "unreadable recovery point" in r.getMessage()]
    log = PartitionLog(directory, failpoint_child.CONFIG, name="fail-0")
    try:
        assert log.verify() == []
        assert log.log_end_offset >= max(flushed)
        bases = log.segment_bases()
        assert bases == sorted(bases) and bases[0] == log.log_start_offset
        offset = log.log_start_offset
        while offset < log.high_watermark:   # every offset holds its own value, no gaps
            piece = log.read(offset, 1 << 20)
            for record in (r for b in parse_batches(piece.read_bytes())
                           for r in parse_records(b)):
                assert (record.offset, record.value) == (offset, value_for(offset))
                offset += 1
    finally:
        log.close()
    names = os.listdir(directory)
    assert not [n for n in names if n.endswith(files.TEMP_SUFFIX)], names
    logs = {files.parse_base_offset(n, files.LOG_SUFFIX) for n in names} - {None}
    for suffix in (files.INDEX_SUFFIX, files.TIME_INDEX_SUFFIX):  # no index without its log
        assert {files.parse_base_offset(n, suffix) for n in names} - {None} <= logs
