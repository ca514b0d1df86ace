"""pb_segment_append, pb_segment_seek and pb_sendfile (csrc/segment.h) on real files and
sockets, against oracles.IndexModel, oracles.seek (a full scan) and oracles.read_send."""
import errno
import os
import random
import select
import socket
import struct
import subprocess
import sys
import textwrap
import threading

import pytest

import oracles
from oracles import OFF_LENGTH, make_batch
from pybroker import core
from pybroker.errors import CoreError, CoreIOError, CorruptRecordError

SENTINEL = 0xAA


def _indexes(capacity: int = 1000, time_capacity: int = 1000):
    oi = core.Pinned(bytearray([SENTINEL]) * (capacity * core.OFFSET_ENTRY_SIZE))
    ti = core.Pinned(bytearray([SENTINEL]) * (time_capacity * core.TIME_ENTRY_SIZE))
    return oi, ti, core.new_index_cursor(capacity, time_capacity)


def _cursor(c) -> tuple:
    return (c.entries, c.capacity, c.time_entries, c.time_capacity, c.bytes_since_entry,
            c.max_timestamp, c.offset_of_max_timestamp)


def _random_batches(rng, n: int, base_offset: int) -> bytearray:
    """n batches of 1-5 records, offset gaps of 0-2 (as compaction leaves), payloads of
    0-300 bytes and timestamps that wander up and down."""
    buf, offset, ts = bytearray(), base_offset, rng.randrange(10 ** 6)
    for _ in range(n):
        count = rng.randint(1, 5)
        ts += rng.randint(-50, 100)
        buf += make_batch(count, base_offset=offset, base_timestamp=ts,
                          max_timestamp=ts + rng.randint(0, 20),
                          payload=rng.randbytes(rng.randrange(300)))
        offset += count + rng.choice([0, 0, 0, 1, 2])
    return buf


@pytest.fixture
def log_fd(tmp_path):
    fd = os.open(tmp_path / "00000000000000000000.log", os.O_RDWR | os.O_CREAT, 0o644)
    yield fd
    os.close(fd)


# --- append --------------------------------------------------------------------------------

def test_append_lands_at_file_pos_and_indexes(log_fd):
    rng = random.Random(1)
    first, second = _random_batches(rng, 10, 100), None
    oi, ti, cur = _indexes()
    core.segment_append(log_fd, first, 0, 100, 500, oi, ti, cur)
    last = oracles.batch_infos(first)[-1].last_offset
    second = _random_batches(rng, 10, last + 1)
    core.segment_append(log_fd, second, len(first), 100, 500, oi, ti, cur)
    assert os.pread(log_fd, 10 ** 6, 0) == first + second
    model = oracles.IndexModel(100, 500)
    model.add(oracles.batch_infos(first))
    model.add(oracles.batch_infos(second, start=len(first)))
    assert oracles.unpack_offset_index(oi.obj, cur.entries) == model.offsets
    assert oracles.unpack_time_index(ti.obj, cur.time_entries) == model.times
    assert cur.bytes_since_entry == model.bytes_since_entry


def test_append_overwrites_only_its_range(log_fd):
    os.pwrite(log_fd, b"\x11" * 300, 0)
    batch = make_batch(2, payload=b"x" * 20)  # 81 bytes at 100..180
    oi, ti, cur = _indexes()
    core.segment_append(log_fd, batch, 100, 0, 0, oi, ti, cur)
    data = os.pread(log_fd, 1000, 0)
    assert data[:100] == b"\x11" * 100 and data[100:181] == batch
    assert data[181:] == b"\x11" * 119
    assert oracles.unpack_offset_index(oi.obj, 1) == [(0, 100)]


