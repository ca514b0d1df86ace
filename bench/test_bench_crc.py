"""CRC-32C of a buffer: pybroker.core.crc32c beside a plain copy and zlib.crc32.

Target (2-core bench machine): core.crc32c >= 5 GB/s at 64 KiB. Every batch an append
accepts is checked once, so this is the per-byte cost of validation; at 5 GB/s it stays
a small share of the page-cache write of the same bytes (1-4 GB/s, test_bench_append).

- path:      core.crc32c (hardware crc32 instructions, three lanes; see csrc/crc32c.c)
- floor:     a copy of the buffer into a preallocated one (memcpy: reads and writes
             every byte; a CRC only reads, so the path may pass it)
- reference: zlib.crc32 (CRC-32, another polynomial: what the stdlib offers) and
             core.crc32c_sw (the portable slicing-by-8 table path, the test oracle)
At 1 KiB the fixed cost of a call through cffi (from_buffer, argument checks) shows.
"""
import ctypes
import os
import zlib

import pytest

from pybroker import core

KiB = 1 << 10
SIZES = [pytest.param(KiB, id="1KiB"), pytest.param(64 * KiB, id="64KiB"),
         pytest.param(1024 * KiB, id="1MiB")]
TARGET_64K = ({"metric": "MB/s", "min": 5000},)


@pytest.fixture(params=SIZES)
def data(request):
    return bytearray(os.urandom(request.param))


def _address(buffer) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


def _copier(data):
    """The floor: one copy of data into a preallocated buffer (a memcpy). The buffer
    starts half a page off data's position within a page: where they happened to fall
    (same offset or not: 4K aliasing) made the copy 0.66 or 0.90 us at 64 KiB from one
    run to the next."""
    pad = bytearray(len(data) + 8192)
    shift = (_address(data) + 2048 - _address(pad)) % 4096
    src, dst = memoryview(data), memoryview(pad)[shift:shift + len(data)]

    def copy():
        dst[:] = src

    copy.dst = dst
    return copy


def test_crc32c(benchmark, record, data):
    record("crc", "path", nbytes=len(data),
           targets=TARGET_64K if len(data) == 64 * KiB else (),
           hardware=core.crc32c_hardware(), floor=_copier(data))
    assert benchmark(core.crc32c, data) == core.crc32c_sw(data)


def test_copy(benchmark, record, data):
    record("crc", "floor", nbytes=len(data))
    copy = _copier(data)
    benchmark(copy)
    assert copy.dst == data


def test_zlib_crc32(benchmark, record, data):
    record("crc", "reference", nbytes=len(data), floor=_copier(data), guard=False)
    benchmark(zlib.crc32, data)


def test_crc32c_sw(benchmark, record, data):
    record("crc", "reference", nbytes=len(data), floor=_copier(data))
    assert benchmark(core.crc32c_sw, data) == core.crc32c(data)
