"""Broker settings: one table of definitions drives parsing, validation and the docs.

A setting has Kafka's name where Kafka has one (`log.dirs`, `num.partitions`, ...).
Values come from, in rising precedence: the defaults below, a properties file in Java's
syntax (what Kafka reads: `read_properties`), and command-line overrides. Within one
source, Kafka's other spellings of a setting (`log.retention.hours`, ...: `ALIASES`)
count only when the setting itself is absent, in Kafka's order of precedence. Kafka's
broker keys this broker does not use are ignored with one warning each; unknown keys
(with the nearest known key suggested) and bad values are refused with a message
naming the key, the value, what is allowed and, from a file, the file and line.
"""
from __future__ import annotations

import difflib
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from pybroker.errors import PyBrokerError
from pybroker.log.config import LogConfig
from pybroker.core import BATCH_LOG_OVERHEAD

_LOG_DEFAULTS = LogConfig()
log = logging.getLogger(__name__)


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
    # Kafka takes a comma-separated list; a broker here stores in one directory, so a
    # list is refused rather than taken for one directory named "/a,/b"
    Setting("log.dirs", str, "./pybroker-data", "Data directory (one per broker).",
            lambda v: bool(v) and "," not in v, "one directory (no comma-separated list)"),
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


# --- properties files (java.util.Properties.load) ------------------------------------

_WHITESPACE = " \t\f"                   # Java's: space, tab, form feed
_NATURAL_LINE_END = re.compile(r"\r\n|\r|\n")  # not str.splitlines: \f, \v, \x85 are not ends
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _continues(line: str) -> bool:
    """Whether a natural line ends in an odd number of backslashes (escaped line end)."""
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


def _logical_lines(text: str):
    """(number of its first natural line, text) of each logical line: blank and comment
    lines skipped, continuations joined without the backslash and the next line's
    leading whitespace."""
    lines = _NATURAL_LINE_END.split(text)
    i = 0
    while i < len(lines):
        number, line = i + 1, lines[i].lstrip(_WHITESPACE)
        i += 1
        if not line or line[0] in "#!":
            continue  # only a logical line's first natural line can be a comment
        parts = []
        while _continues(line):  # at the end of the text, the backslash is dropped
            parts.append(line[:-1])
            line = lines[i].lstrip(_WHITESPACE) if i < len(lines) else ""
            i += 1
        parts.append(line)
        logical = "".join(parts)
        if logical:  # empty: a lone `\` continued onto a blank line
            yield number, logical


def _split_key(line: str) -> tuple[str, str]:
    """A logical line's raw key and raw value: the key ends at the first unescaped
    `=`, `:` or whitespace; whitespace, then one `=` or `:` (if the key did not end at
    one), then whitespace again separate it from the value."""
    end, escaped = len(line), False
    for i, c in enumerate(line):
        if not escaped and (c in "=:" or c in _WHITESPACE):
            end = i
            break
        escaped = c == "\\" and not escaped
    key, rest = line[:end], line[end:]
    separated = rest[:1] in ("=", ":")
    rest = rest[1:] if separated else rest
    rest = rest.lstrip(_WHITESPACE)
    if not separated and rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(_WHITESPACE)
    return key, rest


def _unescape(raw: str, where: str) -> str:
    """Java's escapes: \\t \\n \\r \\f, \\uXXXX (UTF-16, so surrogate pairs join), and a
    backslash before any other character stands for that character."""
    out, i = [], 0
    while i < len(raw):
        c, i = raw[i], i + 1
        if c != "\\":
            out.append(c)
            continue
        if i == len(raw):  # cannot happen after _logical_lines; dropped, as Java does
            break
        c, i = raw[i], i + 1
        if c == "u":
            digits, i = raw[i:i + 4], i + 4
            if len(digits) < 4 or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise ConfigError(f"{where}: malformed \\uXXXX escape: \\u{digits}")
            out.append(chr(int(digits, 16)))
        else:
            out.append(_ESCAPES.get(c, c))
    return _join_surrogates("".join(out))


