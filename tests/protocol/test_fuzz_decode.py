"""decode_request on mutants of real client frames (tests/data/frames/clients.json).

The contract under test (pybroker.protocol.decode_request): for any bytes it returns
(header, body) or raises one of the protocol's own errors, never another exception,
never hangs (pytest-timeout bounds the run), and memory stays flat: no count declared
in the bytes makes it allocate beyond what the bytes themselves hold.

Reproducible: the seed is printed (run with -s) and named in every failure message;
PYBROKER_FUZZ_SEED=<n> replays a run.
"""
from __future__ import annotations

import gc
import os
import resource
import time
from pathlib import Path

import pytest

from pybroker.protocol import (SUPPORTED, DecodeError, FrameSizeError, UnknownApiKey,
                               UnsupportedVersion, decode_request)
from pybroker.testing.frames import load_frames
from pybroker.testing.mutate import Mutator

FRAMES_FILE = Path(__file__).parent.parent / "data" / "frames" / "clients.json"
ALLOWED = (DecodeError, UnsupportedVersion, UnknownApiKey, FrameSizeError)
# The largest seed is ~1 KiB and a mutant grows by at most a few KiB, so decoding one
# holds well under a MiB; 64 MiB of peak RSS growth over a whole run can only be a
# declared count allocating ahead of its bytes (or a leak of ~1 KiB per input).
MAX_RSS_GROWTH_KIB = 64 * 1024


def _seed() -> int:
    return int(os.environ.get("PYBROKER_FUZZ_SEED") or time.time_ns() % 2**32)


def _max_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux


def run_fuzz(count: int, seed: int) -> dict:
    """Decode `count` mutants; the outcome counts. Fails on the first exception outside
    the protocol's own, naming the seed, the index and the mutant's bytes."""
    frames = load_frames(FRAMES_FILE)
    seeds = [f.body for f in frames]
    for f in frames:   # the seeds are valid requests (kafka-python also tries
        if f.api_version <= SUPPORTED[f.api_key][1]:   # ApiVersions v4, above ours)
            decode_request(f.body)
    mutator = Mutator(seeds, seed)
    outcomes: dict[str, int] = {}
    gc.collect()
    rss_before = _max_rss_kib()
    started = time.perf_counter()
    for i in range(count):
        data = mutator.mutant()
        try:
            decode_request(data)
            name = "decoded"
        except ALLOWED as exc:
            name = type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - the finding this test exists for
            pytest.fail(f"seed={seed} input #{i}: decode_request raised "
                        f"{type(exc).__name__}: {exc}\nmutant hex: {data.hex()}")
        outcomes[name] = outcomes.get(name, 0) + 1
    elapsed = time.perf_counter() - started
    growth = _max_rss_kib() - rss_before
    print(f"\nfuzz seed={seed}: {count} inputs in {elapsed:.1f} s "
          f"({count / elapsed:,.0f}/s), peak RSS +{growth} KiB, outcomes {outcomes}")
    assert growth <= MAX_RSS_GROWTH_KIB, \
        f"seed={seed}: peak RSS grew {growth} KiB over {count} inputs"
    return outcomes


def test_seed_file_covers_the_client_apis():
    frames = load_frames(FRAMES_FILE)
    assert len(frames) >= 50 and len({f.api_key for f in frames}) >= 15


def test_fuzz_decode_request():
    outcomes = run_fuzz(50_000, _seed())
    # The mutator must reach past the header: a run in which nearly nothing decodes, or
    # nothing is refused, is not exercising the decoder.
    assert outcomes.get("decoded", 0) > 1000 and outcomes.get("DecodeError", 0) > 10_000


@pytest.mark.slow
def test_fuzz_decode_request_million():
    run_fuzz(1_000_000, _seed())
