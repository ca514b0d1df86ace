"""CRC-32C of a buffer: pybroker.core.crc32c beside a plain copy and zlib.crc32.

Target (2-core bench machine): core.crc32c >= 5 GB/s at 64 KiB, i.e. in the range of a
memory copy of the same buffer. Every batch an append accepts is checked once, so this
is the per-byte cost of validation.

- path:      core.crc32c (hardware crc32 instructions, three lanes; see csrc/crc32c.c)
- floor:     a copy of the buffer into a preallocated one (memcpy: reads and writes
             every byte; a CRC only reads, so the path may pass it)
- reference: zlib.crc32 (CRC-32, another polynomial: what the stdlib offers) and
             core.crc32c_sw (the portable slicing-by-8 table path, the test oracle)
At 1 KiB the fixed cost of a call through cffi (from_buffer, argument checks) shows.
"""
import os
import zlib

import pytest

from conftest import KiB, MiB, record, size_id
from pybroker import core

SIZES = [1 * KiB, 64 * KiB, 1 * MiB]
TARGET_64K = ({"metric": "MB/s", "min": 5000},)


@pytest.fixture(params=SIZES, ids=size_id)
def data(request):
    return bytearray(os.urandom(request.param))


def _group(data) -> str:
    return f"crc {size_id(len(data))}"


def test_crc32c(benchmark, data):
    record(benchmark, _group(data), "path", nbytes=len(data),
           targets=TARGET_64K if len(data) == 64 * KiB else (),
           hardware=core.crc32c_hardware())
    assert benchmark(core.crc32c, data) == core.crc32c_sw(data)


def test_copy(benchmark, data):
    record(benchmark, _group(data), "floor", nbytes=len(data))
    src, dst = memoryview(data), memoryview(bytearray(len(data)))

    def copy():
        dst[:] = src

    benchmark(copy)
    assert dst == src


def test_zlib_crc32(benchmark, data):
    record(benchmark, _group(data), "reference", nbytes=len(data))
    benchmark(zlib.crc32, data)


def test_crc32c_sw(benchmark, data):
    record(benchmark, _group(data), "reference", nbytes=len(data))
    assert benchmark(core.crc32c_sw, data) == core.crc32c(data)
