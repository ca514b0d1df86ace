"""pybroker: a Kafka-compatible distributed log broker (the 2011 Kafka paper's design)."""

__version__ = "0.1.0"
