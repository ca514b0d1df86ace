"""Mutations of request frames for the fuzz tests, and the batches they are sent in.

Mutator turns seed frame bodies (the real client frames of pybroker.testing.frames,
plus whatever well-formed requests a test adds) into reproducible mutants;
mutant_batches groups them the way the socket fuzz tests pipeline them: up to `size`
mutants that decode, then on every other batch one that does not (it makes the broker
close the connection after answering the others). with_correlation_id stamps a unique
correlation id on a mutant, so an answer, a log line or a traceback names its input.
FUZZ_SETTINGS is what a broker under a fuzz run is set to.
"""
from __future__ import annotations

import random
import struct
from typing import Iterator

from pybroker.protocol import APIS, DecodeError, UnknownApiKey, UnsupportedVersion, \
    decode_request

__all__ = ["Mutator", "mutant_batches", "with_correlation_id", "FUZZ_SETTINGS"]

# Mutated CreateTopics and Metadata frames create topics with mutated names; these keep
# that growth to what a worker's RSS bound can tell apart from a leak (a few hundred
# small topics per 20,000 inputs), without refusing the requests.
FUZZ_SETTINGS = {"max.partitions.per.request": 4, "auto.create.topics.enable": "false",
                 "log.index.size.max.bytes": 4096}


_BOUNDARY_INT32 = (-1, 0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF,
                   -0x80000000, 0x10000, 1 << 24)
_BOUNDARY_INT16 = (-1, 0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, -0x8000)
_BOUNDARY_VARINT = (b"\x00", b"\x01", b"\x7f", b"\xff\x7f", b"\xff\xff\xff\xff\x07",
                    b"\xff\xff\xff\xff\x0f", b"\x80\x80\x80\x80\x80\x01",
                    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")
_SPECIAL_BYTES = (0x00, 0xFF, 0x7F, 0x80)


class Mutator:
    """Seeded mutations of request frame bodies; the same seed gives the same mutants.

    Each mutant is a seed with 1-3 of: bit flips; a byte set to 0x00/0xff/0x7f/0x80;
    truncation; extension (zeros, 0xff or random bytes); an int16/int32 that looks like
    a length or count (its value fits in the bytes after it) set to a boundary (-1, 0,
    0x7fff, 2^31-1, ...); a boundary varint written over bytes (compact lengths in
    flexible versions, record fields); a region duplicated elsewhere; the api key or
    version replaced (another API's body under this header); a splice of two seeds.
    """

    def __init__(self, seeds: list[bytes], seed: int):
        self.seeds = [bytes(s) for s in seeds if len(s) >= 8]
        self.rng = random.Random(seed)
        self._lengths = [self._length_fields(s) for s in self.seeds]
        self._api_keys = sorted(APIS)
        self._ops = (self._flip, self._special, self._truncate, self._extend,
                     self._length, self._length, self._varint, self._duplicate,
                     self._api_swap, self._splice)

    @staticmethod
    def _length_fields(body: bytes) -> list[tuple[int, int]]:
        """(position, width) of int16/int32 values that could be lengths or counts."""
        found = []
        for pos in range(8, len(body) - 1):
            left = len(body) - pos
            if 0 <= struct.unpack_from(">h", body, pos)[0] <= left - 2:
                found.append((pos, 2))
            if pos + 4 <= len(body) and 0 < struct.unpack_from(">i", body, pos)[0] <= left - 4:
                found.append((pos, 4))
        return found

    def mutant(self) -> bytes:
        i = self.rng.randrange(len(self.seeds))
        buf = bytearray(self.seeds[i])
        for _ in range(self.rng.choice((1, 1, 1, 2, 2, 3))):
            op = self.rng.choice(self._ops)
            buf = op(buf, i)
        return bytes(buf)

    def _pos(self, buf) -> int:
        return self.rng.randrange(len(buf)) if buf else 0

    def _flip(self, buf, _i):
        for _ in range(self.rng.randint(1, 8)):
            if buf:
                buf[self._pos(buf)] ^= 1 << self.rng.randrange(8)
        return buf

    def _special(self, buf, _i):
        if buf:
            buf[self._pos(buf)] = self.rng.choice(_SPECIAL_BYTES)
        return buf

    def _truncate(self, buf, _i):
        return buf[:self.rng.randrange(len(buf) + 1)]

    def _extend(self, buf, _i):
        n = self.rng.choice((1, 2, 4, 8, 64, 1024))
        fill = self.rng.choice((b"\x00", b"\xff", None))
        return buf + (fill * n if fill else self.rng.randbytes(n))

    def _length(self, buf, i):
        fields = [f for f in self._lengths[i] if f[0] + f[1] <= len(buf)]
        if not fields:
            return self._special(buf, i)
        pos, width = self.rng.choice(fields)
        if width == 2:
            struct.pack_into(">h", buf, pos, self.rng.choice(_BOUNDARY_INT16))
        else:
            struct.pack_into(">i", buf, pos, self.rng.choice(_BOUNDARY_INT32))
        return buf

    def _varint(self, buf, _i):
        v = self.rng.choice(_BOUNDARY_VARINT)
        pos = self.rng.randrange(8, max(9, len(buf)))
        return buf[:pos] + v + buf[pos + self.rng.choice((0, len(v))):]

    def _duplicate(self, buf, _i):
        if len(buf) < 2:
            return buf
        a = self._pos(buf)
        b = min(len(buf), a + self.rng.choice((1, 2, 4, 8, 32, 256)))
        at = self._pos(buf)
        return buf[:at] + buf[a:b] + buf[at:]

    def _api_swap(self, buf, _i):
        if len(buf) < 4:
            return buf
        if self.rng.random() < 0.5:
            struct.pack_into(">h", buf, 0, self.rng.choice(self._api_keys))
        versions = APIS[struct.unpack_from(">h", buf, 0)[0]].valid_versions \
            if struct.unpack_from(">h", buf, 0)[0] in APIS else None
        if versions is not None and self.rng.random() < 0.8:
            low, high = versions.low, versions.high
            struct.pack_into(">h", buf, 2, self.rng.randint(max(0, low - 1), high + 1))
        else:
            struct.pack_into(">h", buf, 2, self.rng.choice(_BOUNDARY_INT16))
        return buf

    def _splice(self, buf, _i):
        other = self.rng.choice(self.seeds)
        return buf[:self._pos(buf)] + other[self.rng.randrange(len(other)):]


def with_correlation_id(body: bytes, cid: int) -> bytes:
    """The mutant with its correlation id (bytes 4-8) replaced, so an answer or a log
    line can be traced to the input."""
    return body[:4] + cid.to_bytes(4, "big", signed=True) + body[8:]


def mutant_batches(mutator: Mutator, count: int, size: int) -> Iterator[list[bytes]]:
    """Batches of mutants (correlation ids 0, 1, 2...): up to `size` that decode, then
    on every other batch one that does not (it closes the connection, after the
    others were answered), until `count` frames."""
    sent = 0
    flip = False
    while sent < count:
        batch, closer = [], None
        while len(batch) < size and sent + len(batch) < count:
            body = with_correlation_id(mutator.mutant(), sent + len(batch))
            if len(body) < 8:
                continue
            try:
                decode_request(body)
            except (DecodeError, UnsupportedVersion, UnknownApiKey):
                if closer is None:
                    closer = body
                continue
            batch.append(body)
        flip = not flip
        if flip and closer is not None and sent + len(batch) < count:
            batch.append(with_correlation_id(closer, sent + len(batch)))
        sent += len(batch)
        yield batch