def _join_surrogates(text: str) -> str:
    try:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    except UnicodeDecodeError:  # a lone surrogate: left as written
        return text


def _property_lines(text: str, name: str):
    """(line number, key, value) of each property in properties-file text."""
    for number, line in _logical_lines(text):
        key, value = _split_key(line)
        where = f"{name}:{number}"
        yield number, _unescape(key, where), _unescape(value, where)


def parse_properties(text: str, name: str = "<properties>") -> dict[str, str]:
    """The properties in `text` (see read_properties); `name` goes in error messages."""
    return {key: value for _, key, value in _property_lines(text, name)}


def _read_text(path: str) -> str:
    """The file as UTF-8, else (not valid UTF-8) as ISO-8859-1, the encoding Kafka's
    Properties.load(InputStream) reads every file in. OSError if it cannot be read."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("iso-8859-1")


def read_properties(path: str) -> dict[str, str]:
    """The properties of a file in Java's properties syntax, the rules of
    java.util.Properties.load, which Kafka reads server.properties with:

    - lines end at \\n, \\r or \\r\\n; a line of whitespace (space, tab, form feed) is
      blank; a line whose first non-whitespace character is `#` or `!` is a comment;
    - a line ending in an odd number of backslashes continues on the next line, whose
      leading whitespace is dropped (a comment line never continues);
    - the key runs from the first non-whitespace character to the first unescaped `=`,
      `:` or whitespace; whitespace, one `=` or `:`, and whitespace separate it from the
      value, which is the rest of the line (trailing whitespace included: settings strip
      it, as Kafka does); a key alone has the empty value;
    - escapes in keys and values: \\t \\n \\r \\f, \\uXXXX, and a backslash before any
      other character (`\\=`, `\\:`, `\\ `, `\\\\`, `\\#`) stands for that character;
    - a later line with the same key replaces an earlier one.

    The file is read as UTF-8 (a BOM is skipped); one that is not valid UTF-8 is read as
    ISO-8859-1, as Kafka reads every file. ConfigError (naming file:line) only for a
    malformed \\uXXXX escape, the one thing these rules refuse; OSError if the file
    cannot be read."""
    return parse_properties(_read_text(path), path)


# --- Kafka's keys: aliases of ours, and those this broker does not use ---------------

@dataclass(frozen=True)
class Alias:
    """Another name Kafka has for one of our settings; it counts only when the
    setting's own key is absent (and no alias listed before it is present)."""
    name: str
    key: str
    unit: int = 0                    # the setting's value is the alias's times this; 0: same
    negative_means_never: bool = False  # a negative result is -1 (Kafka's retention rule)


ALIASES: tuple[Alias, ...] = (  # in Kafka's precedence: ms over minutes over hours
    Alias("log.retention.minutes", "log.retention.ms", 60_000, True),
    Alias("log.retention.hours", "log.retention.ms", 3_600_000, True),
    Alias("log.roll.hours", "log.roll.ms", 3_600_000),
    Alias("log.dir", "log.dirs"),                    # Kafka: log.dirs over log.dir
    Alias("host.name", "listeners.host"),            # Kafka before 3.0
    Alias("advertised.host.name", "advertised.host"),  # Kafka before 3.0
)
ALIAS_BY_NAME = {a.name: a for a in ALIASES}

