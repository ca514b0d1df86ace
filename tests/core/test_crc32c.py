"""pb_crc32c and pb_crc32c_sw (csrc/crc32c.h) against the table oracle, the RFC 3720
vectors and the `crc32c` PyPI package."""
import array
import json
import os
import random

import crc32c as crc32c_pypi
import pytest

import oracles
from pybroker import core

VECTORS = json.load(open(os.path.join(os.path.dirname(__file__), "..", "data",
                                      "crc32c_vectors.json")))["vectors"]

LANE = 2048  # csrc/crc32c.c: the hardware path runs 3 lanes of 2 KiB per round
# every tail length mod 8, each side of one and two 3-lane rounds, and 1 MiB
LENGTHS = sorted({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 63, 64, 65, 255, 256, 1000,
                  LANE - 1, LANE, LANE + 1, 2 * LANE,
                  3 * LANE - 9, 3 * LANE - 1, 3 * LANE, 3 * LANE + 1, 3 * LANE + 8,
                  6 * LANE - 1, 6 * LANE, 6 * LANE + 5, 9 * LANE + 7, 1 << 20})
PYTHON_ORACLE_MAX = 1 << 16  # the table oracle runs at ~7 MB/s; bigger sizes use the others


def _data(n: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + n).randbytes(n)


@pytest.mark.parametrize("vec", VECTORS, ids=[v["name"] for v in VECTORS])
@pytest.mark.parametrize("fn", [core.crc32c, core.crc32c_sw, oracles.crc32c],
                         ids=["core", "core_sw", "oracle"])
def test_known_vectors(fn, vec):
    assert fn(bytes.fromhex(vec["hex"])) == int(vec["crc"], 16)


def test_vectors_file_holds_the_rfc_values():
    # guards the JSON itself: the four RFC 3720 B.4 vectors and the catalogue check value
    expected = {
        bytes(32): 0x8A9136AA,
        b"\xff" * 32: 0x62A8AB43,
        bytes(range(32)): 0x46DD794E,
        bytes(range(31, -1, -1)): 0x113FDB5C,
        b"123456789": 0xE3069283,
    }
    got = {bytes.fromhex(v["hex"]): int(v["crc"], 16) for v in VECTORS}
    assert expected.items() <= got.items()


@pytest.mark.parametrize("n", LENGTHS)
def test_lengths_against_references(n):
    data = _data(n)
    want = crc32c_pypi.crc32c(data)
    assert core.crc32c(data) == want
    assert core.crc32c_sw(data) == want
    if n <= PYTHON_ORACLE_MAX:
        assert oracles.crc32c(data) == want


def test_pypi_package_agrees_with_table_oracle():
    # the PyPI package is a reference only because it agrees with the plain table
    for n in (0, 1, 100, 4097):
        data = _data(n, seed=7)
        assert crc32c_pypi.crc32c(data) == oracles.crc32c(data)


@pytest.mark.parametrize("shift", range(1, 8))
@pytest.mark.parametrize("n", [1, 7, 8, 9, 31, 3 * LANE - 1, 3 * LANE + 13, 6 * LANE + 5])
def test_unaligned_views(shift, n):
    backing = bytearray(_data(n + 16, seed=shift))
    view = memoryview(backing)[shift:shift + n]
    want = crc32c_pypi.crc32c(bytes(view))
    assert core.crc32c(view) == want
    assert core.crc32c_sw(view) == want


def test_chaining_equals_concatenation():
    rng = random.Random(11)
    data = _data(4 * 3 * LANE + 77, seed=3)
    cuts = [0, 1, 7, 8, 9, LANE, 3 * LANE - 1, 3 * LANE, 3 * LANE + 1, len(data) - 1,
            len(data)] + [rng.randrange(len(data) + 1) for _ in range(20)]
    whole = crc32c_pypi.crc32c(data)
    for cut in cuts:
        a, b = data[:cut], data[cut:]
        assert core.crc32c(b, core.crc32c(a)) == whole, cut
        assert core.crc32c_sw(b, core.crc32c_sw(a)) == whole, cut
        # mixing the paths also works: both keep the same finished-CRC convention
        assert core.crc32c_sw(b, core.crc32c(a)) == whole, cut


def test_chaining_through_many_pieces():
    rng = random.Random(5)
    data = _data(50_000, seed=9)
    crc, pos = 0, 0
    while pos < len(data):
        step = rng.choice([0, 1, 3, 8, 13, 100, 3 * LANE + 1])
        crc = core.crc32c(data[pos:pos + step], crc)
        pos += step
    assert crc == crc32c_pypi.crc32c(data)


def test_oracle_continues_like_core():
    a, b = _data(100, seed=1), _data(333, seed=2)
    assert oracles.crc32c(b, oracles.crc32c(a)) == core.crc32c(a + b)


def test_random_data_and_seeds():
    rng = random.Random(1234)
    for _ in range(200):
        n = rng.randrange(0, 3 * 3 * LANE)
        data = rng.randbytes(n)
        seed_crc = rng.getrandbits(32)
        want = crc32c_pypi.crc32c(data, seed_crc)
        assert core.crc32c(data, seed_crc) == want, (n, seed_crc)
        assert core.crc32c_sw(data, seed_crc) == want, (n, seed_crc)


def test_accepts_bytes_bytearray_memoryview():
    data = _data(1000)
    want = oracles.crc32c(data)
    assert core.crc32c(bytearray(data)) == want
    assert core.crc32c(memoryview(data)) == want


def test_rejects_non_buffers_and_bad_seed():
    with pytest.raises(TypeError):
        core.crc32c("text")
    with pytest.raises(OverflowError):
        core.crc32c(b"x", 1 << 32)
    with pytest.raises(OverflowError):
        core.crc32c(b"x", -1)


def test_multibyte_item_buffer_covers_all_bytes():
    arr = array.array("I", range(64))
    assert core.crc32c(arr) == oracles.crc32c(arr.tobytes())


def test_hardware_path_differs_from_software_only_in_speed():
    # on a host with CPU CRC instructions core.crc32c takes the 3-lane path; the sw one
    # must give the same answer on the whole range of lane-join shapes
    for rounds in range(0, 5):
        for tail in (0, 1, 8, 2047):
            data = _data(rounds * 3 * LANE + tail, seed=rounds)
            assert core.crc32c(data) == core.crc32c_sw(data)
