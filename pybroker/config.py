"""Broker settings: one table of definitions drives parsing, validation and the docs.

A setting has Kafka's name where Kafka has one (`log.dirs`, `num.partitions`, ...).
Values come from, in rising precedence: the defaults below, a Kafka-style properties
file (`key=value`, `#` comments), and command-line overrides. Unknown keys and bad
values are refused with a message naming the key, the value and what is allowed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from pybroker.errors import PyBrokerError
from pybroker.log.config import LogConfig
from pybroker.core import BATCH_LOG_OVERHEAD

_LOG_DEFAULTS = LogConfig()


class ConfigError(PyBrokerError, ValueError):
    """A configuration key or value that cannot be used."""


@dataclass(frozen=True)
class Setting:
    key: str
    type: type
    default: Any
    doc: str
    check: Callable[[Any], bool] = lambda v: True
    allowed: str = ""        # what `check` accepts, for error messages and docs
    log_field: str = ""      # the LogConfig field this setting supplies, if any
    topic_key: str = ""      # Kafka's per-topic name of it, if a topic may override it
    to_log: Callable[[Any], Any] = lambda v: v  # the value as its LogConfig field holds it


def _nonneg(v) -> bool:
    return v >= 0


SETTINGS: tuple[Setting, ...] = (
    Setting("broker.id", int, 0, "Broker id; worker i is Kafka node broker.id*100+i.",
            lambda v: 0 <= v <= 20_000_000, "0..20000000"),
    Setting("log.dirs", str, "./pybroker-data", "Data directory (one per broker)."),
    Setting("port", int, 9092, "Base port; worker i listens on port+i.",
            lambda v: 0 <= v <= 65535, "0..65535"),
    Setting("listeners.host", str, "127.0.0.1", "Address the workers bind to."),
    Setting("advertised.host", str, "", "Host name given to clients in metadata "
            "(default: listeners.host)."),
    Setting("num.workers", int, 0, "Worker processes (0: one per CPU).", _nonneg, ">= 0"),
    Setting("zookeeper.connect", str, "", "ZooKeeper connect string host:port[,..][/chroot]; "
            "empty: start a private ZooKeeper under the data dir."),
    Setting("zookeeper.session.timeout.ms", int, 10_000, "ZooKeeper session timeout.",
            lambda v: v >= 1000, ">= 1000"),
    Setting("zookeeper.connection.timeout.ms", int, 18_000, "How long `serve` waits for "
            "ZooKeeper at start before it exits 1 naming the address (Kafka's default).",
            lambda v: v >= 100, ">= 100"),
    Setting("num.partitions", int, 1, "Partitions of an auto-created topic.",
            lambda v: v >= 1, ">= 1"),
    Setting("auto.create.topics.enable", bool, True, "Create unknown topics on metadata "
            "requests."),
    Setting("message.max.bytes", int, 1 << 20, "Largest record batch accepted.",
            lambda v: 61 <= v <= (1 << 31) - 13, "61..2147483635", "max_batch_bytes",
            "max.message.bytes", lambda v: v + BATCH_LOG_OVERHEAD),
    Setting("socket.request.max.bytes", int, 100 << 20, "Largest request frame; larger "
            "frames are refused before their body is read.", lambda v: v >= 1024, ">= 1024"),
    Setting("connections.max.idle.ms", int, 600_000, "Close a client connection idle "
            "this long (Kafka's default); -1: never.", lambda v: v >= -1 and v != 0,
            ">= 1, or -1"),
    Setting("max.connections", int, (1 << 31) - 1, "Client connections one node (worker) "
            "accepts; more are closed at once with a log line.", _nonneg, ">= 0"),
    Setting("max.connections.per.ip", int, (1 << 31) - 1, "Client connections one node "
            "accepts from one IP address.", _nonneg, ">= 0"),
    Setting("max.partitions.per.request", int, 10_000, "Most partitions one CreateTopics "
            "request may ask for in all (Kafka counts the sum over its topics; refused with "
            "POLICY_VIOLATION before anything is built).",
            lambda v: v >= 1, ">= 1"),
    Setting("broker.rack", str, "", "Rack (or zone) of this broker; when every broker has "
            "one, a partition's replicas go on as many racks as there are replicas. Empty: "
            "none."),
    Setting("default.replication.factor", int, 1, "Replicas of a topic created without "
            "a replication factor (auto-created, or -1 in CreateTopics); each on another "
            "broker.", lambda v: 1 <= v <= 32, "1..32"),
    Setting("min.insync.replicas", int, 1, "acks=all is refused (NOT_ENOUGH_REPLICAS) "
            "while the in-sync replica set is smaller than this.", lambda v: 1 <= v <= 32,
            "1..32", topic_key="min.insync.replicas"),
    Setting("replica.lag.time.max.ms", int, 30_000, "A follower that has not caught up "
            "to the leader's log end for this long leaves the ISR.", lambda v: v >= 100,
            ">= 100"),
    Setting("replica.fetch.wait.max.ms", int, 500, "How long a follower's fetch waits at "
            "the leader for new data.", lambda v: 1 <= v <= 60_000, "1..60000"),
    Setting("replica.fetch.max.bytes", int, 1 << 20, "Bytes a follower asks per partition "
            "and fetch (at least one whole batch is always sent).", lambda v: v >= 1024,
            ">= 1024"),
    Setting("replica.fetch.response.max.bytes", int, 10 << 20, "Bytes a follower asks per "
            "fetch in all.", lambda v: v >= 1024, ">= 1024"),
    Setting("unclean.leader.election.enable", bool, False, "Only false is supported: a "
            "partition whose in-sync replicas are all gone stays offline rather than lose "
            "acknowledged records.", lambda v: v is False, "false",
            topic_key="unclean.leader.election.enable"),
    Setting("auto.leader.rebalance.enable", bool, True, "The controller moves "
            "leadership back to each partition's preferred (first) replica once it is in "
            "sync again."),
    Setting("leader.imbalance.check.interval.seconds", int, 300, "How often the "
            "controller looks for partitions not led by their preferred replica.",
            lambda v: v >= 1, ">= 1"),
    Setting("group.max.size", int, 10_000, "Most members (and member ids handed out, "
            "KIP-394) one consumer group may hold; more joins answer GROUP_MAX_SIZE_REACHED "
            "(Kafka's name; its default is unbounded).", lambda v: v >= 1, ">= 1"),
    Setting("log.segment.bytes", int, _LOG_DEFAULTS.segment_bytes, "Segment size (P4).",
            lambda v: 128 <= v <= (1 << 31) - 1, "128..2147483647", "segment_bytes",
            "segment.bytes"),
    Setting("log.roll.ms", int, _LOG_DEFAULTS.segment_ms, "Roll a segment this long after "
            "its first append.", lambda v: v >= 1, ">= 1", "segment_ms",
            "segment.ms"),
    Setting("log.flush.interval.messages", int, _LOG_DEFAULTS.flush_messages, "Flush after "
            "this many messages (P5).", lambda v: v >= 1, ">= 1", "flush_messages",
            "flush.messages"),
    Setting("log.flush.interval.ms", int, _LOG_DEFAULTS.flush_ms, "Flush this long after "
            "the first unflushed append (P5).", _nonneg, ">= 0", "flush_ms",
            "flush.ms"),
    Setting("log.index.interval.bytes", int, _LOG_DEFAULTS.index_interval_bytes, "Bytes of "
            "log between sparse index entries (P8).", _nonneg, ">= 0", "index_interval_bytes",
            "index.interval.bytes"),
    Setting("log.index.size.max.bytes", int, _LOG_DEFAULTS.index_max_bytes, "Preallocated "
            "index size.", lambda v: 64 <= v <= (1 << 31) - 1, "64..2147483647",
            "index_max_bytes"),
    Setting("log.retention.ms", int, _LOG_DEFAULTS.retention_ms, "Delete segments older than "
            "this (P11); -1: never.", lambda v: v >= -1, ">= -1", "retention_ms",
            "retention.ms"),
    Setting("log.retention.bytes", int, _LOG_DEFAULTS.retention_bytes, "Delete old segments "
            "beyond this size per partition; -1: no limit.", lambda v: v >= -1, ">= -1",
            "retention_bytes",
            "retention.bytes"),
    Setting("log.retention.check.interval.ms", int, 60_000, "How often retention runs.",
            lambda v: v >= 10, ">= 10"),
    Setting("log.flush.offset.checkpoint.interval.ms", int, 60_000, "How often the "
            "recovery points and producer-state snapshots that changed are written (Kafka's "
            "name and default; each costs two fsyncs, on the storage thread).",
            lambda v: v >= 10, ">= 10"),
    Setting("log.scrub.interval.ms", int, 3_600_000, "Start a CRC scrub pass over the "
            "sealed segments this long after the previous pass ended; -1: never.",
            lambda v: v >= 10 or v == -1, ">= 10, or -1"),
    Setting("log.scrub.bytes.per.second", int, 16 << 20, "Rate limit of the scrub's reads.",
            lambda v: v >= 1024, ">= 1024"),
    Setting("metrics.port", int, -1, "Port of the Prometheus endpoint served by the "
            "supervisor (GET /metrics); -1: off, 0: any free port.",
            lambda v: -1 <= v <= 65535, "-1..65535"),
    Setting("worker.heartbeat.timeout.ms", int, 10_000, "Restart a worker whose heartbeat "
            "is older than this.", lambda v: v >= 500, ">= 500"),
)
BY_KEY = {s.key: s for s in SETTINGS}
TOPIC_SETTINGS = {s.topic_key: s for s in SETTINGS if s.topic_key}  # by Kafka topic key


def _parse(setting: Setting, raw: Any, name: str = "") -> Any:
    """raw as the setting's type, checked; ConfigError naming `name` (default: the
    setting's key), the value and what is allowed."""
    name = name or setting.key
    if setting.type is bool and isinstance(raw, str):
        if raw.strip().lower() not in ("true", "false"):
            raise ConfigError(f"{name}={raw!r}: expected true or false")
        raw = raw.strip().lower() == "true"
    try:
        value = setting.type(raw.strip() if isinstance(raw, str) else raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={raw!r}: expected {setting.type.__name__}") from None
    if not setting.check(value):
        raise ConfigError(f"{name}={raw!r}: allowed {setting.allowed}")
    return value


def topic_config_error(configs: dict) -> str | None:
    """Why these per-topic settings (Kafka's topic keys) cannot be used, or None."""
    for key, raw in configs.items():
        setting = TOPIC_SETTINGS.get(key)
        if setting is None:
            return f"unknown topic config {key!r}; known: {', '.join(sorted(TOPIC_SETTINGS))}"
        try:
            _parse(setting, raw, key)
        except ConfigError as exc:
            return f"topic config {exc}"
    return None


def read_properties(path: str) -> dict[str, str]:
    """key=value lines of a Kafka-style properties file; # and ! start comments."""
    props = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line[0] in "#!":
                continue
            if "=" not in line:
                raise ConfigError(f"{path}:{n}: expected key=value, got {line!r}")
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


class BrokerConfig:
    """Validated broker settings; read them as `cfg["num.partitions"]`."""

    def __init__(self, values: dict[str, Any] | None = None):
        self._values = {s.key: s.default for s in SETTINGS}
        for key, raw in (values or {}).items():
            setting = BY_KEY.get(key)
            if setting is None:
                raise ConfigError(f"unknown setting {key!r}; known settings: "
                                  f"{', '.join(sorted(BY_KEY))}")
            self._values[key] = _parse(setting, raw)

    @classmethod
    def load(cls, path: str | None = None, overrides: dict[str, Any] | None = None):
        values = read_properties(path) if path else {}
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls(values)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    @property
    def advertised_host(self) -> str:
        return self["advertised.host"] or self["listeners.host"]

    @property
    def workers(self) -> int:
        return self["num.workers"] or os.cpu_count() or 1

    def log_config(self, topic_config: dict[str, Any] | None = None) -> LogConfig:
        """The LogConfig of a partition: the broker's settings, overridden by its topic's
        (Kafka's topic keys, as CreateTopics and AlterConfigs store them). ConfigError
        for a topic value these settings refuse."""
        values = {s.log_field: s.to_log(self[s.key]) for s in SETTINGS if s.log_field}
        for key, raw in (topic_config or {}).items():
            setting = TOPIC_SETTINGS.get(key)
            if setting is None:
                raise ConfigError(f"unknown topic config {key!r}")
            value = _parse(setting, raw, key)
            if setting.log_field:  # others (min.insync.replicas) are not the log's
                values[setting.log_field] = setting.to_log(value)
        return LogConfig(**values)

    def for_topic(self, key: str, topic_config: dict[str, Any] | None = None) -> Any:
        """A setting's value for one topic: its topic override when it has a valid one
        (Kafka's topic key), else the broker's."""
        setting = BY_KEY[key]
        raw = (topic_config or {}).get(setting.topic_key) if setting.topic_key else None
        if raw is None:
            return self[key]
        try:
            return _parse(setting, raw, setting.topic_key)
        except ConfigError:
            return self[key]


def reference_table() -> str:
    """The settings as a Markdown table (the README's configuration reference)."""
    lines = ["| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        lines.append(f"| `{s.key}` | `{s.default!r}` | {s.allowed or 'any'} | {s.doc} |")
    return "\n".join(lines)
