"""pybroker's own Python client, speaking the Kafka protocol to the broker.

    Producer    partitioning by key (murmur2, as Java and librdkafka's murmur2_random),
                round-robin or random without one; batching by size and linger;
                acks 0/1/all; ordered retries; a DeliveryResult per message (P13)
    Consumer    the paper's ZooKeeper-coordinated consumer: create_message_streams,
                seek (rewind, P12), commit, close; rebalance by Algorithm 1 (P16-P20)

Modules: connection (blocking protocol connection, cluster metadata), partitioner,
producer, consumer, rebalance (the ZooKeeper registries and Algorithm 1).
"""
from .connection import ConnectionFailed, KafkaError, UnknownTopicError
from .consumer import Consumer, ConsumerClosed, ConsumerTimeout, Message, MessageStream
from .partitioner import Partitioner, murmur2, to_positive
from .producer import DeliveryResult, Producer, ProducerClosed
from .rebalance import RebalanceError

__all__ = ["Producer", "DeliveryResult", "ProducerClosed", "Consumer", "MessageStream",
           "Message", "ConsumerClosed", "ConsumerTimeout", "RebalanceError", "Partitioner",
           "murmur2", "to_positive", "KafkaError", "ConnectionFailed", "UnknownTopicError"]
