"""The vocabulary in which Kafka messages are declared, as data.

It mirrors Kafka's JSON message specifications
(`clients/src/main/resources/common/message/*.json` in apache/kafka): a message is a
struct of fields; each field has a type, the versions it exists in, the versions in
which it may be null, a default, and for flexible versions optionally a tag. Version
ranges use the spec's notation: "3+", "0-7", "5", "none".

Types are written as in the spec: a primitive name ("int8", "int16", "int32",
"int64", "uint16", "uint32", "float64", "bool", "string", "bytes", "records", "uuid"),
a `Struct` for a nested struct, or `Array(element)` for "[]element".

Field names are the spec's names in snake_case (`ThrottleTimeMs` -> `throttle_time_ms`);
decoded messages are dicts keyed by them.

Declarations are immutable after construction and compared by identity, so the codec
can cache one compiled plan per (struct, version).
"""

from __future__ import annotations

import uuid as _uuid
from typing import Any, Union

from .errors import SchemaError

PRIMITIVES = frozenset({"int8", "int16", "int32", "int64", "uint16", "uint32", "float64",
                        "bool", "string", "bytes", "records", "uuid"})
_NULLABLE_KINDS = frozenset({"string", "bytes", "records"})


class _Missing:
    """Sentinel: no default was declared (the type's zero value applies)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Versions:
    """An inclusive version range parsed from "N+", "N-M", "N" or "none"."""

    __slots__ = ("low", "high", "text")

    def __init__(self, text: str):
        self.text = text
        if text == "none":
            self.low, self.high = 0, -1
        elif text.endswith("+"):
            self.low, self.high = int(text[:-1]), 0x7FFF
        elif "-" in text:
            low, high = text.split("-")
            self.low, self.high = int(low), int(high)
        else:
            self.low = self.high = int(text)
        if self.low < 0 or (self.high < self.low and text != "none"):
            raise SchemaError(f"bad version range {text!r}")

    def __contains__(self, version: int) -> bool:
        return self.low <= version <= self.high

    def __repr__(self) -> str:
        return f"Versions({self.text!r})"


class Struct:
    """A named, ordered list of fields: `Struct("CreatableTopic", Field(...), ...)`."""

    __slots__ = ("name", "fields")

    def __init__(self, name: str, *fields: "Field"):
        self.name = name
        self.fields = tuple(fields)
        names = [f.name for f in fields]
        if len(set(names)) != len(names):
            raise SchemaError(f"struct {name} declares a field name twice: {names}")
        tags = [f.tag for f in fields if f.tag is not None]
        if len(set(tags)) != len(tags):
            raise SchemaError(f"struct {name} declares a tag twice: {tags}")

    def __repr__(self) -> str:
        return f"Struct({self.name!r}, {len(self.fields)} fields)"


class Array:
    """An array of a primitive type or of a `Struct` ("[]int32", "[]CreatableTopic")."""

    __slots__ = ("element",)

    def __init__(self, element: Union[str, Struct]):
        if isinstance(element, str) and element not in PRIMITIVES:
            raise SchemaError(f"unknown array element type {element!r}")
        if isinstance(element, str) and element == "records":
            raise SchemaError("arrays of records do not exist in the protocol")
        self.element = element

    def __repr__(self) -> str:
        name = self.element if isinstance(self.element, str) else self.element.name
        return f"Array({name})"


FieldType = Union[str, Struct, Array]


class Field:
    """One field of a struct.

    name               snake_case spec name
    type               primitive name, Struct or Array
    versions           versions in which the field is present ("0+" by default)
    nullable_versions  versions in which it may be null (strings, bytes, records, arrays)
    default            value when absent from a version or from a message being encoded
                       (MISSING: the type's zero: 0, False, "", b"", [], zero uuid, a
                       struct of defaults; records default to None)
    tag                tag number if this is a tagged field (flexible versions only)
    tagged_versions    versions in which it is sent as a tagged field
    ignorable          if False, encoding a non-default value in a version that lacks
                       the field is an error (the value would be silently lost)
    flexible_versions  overrides the message's flexible versions for this field's own
                       encoding ("none" keeps the request header's client_id a classic
                       string even in header v2)
    """

    __slots__ = ("name", "type", "versions", "nullable_versions", "default", "tag",
                 "tagged_versions", "ignorable", "flexible_versions")

    def __init__(self, name: str, type: FieldType, versions: str = "0+", *,
                 nullable_versions: str = "none", default: Any = MISSING,
                 tag: int | None = None, tagged_versions: str | None = None,
                 ignorable: bool = False, flexible_versions: str | None = None):
        self.name = name
        self.type = type
        self.versions = Versions(versions)
        self.nullable_versions = Versions(nullable_versions)
        self.default = default
        self.tag = tag
        self.tagged_versions = Versions(tagged_versions) if tagged_versions else None
        self.ignorable = ignorable
        self.flexible_versions = Versions(flexible_versions) if flexible_versions else None
        self._check()

    def _check(self) -> None:
        t = self.type
        if isinstance(t, str) and t not in PRIMITIVES:
            raise SchemaError(f"field {self.name}: unknown type {t!r}")
        nullable_ok = isinstance(t, Array) or (isinstance(t, str) and t in _NULLABLE_KINDS)
        if self.nullable_versions.text != "none" and not nullable_ok:
            raise SchemaError(f"field {self.name}: type {t!r} cannot be nullable")
        if (self.tag is None) != (self.tagged_versions is None):
            raise SchemaError(f"field {self.name}: tag and tagged_versions go together")
        if self.default is None and self.nullable_versions.text == "none":
            raise SchemaError(f"field {self.name}: default null on a non-nullable field")

    def present(self, version: int) -> bool:
        return version in self.versions

    def nullable(self, version: int) -> bool:
        return version in self.nullable_versions

    def tagged(self, version: int) -> bool:
        return self.tagged_versions is not None and version in self.tagged_versions

    def default_value(self) -> Any:
        """A fresh default value (a new list or dict each call for arrays and structs)."""
        if self.default is not MISSING:
            d = self.default
            return list(d) if isinstance(d, list) else d
        return zero_value(self.type)

    def __repr__(self) -> str:
        return f"Field({self.name!r}, {self.type!r}, {self.versions.text!r})"


_ZERO = {"int8": 0, "int16": 0, "int32": 0, "int64": 0, "uint16": 0, "uint32": 0,
         "float64": 0.0, "bool": False, "string": "", "bytes": b"", "records": None,
         "uuid": _uuid.UUID(int=0)}


def zero_value(type: FieldType) -> Any:
    """The spec's implicit default of a type (fresh for mutable values)."""
    if isinstance(type, str):
        return _ZERO[type]
    if isinstance(type, Array):
        return []
    return {f.name: f.default_value() for f in type.fields}


class Message:
    """One API: its key, name, the versions we implement, the versions that are
    flexible, and the request and response structs.

    `valid_versions` is the range *this broker* implements (the spec's range may be
    wider); fields whose versions all lie outside it are not transcribed.
    """

    __slots__ = ("api_key", "name", "valid_versions", "flexible_versions", "request",
                 "response")

    def __init__(self, api_key: int, name: str, valid_versions: str, flexible_versions: str,
                 request: list[Field], response: list[Field]):
        self.api_key = api_key
        self.name = name
        self.valid_versions = Versions(valid_versions)
        self.flexible_versions = Versions(flexible_versions)
        self.request = Struct(name + "Request", *request)
        self.response = Struct(name + "Response", *response)

    def is_flexible(self, version: int) -> bool:
        return version in self.flexible_versions

    @property
    def version_range(self) -> tuple[int, int]:
        return self.valid_versions.low, self.valid_versions.high

    def __repr__(self) -> str:
        return f"Message({self.api_key}, {self.name!r}, {self.valid_versions.text!r})"
