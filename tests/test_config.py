"""Broker settings and the per-topic overrides read through the same table."""
import pytest

from pybroker.config import BrokerConfig, ConfigError, TOPIC_SETTINGS, topic_config_error


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