# Apache Kafka's broker settings (KafkaConfig, Kafka 2.x-3.x; ZooKeeper and KRaft mode).
# Those that are ours or an alias of ours are taken out below (KAFKA_IGNORED).
_KAFKA_BROKER_KEYS = """
zookeeper.connect zookeeper.session.timeout.ms zookeeper.connection.timeout.ms
zookeeper.sync.time.ms zookeeper.set.acl zookeeper.max.in.flight.requests
zookeeper.ssl.client.enable zookeeper.clientCnxnSocket zookeeper.ssl.keystore.location
zookeeper.ssl.keystore.password zookeeper.ssl.keystore.type zookeeper.ssl.truststore.location
zookeeper.ssl.truststore.password zookeeper.ssl.truststore.type zookeeper.ssl.protocol
zookeeper.ssl.enabled.protocols zookeeper.ssl.cipher.suites
zookeeper.ssl.endpoint.identification.algorithm zookeeper.ssl.crl.enable
zookeeper.ssl.ocsp.enable zookeeper.metadata.migration.enable
broker.id.generation.enable reserved.broker.max.id broker.id message.max.bytes
num.network.threads num.io.threads background.threads num.replica.alter.log.dirs.threads
queued.max.requests queued.max.request.bytes request.timeout.ms
socket.connection.setup.timeout.ms socket.connection.setup.timeout.max.ms
process.roles initial.broker.registration.timeout.ms broker.heartbeat.interval.ms
broker.session.timeout.ms node.id metadata.log.dir
metadata.log.max.record.bytes.between.snapshots metadata.log.max.snapshot.interval.ms
controller.listener.names sasl.mechanism.controller.protocol metadata.log.segment.min.bytes
metadata.log.segment.bytes metadata.log.segment.ms metadata.max.retention.bytes
metadata.max.retention.ms metadata.max.idle.interval.ms controller.quorum.voters
controller.quorum.bootstrap.servers controller.quorum.election.timeout.ms
controller.quorum.fetch.timeout.ms controller.quorum.election.backoff.max.ms
controller.quorum.append.linger.ms controller.quorum.request.timeout.ms
controller.quorum.retry.backoff.ms authorizer.class.name
listeners advertised.listeners listener.security.protocol.map control.plane.listener.name
early.start.listeners host.name port advertised.host.name advertised.port
socket.send.buffer.bytes socket.receive.buffer.bytes socket.request.max.bytes
socket.listen.backlog.size max.connections.per.ip max.connections.per.ip.overrides
max.connections max.connection.creation.rate connections.max.idle.ms
connection.failed.authentication.delay.ms broker.rack
num.partitions log.dirs log.dir log.segment.bytes log.roll.ms log.roll.hours
log.roll.jitter.ms log.roll.jitter.hours log.retention.ms log.retention.minutes
log.retention.hours log.retention.bytes log.retention.check.interval.ms log.cleanup.policy
log.cleaner.threads log.cleaner.io.max.bytes.per.second log.cleaner.dedupe.buffer.size
log.cleaner.io.buffer.size log.cleaner.io.buffer.load.factor log.cleaner.backoff.ms
log.cleaner.min.cleanable.ratio log.cleaner.enable log.cleaner.delete.retention.ms
log.cleaner.min.compaction.lag.ms log.cleaner.max.compaction.lag.ms
log.index.size.max.bytes log.index.interval.bytes log.flush.interval.messages
log.segment.delete.delay.ms log.flush.scheduler.interval.ms log.flush.interval.ms
log.flush.offset.checkpoint.interval.ms log.flush.start.offset.checkpoint.interval.ms
log.preallocate log.message.format.version log.message.timestamp.type
log.message.timestamp.difference.max.ms log.message.timestamp.before.max.ms
log.message.timestamp.after.max.ms log.max.id.map.snapshots
log.message.downconversion.enable log.local.retention.ms log.local.retention.bytes
num.recovery.threads.per.data.dir auto.create.topics.enable min.insync.replicas
create.topic.policy.class.name alter.config.policy.class.name
controller.socket.timeout.ms default.replication.factor replica.lag.time.max.ms
replica.socket.timeout.ms replica.socket.receive.buffer.bytes replica.fetch.max.bytes
replica.fetch.wait.max.ms replica.fetch.min.bytes replica.fetch.response.max.bytes
replica.fetch.backoff.ms num.replica.fetchers replica.high.watermark.checkpoint.interval.ms
fetch.purgatory.purge.interval.requests producer.purgatory.purge.interval.requests
delete.records.purgatory.purge.interval.requests auto.leader.rebalance.enable
leader.imbalance.per.broker.percentage leader.imbalance.check.interval.seconds
unclean.leader.election.enable security.inter.broker.protocol inter.broker.protocol.version
inter.broker.listener.name replica.selector.class
controlled.shutdown.max.retries controlled.shutdown.retry.backoff.ms
controlled.shutdown.enable
group.min.session.timeout.ms group.max.session.timeout.ms group.initial.rebalance.delay.ms
group.max.size offset.metadata.max.bytes offsets.load.buffer.size
offsets.topic.replication.factor offsets.topic.num.partitions offsets.topic.segment.bytes
offsets.topic.compression.codec offsets.retention.minutes
offsets.retention.check.interval.ms offsets.commit.timeout.ms offsets.commit.required.acks
transactional.id.expiration.ms transaction.max.timeout.ms transaction.state.log.min.isr
transaction.state.log.load.buffer.size transaction.state.log.num.partitions
transaction.state.log.segment.bytes transaction.state.log.replication.factor
transaction.abort.timed.out.transaction.cleanup.interval.ms
transaction.remove.expired.transaction.cleanup.interval.ms
transaction.partition.verification.enable producer.id.expiration.ms
producer.id.expiration.check.interval.ms
max.incremental.fetch.session.cache.slots fetch.max.bytes
quota.window.num replication.quota.window.num alter.log.dirs.replication.quota.window.num
controller.quota.window.num quota.window.size.seconds replication.quota.window.size.seconds
alter.log.dirs.replication.quota.window.size.seconds controller.quota.window.size.seconds
client.quota.callback.class quota.producer.default quota.consumer.default
delete.topic.enable compression.type
metrics.sample.window.ms metrics.num.samples metric.reporters metrics.recording.level
auto.include.jmx.reporter kafka.metrics.reporters kafka.metrics.polling.interval.secs
principal.builder.class connections.max.reauth.ms security.providers
ssl.protocol ssl.provider ssl.cipher.suites ssl.enabled.protocols ssl.keystore.type
ssl.keystore.location ssl.keystore.password ssl.key.password ssl.keystore.key
ssl.keystore.certificate.chain ssl.truststore.type ssl.truststore.location
ssl.truststore.password ssl.truststore.certificates ssl.keymanager.algorithm
ssl.trustmanager.algorithm ssl.endpoint.identification.algorithm
ssl.secure.random.implementation ssl.client.auth ssl.principal.mapping.rules
ssl.engine.factory.class
sasl.mechanism.inter.broker.protocol sasl.jaas.config sasl.enabled.mechanisms
sasl.server.callback.handler.class sasl.client.callback.handler.class sasl.login.class
sasl.login.callback.handler.class sasl.kerberos.service.name sasl.kerberos.kinit.cmd
sasl.kerberos.ticket.renew.window.factor sasl.kerberos.ticket.renew.jitter
sasl.kerberos.min.time.before.relogin sasl.kerberos.principal.to.local.rules
sasl.login.refresh.window.factor sasl.login.refresh.window.jitter
sasl.login.refresh.min.period.seconds sasl.login.refresh.buffer.seconds
sasl.login.connect.timeout.ms sasl.login.read.timeout.ms sasl.login.retry.backoff.ms
sasl.login.retry.backoff.max.ms sasl.server.max.receive.size
delegation.token.master.key delegation.token.secret.key delegation.token.max.lifetime.ms
delegation.token.expiry.time.ms delegation.token.expiry.check.interval.ms
password.encoder.secret password.encoder.old.secret password.encoder.keyfactory.algorithm
password.encoder.cipher.algorithm password.encoder.key.length password.encoder.iterations
remote.log.storage.system.enable remote.log.storage.manager.class.name
remote.log.metadata.manager.class.name remote.log.manager.task.interval.ms
remote.log.manager.thread.pool.size remote.log.reader.threads
""".split()
_KAFKA_PREFIXES = ("listener.name.",)  # per-listener copies of the keys above
KAFKA_IGNORED = frozenset(_KAFKA_BROKER_KEYS) - BY_KEY.keys() - ALIAS_BY_NAME.keys()
_HINTS = {  # where a Kafka setting's job is done by one of ours
    "listeners": "; pybroker listens at listeners.host on port, port+1, ...",
    "advertised.listeners": "; set advertised.host",
    "advertised.port": "; worker i advertises port+i",
}
_KNOWN_KEYS = sorted(BY_KEY.keys() | ALIAS_BY_NAME.keys() | KAFKA_IGNORED)


