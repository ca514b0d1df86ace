"""Broker settings and the per-topic overrides read through the same table; Kafka's
other names for our settings, and its keys we do not use."""
import logging

import pytest

from pybroker import config as config_module
from pybroker.config import (ALIASES, BY_KEY, KAFKA_IGNORED, BrokerConfig, ConfigError,
                             TOPIC_SETTINGS, topic_config_error)


def test_a_topic_override_means_what_the_broker_setting_means():
    # message.max.bytes and max.message.bytes both bound a batch the same way
    broker = BrokerConfig({"message.max.bytes": 5000})
    assert (broker.log_config().max_batch_bytes ==
            BrokerConfig().log_config({"max.message.bytes": "5000"}).max_batch_bytes)
    for topic_key, setting in TOPIC_SETTINGS.items():
        if not setting.log_field:
            continue  # not a log setting (min.insync.replicas): see for_topic below
        value = setting.default if setting.default > 0 else 1000
        assert (BrokerConfig({setting.key: value}).log_config() ==
                BrokerConfig().log_config({topic_key: str(value)})), topic_key


def test_for_topic_takes_a_valid_topic_override_else_the_broker_setting():
    broker = BrokerConfig({"min.insync.replicas": 2})
    assert broker.for_topic("min.insync.replicas") == 2
    assert broker.for_topic("min.insync.replicas", {"min.insync.replicas": "3"}) == 3
    assert broker.for_topic("min.insync.replicas", {"min.insync.replicas": "zero"}) == 2
    assert topic_config_error({"unclean.leader.election.enable": "true"})


@pytest.mark.parametrize("configs, named", [
    ({"segment.bytes": "1"}, "segment.bytes='1': allowed 128.."),
    ({"retention.ms": "soon"}, "retention.ms='soon': expected int"),
    ({"flush.ms": "-5"}, "flush.ms='-5': allowed >= 0"),
    ({"no.such.key": "1"}, "unknown topic config 'no.such.key'"),
])
def test_bad_topic_configs_are_named(configs, named):
    assert named in topic_config_error(configs)
    with pytest.raises(ConfigError, match="no.such.key|allowed|expected"):
        BrokerConfig().log_config(configs)


def test_good_topic_configs_pass():
    assert topic_config_error({"segment.bytes": "2048", "retention.ms": "-1"}) is None


HOUR_MS, MINUTE_MS = 3_600_000, 60_000


@pytest.mark.parametrize("values, retention_ms", [
    ({"log.retention.hours": "168"}, 168 * HOUR_MS),
    ({"log.retention.minutes": "90"}, 90 * MINUTE_MS),
    ({"log.retention.hours": "1", "log.retention.minutes": "90"}, 90 * MINUTE_MS),
    ({"log.retention.hours": "1", "log.retention.ms": "5000"}, 5000),
    ({"log.retention.minutes": "1", "log.retention.ms": "5000"}, 5000),
    ({"log.retention.hours": "-1"}, -1),      # Kafka: any negative result is "never"
    ({"log.retention.minutes": "-5"}, -1),
    ({}, BrokerConfig()["log.retention.ms"]),
])
def test_retention_aliases_follow_kafkas_precedence(values, retention_ms):
    assert BrokerConfig(values)["log.retention.ms"] == retention_ms


def test_other_aliases():
    assert BrokerConfig({"log.roll.hours": "2"})["log.roll.ms"] == 2 * HOUR_MS
    assert BrokerConfig({"log.roll.hours": "2", "log.roll.ms": "7"})["log.roll.ms"] == 7
    assert BrokerConfig({"log.dir": "/a"})["log.dirs"] == "/a"
    assert BrokerConfig({"log.dir": "/a", "log.dirs": "/b"})["log.dirs"] == "/b"
    assert BrokerConfig({"host.name": "0.0.0.0"})["listeners.host"] == "0.0.0.0"
    assert BrokerConfig({"advertised.host.name": "h"}).advertised_host == "h"


def test_a_later_source_wins_over_an_earlier_one_whatever_its_spelling(tmp_path):
    path = tmp_path / "server.properties"
    path.write_text("log.retention.ms=5000\nlog.dir=/from-file\n")
    config = BrokerConfig.load(str(path), {"log.retention.hours": "2", "log.dirs": None})
    assert config["log.retention.ms"] == 2 * HOUR_MS
    assert config["log.dirs"] == "/from-file"


@pytest.mark.parametrize("values, named", [
    ({"log.retention.hours": "a week"}, "log.retention.hours='a week': expected int"),
    ({"log.roll.hours": "-1"}, "log.roll.hours='-1' as log.roll.ms=-3600000: allowed >= 1"),
])
def test_a_bad_alias_value_is_named_by_the_alias(values, named):
    with pytest.raises(ConfigError) as exc:
        BrokerConfig(values)
    assert named in str(exc.value)


def test_every_alias_is_a_kafka_key_for_one_of_ours():
    for alias in ALIASES:
        assert alias.key in BY_KEY and alias.name not in BY_KEY, alias
        assert alias.name in config_module._KAFKA_BROKER_KEYS, alias


def test_kafka_keys_we_implement_are_not_ignored():
    assert not KAFKA_IGNORED & BY_KEY.keys()
    assert not KAFKA_IGNORED & {a.name for a in ALIASES}
    for key in ("broker.id", "log.dirs", "log.retention.ms", "log.segment.bytes",
                "zookeeper.connect", "num.partitions", "min.insync.replicas"):
        assert key in BY_KEY and key not in KAFKA_IGNORED


def test_kafkas_keys_we_do_not_use_warn_once_each(caplog):
    caplog.set_level(logging.WARNING, logger="pybroker.config")
    unused = ["listeners", "num.network.threads", "num.io.threads",
              "socket.send.buffer.bytes", "group.initial.rebalance.delay.ms",
              "offsets.topic.replication.factor", "transaction.state.log.min.isr",
              "listener.name.internal.ssl.keystore.location", "log.cleaner.enable"]
    config = BrokerConfig({key: "1" for key in unused} | {"num.partitions": "3"})
    assert config["num.partitions"] == 3
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == len(unused)
    for key in unused:
        assert sum(f"ignoring Kafka setting {key}: not used by pybroker" in m
                   for m in messages) == 1, key


@pytest.mark.parametrize("key, suggestion", [
    ("log.retension.ms", "log.retention.ms"),
    ("num.partition", "num.partitions"),
    ("log.retention.hour", "log.retention.hours"),
    ("num.network.thread", "num.network.threads"),
])
def test_an_unknown_key_is_refused_with_the_nearest_known_key(key, suggestion):
    with pytest.raises(ConfigError) as exc:
        BrokerConfig({key: "1"})
    assert str(exc.value) == f"unknown setting {key!r}; did you mean {suggestion!r}?"


def test_an_unknown_key_with_nothing_near_lists_the_settings():
    with pytest.raises(ConfigError, match=r"unknown setting 'zzz'; known settings: "
                                          r"advertised\.host, "):
        BrokerConfig({"zzz": "1"})