@pytest.mark.parametrize("how", ["read_only", "closed"])
def test_failed_write_raises_with_errno_and_changes_nothing(tmp_path, how):
    path = tmp_path / "seg.log"
    first = make_batch(2, base_timestamp=5, payload=b"f" * 10)  # 71 bytes at 0
    oi, ti, cur = _indexes(8, 8)
    rw = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    core.segment_append(rw, first, 0, 0, 0, oi, ti, cur)
    os.close(rw)
    fd = os.open(path, os.O_RDONLY)
    if how == "closed":
        os.close(fd)
    before = (_cursor(cur), bytes(oi.obj), bytes(ti.obj))
    assert before[0][0] == 1
    with pytest.raises(CoreIOError) as info:
        core.segment_append(fd, make_batch(3, base_offset=2, base_timestamp=9), 71, 0, 0,
                            oi, ti, cur)
    exc = info.value
    assert isinstance(exc, OSError) and core.is_code(exc, "IO")
    assert "EBADF" in str(exc) and "append to segment 0 at position 71" in str(exc)
    assert exc.__cause__.errno == errno.EBADF
    assert (_cursor(cur), bytes(oi.obj), bytes(ti.obj)) == before
    assert path.read_bytes() == first
    if how == "read_only":
        os.close(fd)


def test_io_error_carries_errno_attribute(tmp_path):
    fd = os.open(tmp_path / "seg.log", os.O_RDONLY | os.O_CREAT, 0o644)
    oi, ti, cur = _indexes(8, 8)
    try:
        with pytest.raises(CoreIOError) as info:
            core.segment_append(fd, make_batch(1), 0, 0, 0, oi, ti, cur)
    finally:
        os.close(fd)
    assert info.value.errno == errno.EBADF


def test_negative_fd_is_invalid_argument():
    oi, ti, cur = _indexes(8, 8)
    with pytest.raises(CoreError) as info:
        core.segment_append(-1, make_batch(1), 0, 0, 0, oi, ti, cur)
    assert core.is_code(info.value, "INVALID_ARG") and not isinstance(info.value, OSError)


def test_index_full_writes_no_byte(log_fd):
    oi, ti, cur = _indexes(2, 8)
    buf = make_batch(1) + make_batch(1, base_offset=1) + make_batch(1, base_offset=2)
    with pytest.raises(CoreError) as info:
        core.segment_append(log_fd, buf, 0, 0, 0, oi, ti, cur)  # 3 entries, room for 2
    assert core.is_code(info.value, "INDEX_FULL")
    assert os.fstat(log_fd).st_size == 0 and cur.entries == 0