@dataclass(frozen=True)
class _Given:
    """A value as one source gave it."""
    raw: Any
    where: str = ""   # "file:line" when it comes from a file
    name: str = ""    # the key as the source wrote it, when not the setting's (an alias)
    label: str = ""   # how messages name it, when not by its key


def _at(where: str, exc: ConfigError) -> ConfigError:
    return ConfigError(f"{where}: {exc}") if where else exc


def _is_kafka_ignored(key: str) -> bool:
    return key in KAFKA_IGNORED or key.startswith(_KAFKA_PREFIXES)


def _unknown(key: str, given: _Given) -> ConfigError:
    near = difflib.get_close_matches(key, _KNOWN_KEYS, n=1)
    hint = (f"did you mean {near[0]!r}?" if near
            else f"known settings: {', '.join(sorted(BY_KEY))}")
    return _at(given.where, ConfigError(f"unknown setting {key!r}; {hint}"))


def _warn_ignored(key: str, given: _Given) -> None:
    where = f"{given.where}: " if given.where else ""
    log.warning("%signoring Kafka setting %s: not used by pybroker%s", where, key,
                _HINTS.get(key, ""))


def _through_alias(alias: Alias, given: _Given) -> _Given:
    """The alias's value as its setting's; ConfigError naming the alias."""
    if not alias.unit:
        return _Given(given.raw, given.where, alias.name, alias.name)
    try:
        count = _parse(Setting(alias.name, int, 0, ""), given.raw)
    except ConfigError as exc:
        raise _at(given.where, exc) from None
    value = count * alias.unit
    if value < 0 and alias.negative_means_never:
        value = -1
    return _Given(value, given.where, alias.name,
                  f"{alias.name}={given.raw!r} as {alias.key}")


