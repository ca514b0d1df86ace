"""Every (API, version) the broker implements against Apache Kafka's own message specs.

The oracle is the spec JSON files (clients/src/main/resources/common/message/*.json in
apache/kafka) as kafka-python ships them, read at test time, and a small encoder in this
file that follows them and nothing else: it knows the wire types
(pybroker.testing.spec_bytes) and the spec's rules (versions, nullableVersions,
flexibleVersions, taggedVersions and tags, commonStructs), not pybroker's schemas. For
each request and response, a sample body is generated from the spec for that version
(every field present in it, nulls where the version allows them, tagged fields set so
they are sent), encoded by both, and the bytes must be equal; the codec's decoding of
those bytes must give the sample back. So a field we left out, added, misplaced,
mistyped, or made nullable or tagged in the wrong versions fails here, in every version.

Versions below a spec's range (the pre-KIP-896 ones we keep, e.g. Produce v0-v2 and
OffsetCommit v0-v1) are not in these files; tests/protocol/test_legacy_versions.py has
hand-made vectors for them.
"""
from __future__ import annotations

import json
import os
import re
import struct
import uuid

import pytest

from pybroker.protocol import APIS, SUPPORTED, codec
from pybroker.testing.spec_bytes import array, i8, i16, i32, i64, string, uvarint

import kafka

SPEC_DIR = os.path.join(os.path.dirname(kafka.__file__), "protocol", "schemas", "resources")


def load_spec(name: str) -> dict:
    with open(os.path.join(SPEC_DIR, name + ".json")) as f:
        text = "\n".join(line for line in f if not line.lstrip().startswith("//"))
    return json.loads(text)


def versions(text: str | None) -> range:
    """A spec version range: "none", "3", "1-3", "4+"."""
    if text is None or text == "none":
        return range(0)
    if text.endswith("+"):
        return range(int(text[:-1]), 1 << 15)
    low, _, high = text.partition("-")
    return range(int(low), int(high or low) + 1)


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


FIXED = {"int8": i8, "int16": i16, "int32": i32, "int64": i64,
         "uint16": lambda v: struct.pack(">H", v), "float64": lambda v: struct.pack(">d", v),
         "bool": lambda v: i8(int(v)), "uuid": lambda v: v.bytes}