def test_short_write_is_cut_back_to_file_pos(tmp_path):
    # RLIMIT_FSIZE of 150 bytes on a file holding 100: three 71-byte batches at 100 get a
    # short write of 50 bytes, then EFBIG; the append must truncate the file back to 100.
    # Run in a child so the limit cannot touch this process.
    path = tmp_path / "seg.log"
    path.write_bytes(b"\x33" * 100)
    script = textwrap.dedent(f"""
        import errno, os, resource, signal, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import oracles
        from pybroker import core
        from pybroker.errors import CoreIOError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (150, 150))
        fd = os.open({str(path)!r}, os.O_RDWR)
        oi = core.Pinned(bytearray(64)); ti = core.Pinned(bytearray(96))
        cur = core.new_index_cursor(8, 8)
        buf = b"".join(oracles.make_batch(1, base_offset=i, payload=b"p" * 10) for i in range(3))
        try:
            core.segment_append(fd, buf, 100, 0, 0, oi, ti, cur)
        except CoreIOError as exc:
            assert exc.__cause__.errno == errno.EFBIG, exc
            assert (cur.entries, cur.time_entries, cur.bytes_since_entry) == (0, 0, 0)
            print("size", os.fstat(fd).st_size)
        else:
            print("no error")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["size", "100"]
    assert path.read_bytes() == b"\x33" * 100


# --- seek ----------------------------------------------------------------------------------

def _build_segment(fd, rng, n: int, base_offset: int, interval: int):
    """Append n random batches in random chunks; returns (infos, oi, ti, cur)."""
    buf = _random_batches(rng, n, base_offset)
    infos = oracles.batch_infos(buf)
    oi, ti, cur = _indexes()
    i = 0
    while i < len(infos):
        j = min(len(infos), i + rng.randint(1, 8))
        start, end = infos[i].position, infos[j - 1].position + infos[j - 1].size
        core.segment_append(fd, buf[start:end], start, base_offset, interval, oi, ti, cur)
        i = j
    return infos, oi, ti, cur


@pytest.mark.parametrize("interval", [0, 200, 1000, 10 ** 9])
@pytest.mark.parametrize("sealed", [False, True])
def test_seek_against_full_scan(log_fd, interval, sealed):
    rng = random.Random(interval * 2 + sealed)
    base = 1000
    infos, oi, ti, cur = _build_segment(log_fd, rng, 200, base, interval)
    if sealed:
        core.index_seal(ti, base, cur)
    size = infos[-1].position + infos[-1].size
    last = infos[-1]
    first_ts = min(b.max_timestamp for b in infos)
    max_ts = max(b.max_timestamp for b in infos)
    ends = [size, size - 1, last.position + 61, last.position, infos[100].position + 30,
            60, 0]
    for _ in range(300):
        end_pos = rng.choice(ends)
        by_time = rng.random() < 0.5
        if by_time:
            target = rng.randint(first_ts - 100, max_ts + 100)
        else:
            target = rng.randint(base - 5, last.last_offset + 5)
        got = core.segment_seek(log_fd, oi, ti, cur, base, by_time, target, end_pos)
        want = oracles.seek(infos, by_time, target, end_pos)
        assert got == (tuple(want) if want else None), (by_time, target, end_pos)


def test_seek_edges_by_hand(log_fd):
    # offsets 10..12 | 13 | 16..17 (gap after 13), max timestamps 50, 40, 70
    buf = make_batch(3, base_offset=10, base_timestamp=50) + \
        make_batch(1, base_offset=13, base_timestamp=40) + \
        make_batch(2, base_offset=16, base_timestamp=60, max_timestamp=70)
    oi, ti, cur = _indexes()
    core.segment_append(log_fd, buf, 0, 10, 0, oi, ti, cur)
    size = len(buf)

    def seek(by_time, target, end=size):
        got = core.segment_seek(log_fd, oi, ti, cur, 10, by_time, target, end)
        return got and (got.base_offset, got.last_offset)

    assert seek(False, 0) == (10, 12)       # below the segment: its first batch
    assert seek(False, 12) == (10, 12)
    assert seek(False, 14) == (16, 17)      # in the gap: the next batch holding more
    assert seek(False, 17) == (16, 17)
    assert seek(False, 18) is None          # past the end
    assert seek(False, 16, end=size - 1) is None  # last batch cut by end_pos
    assert seek(True, 41) == (10, 12)       # first batch with maxTimestamp >= 41
    assert seek(True, 51) == (16, 17)       # 40 < 51: the middle batch is skipped
    assert seek(True, 70) == (16, 17)
    assert seek(True, 71) is None


def test_seek_with_empty_indexes_scans_from_zero(log_fd):
    rng = random.Random(4)
    buf = _random_batches(rng, 50, 0)
    os.pwrite(log_fd, buf, 0)
    infos = oracles.batch_infos(buf)
    oi, ti, cur = _indexes(0, 1)
    for target in range(0, infos[-1].last_offset + 2, 7):
        got = core.segment_seek(log_fd, oi, ti, cur, 0, False, target, len(buf))
        want = oracles.seek(infos, False, target, len(buf))
        assert got == (tuple(want) if want else None)


@pytest.mark.parametrize("field", ["entries", "time_entries"])
def test_seek_refuses_a_cursor_claiming_more_entries_than_fit(log_fd, field):
    oi, ti, cur = _indexes(1, 1)
    setattr(cur, field, 2)
    with pytest.raises(CoreError) as info:
        core.segment_seek(log_fd, oi, ti, cur, 0, False, 0, 100)
    assert core.is_code(info.value, "INVALID_ARG")


def _damaged_segment(fd):
    """Ten 71-byte batches (offsets 0..9) at 0, 71, ..., 639; 710 bytes."""
    buf = bytearray().join(make_batch(1, base_offset=i, base_timestamp=i, payload=b"d" * 10)
                           for i in range(10))
    os.pwrite(fd, buf, 0)
    return len(buf)


@pytest.mark.parametrize("length", [-(2 ** 31), -1, 0, 10, 48])
def test_seek_over_damaged_length_is_bad_length(log_fd, length):
    size = _damaged_segment(log_fd)
    os.pwrite(log_fd, struct.pack(">i", length), 5 * 71 + OFF_LENGTH)
    empty, empty_time, none = _indexes(0, 1)
    for by_time in (False, True):
        with pytest.raises(CorruptRecordError) as info:
            core.segment_seek(log_fd, empty, empty_time, none, 0, by_time, 7, size)
        assert core.is_code(info.value, "BAD_LENGTH")
        # a target before the damage is still found
        got = core.segment_seek(log_fd, empty, empty_time, none, 0, by_time, 3, size)
        assert got.position == 3 * 71


def test_seek_over_file_shorter_than_end_pos_is_truncated(log_fd):
    size = _damaged_segment(log_fd)
    os.ftruncate(log_fd, 5 * 71 + 20)  # batch 5 keeps 20 of its 43 seek-header bytes
    empty, empty_time, none = _indexes(0, 1)
    with pytest.raises(CorruptRecordError) as info:
        core.segment_seek(log_fd, empty, empty_time, none, 0, False, 7, size)
    assert core.is_code(info.value, "TRUNCATED")
    os.ftruncate(log_fd, 5 * 71)  # the file ends at a batch boundary
    with pytest.raises(CorruptRecordError) as info:
        core.segment_seek(log_fd, empty, empty_time, none, 0, False, 7, size)
    assert core.is_code(info.value, "TRUNCATED")


def test_seek_over_huge_length_reads_as_end_of_range(log_fd):
    # a header claiming to run past end_pos is indistinguishable from a tail batch cut
    # by end_pos: not found, and no read past the range
    size = _damaged_segment(log_fd)
    os.pwrite(log_fd, struct.pack(">i", 2 ** 31 - 1), 5 * 71 + OFF_LENGTH)
    empty, empty_time, none = _indexes(0, 1)
    assert core.segment_seek(log_fd, empty, empty_time, none, 0, False, 7, size) is None


def test_seek_on_bad_fd_is_io_error():
    empty, empty_time, none = _indexes(0, 1)
    with pytest.raises(CoreIOError) as info:
        core.segment_seek(10 ** 6, empty, empty_time, none, 0, False, 0, 1000)
    assert info.value.__cause__.errno == errno.EBADF


# --- sendfile ------------------------------------------------------------------------------

@pytest.fixture
def data_file(tmp_path):
    data = random.Random(2).randbytes(1 << 20)
    path = tmp_path / "data.log"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield fd, data
    os.close(fd)


def _small_pair():
    """(sender, receiver): a Unix socketpair, the sender non-blocking with a 4 KiB
    send buffer so a large sendfile cannot finish in one call."""
    snd, rcv = socket.socketpair()
    snd.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    rcv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    snd.setblocking(False)
    rcv.settimeout(20)
    return snd, rcv


def _drain(sock, n: int, out: bytearray) -> None:
    while len(out) < n:
        chunk = sock.recv(65536)
        if not chunk:
            return
        out += chunk


def test_sendfile_partial_progress_then_resume(data_file):
    fd, data = data_file
    position, count = 12345, 600_000
    snd, rcv = _small_pair()
    with snd, rcv:
        sent, done = core.sendfile(snd.fileno(), fd, position, count)
        assert not done and 0 < sent < count  # the socket filled up: partial progress
        received = bytearray()
        reader = threading.Thread(target=_drain, args=(rcv, count, received))
        reader.start()
        total, partials = sent, 1
        while total < count:
            assert select.select([], [snd], [], 20)[1], "socket never became writable"
            sent, done = core.sendfile(snd.fileno(), fd, position + total, count - total)
            total += sent
            partials += not done
            assert done == (total == count)
        reader.join(20)
    assert total == count and partials > 1
    assert received == data[position:position + count]


def test_sendfile_matches_read_send_oracle(data_file):
    fd, data = data_file
    position, count = 777, 100_000
    results = []
    for use_core in (True, False):
        snd, rcv = socket.socketpair()
        with snd, rcv:
            received = bytearray()
            reader = threading.Thread(target=_drain, args=(rcv, count, received))
            reader.start()
            if use_core:
                snd.setblocking(False)
                total = 0
                while total < count:
                    select.select([], [snd], [], 20)
                    total += core.sendfile(snd.fileno(), fd, position + total,
                                           count - total)[0]
            else:
                total = oracles.read_send(snd, fd, position, count)
            reader.join(20)
        results.append((total, bytes(received)))
    assert results[0] == results[1] == (count, data[position:position + count])


def test_sendfile_of_short_file_is_truncated_after_sending_what_exists(tmp_path):
    path = tmp_path / "short.log"
    path.write_bytes(bytes(range(256)) * 4)  # 1024 bytes
    fd = os.open(path, os.O_RDONLY)
    snd, rcv = socket.socketpair()  # default buffers hold the 824 bytes
    try:
        snd.setblocking(False)
        with pytest.raises(CoreError) as info:
            core.sendfile(snd.fileno(), fd, 200, 2000)
        assert core.is_code(info.value, "TRUNCATED")
        assert "sent 824" in str(info.value)
        received = bytearray()
        rcv.settimeout(5)
        _drain(rcv, 824, received)
        assert received == path.read_bytes()[200:]
        # the oracle stops at the same byte
        snd.setblocking(True)
        assert oracles.read_send(snd, fd, 200, 2000) == 824
        with pytest.raises(CoreError) as info:  # starting past the end: nothing to send
            core.sendfile(snd.fileno(), fd, 5000, 10)
        assert core.is_code(info.value, "TRUNCATED") and "sent 0" in str(info.value)
    finally:
        os.close(fd)
        snd.close()
        rcv.close()


def test_sendfile_of_nothing_is_complete(data_file):
    fd, _ = data_file
    snd, rcv = socket.socketpair()
    with snd, rcv:
        assert core.sendfile(snd.fileno(), fd, 0, 0) == (0, True)


def test_sendfile_invalid_fds_and_arguments(data_file, tmp_path):
    fd, _ = data_file
    snd, rcv = socket.socketpair()
    with snd, rcv:
        for out_fd, in_fd, pos, count in ((-1, fd, 0, 10), (snd.fileno(), -1, 0, 10),
                                          (snd.fileno(), fd, -1, 10),
                                          (snd.fileno(), fd, 0, -1)):
            with pytest.raises(CoreError) as info:
                core.sendfile(out_fd, in_fd, pos, count)
            assert core.is_code(info.value, "INVALID_ARG")
        closed = os.open(tmp_path / "x", os.O_RDWR | os.O_CREAT)
        os.close(closed)
        for out_fd, in_fd in ((closed, fd), (snd.fileno(), closed)):
            with pytest.raises(CoreIOError) as info:
                core.sendfile(out_fd, in_fd, 0, 10)
            assert info.value.__cause__.errno == errno.EBADF
        # a socket is not a file to send from
        with pytest.raises(CoreIOError):
            core.sendfile(snd.fileno(), rcv.fileno(), 0, 10)