def _resolve(given: dict[str, _Given]) -> dict[str, _Given]:
    """One source's values by our keys: aliases turned into their setting (Kafka's
    precedence), Kafka's keys we do not use dropped with a warning, unknown keys
    refused."""
    ours = {}
    for key, value in given.items():
        if key in BY_KEY:
            ours[key] = value
        elif _is_kafka_ignored(key):
            _warn_ignored(key, value)
        elif key not in ALIAS_BY_NAME:
            raise _unknown(key, value)
    for alias in ALIASES:
        if alias.name not in given:
            continue
        if alias.key in ours:
            log.info("%s not used: %s is set (it takes precedence)", alias.name,
                     ours[alias.key].name or alias.key)
            continue
        ours[alias.key] = _through_alias(alias, given[alias.name])
    return ours


def _file_values(path: str) -> dict[str, _Given]:
    return {key: _Given(value, f"{path}:{number}")
            for number, key, value in _property_lines(_read_text(path), path)}


class BrokerConfig:
    """Validated broker settings; read them as `cfg["num.partitions"]`."""

    def __init__(self, values: dict[str, Any] | None = None):
        self._values = {s.key: s.default for s in SETTINGS}
        self._apply(_resolve({k: _Given(v) for k, v in (values or {}).items()}))

    def _apply(self, given: dict[str, _Given]) -> None:
        for key, value in given.items():
            try:
                self._values[key] = _parse(BY_KEY[key], value.raw, value.label)
            except ConfigError as exc:
                raise _at(value.where, exc) from None

    @classmethod
    def load(cls, path: str | None = None, overrides: dict[str, Any] | None = None):
        """The defaults, then the properties file at `path`, then `overrides` (None
        values skipped); aliases are resolved within each of the two."""
        given = _resolve(_file_values(path)) if path else {}
        given.update(_resolve({k: _Given(v) for k, v in (overrides or {}).items()
                               if v is not None}))
        config = cls()
        config._apply(given)
        return config

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