class SpecMessage:
    """One spec file: its fields with struct types resolved (inline or commonStructs)."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.valid = versions(spec["validVersions"])
        self.flexible = versions(spec["flexibleVersions"])
        self.common = {s["name"]: s["fields"] for s in spec.get("commonStructs", [])}

    def fields_of(self, field: dict) -> list[dict]:
        return field.get("fields") or self.common[field["type"].removeprefix("[]")]

    # --- samples ---------------------------------------------------------------------

    def sample(self, fields: list[dict], version: int, seed: int = 1) -> dict:
        return {snake(f["name"]): self._value(f, version, seed + i)
                for i, f in enumerate(fields) if version in versions(f["versions"])}

    def _value(self, f: dict, version: int, seed: int):
        kind = f["type"]
        nullable = version in versions(f.get("nullableVersions"))
        if nullable and seed % 3 == 0 and "tag" not in f:
            return None
        if kind.startswith("[]"):
            inner = kind[2:]
            if inner in FIXED or inner in ("string", "bytes"):
                return [self._scalar(inner, seed + k) for k in range(2)]
            return [self.sample(self.fields_of(f), version, seed * 5 + k) for k in range(2)]
        if kind in FIXED or kind in ("string", "bytes", "records"):
            return self._scalar(kind, seed)
        return self.sample(self.fields_of(f), version, seed * 3)

    @staticmethod
    def _scalar(kind: str, seed: int):
        if kind == "bool":
            return seed % 2 == 1
        if kind == "uuid":
            return uuid.UUID(int=seed * 0x1000_0000_0000_0001 + 7)
        if kind == "float64":
            return seed + 0.5
        if kind == "string":
            return f"s{seed}"
        if kind in ("bytes", "records"):
            return bytes(range(seed % 5 + 1))
        return seed % 100 + 2   # never a spec default (-1, 0) nor 1 (a bool-like 1)

    # --- the reference encoder -------------------------------------------------------

    def encode(self, fields: list[dict], version: int, value: dict) -> bytes:
        flexible = version in self.flexible
        out, tagged = b"", []
        for f in fields:
            if version not in versions(f["versions"]):
                continue
            payload = self._encode_value(f, version, value[snake(f["name"])], flexible)
            if version in versions(f.get("taggedVersions")):
                tagged.append((f["tag"], payload))
            else:
                out += payload
        if flexible:
            out += uvarint(len(tagged))
            for tag, payload in sorted(tagged):
                out += uvarint(tag) + uvarint(len(payload)) + payload
        return out

    def _encode_value(self, f: dict, version: int, v, flexible: bool) -> bytes:
        kind = f["type"]
        if kind.startswith("[]"):
            if v is None:
                return array(None, flexible)
            inner = kind[2:]
            if inner in FIXED or inner in ("string", "bytes"):
                return array([self._encode_scalar(inner, x, flexible) for x in v], flexible)
            return array([self.encode(self.fields_of(f), version, x) for x in v], flexible)
        if kind in FIXED or kind in ("string", "bytes", "records"):
            return self._encode_scalar(kind, v, flexible)
        return self.encode(self.fields_of(f), version, v)

    @staticmethod
    def _encode_scalar(kind: str, v, flexible: bool) -> bytes:
        if kind in FIXED:
            return FIXED[kind](v)
        if kind == "string":
            return string(v, flexible)
        if v is None:   # bytes, records
            return uvarint(0) if flexible else i32(-1)
        return (uvarint(len(v) + 1) if flexible else i32(len(v))) + v


def cases():
    for _key, message in sorted(APIS.items()):
        low, high = message.version_range   # what the schema declares (tested to be
                                            # what ApiVersions advertises, test_apis.py)
        for side in ("Request", "Response"):
            spec = SpecMessage(load_spec(message.name + side))
            for version in range(low, high + 1):
                if version in spec.valid:
                    yield pytest.param(message, side, spec, version,
                                       id=f"{message.name}{side}-v{version}")


@pytest.mark.parametrize("message,side,spec,version", list(cases()))
def test_codec_writes_and_reads_what_the_spec_says(message, side, spec, version):
    ours = message.request if side == "Request" else message.response
    flexible = message.is_flexible(version)
    assert flexible == (version in spec.flexible), "flexible versions differ from the spec"
    fields = spec.spec["fields"]
    value = spec.sample(fields, version)
    expected = spec.encode(fields, version, value)
    assert codec.encode(ours, version, value, flexible=flexible).hex() == expected.hex()
    decoded, end = codec.decode(ours, version, expected, flexible=flexible)
    assert end == len(expected)
    assert shaped_like(decoded, value) == value


def shaped_like(decoded, sample):
    """decoded cut to the keys of sample, at every depth (decoding also fills in the
    defaults of fields this version does not have)."""
    if isinstance(sample, dict):
        return {k: shaped_like(decoded[k], v) for k, v in sample.items()}
    if isinstance(sample, list) and sample and isinstance(sample[0], dict):
        return [shaped_like(d, v) for d, v in zip(decoded, sample)]
    return bytes(decoded) if isinstance(decoded, memoryview) else decoded


def test_every_api_we_implement_has_a_spec_and_versions_in_its_range():
    """The broker advertises nothing above Kafka's own newest version of an API."""
    assert os.path.isdir(SPEC_DIR), f"kafka-python's spec files are missing: {SPEC_DIR}"
    for key, message in APIS.items():
        for side in ("Request", "Response"):
            spec = load_spec(message.name + side)
            assert spec["apiKey"] == key, message.name
            assert SUPPORTED[key][1] <= versions(spec["validVersions"])[-1], message.name
