"""connections.max.idle.ms, max.connections and max.connections.per.ip (Kafka's names)
against a real one-worker broker over real sockets. Every wait is bounded."""
from __future__ import annotations

import socket

from pybroker.protocol import ApiKey
from pybroker.testing.broker_plugin import RawClient
from pybroker.testing.poll import wait_for


def answers(client: RawClient) -> bool:
    return client.request(ApiKey.API_VERSIONS, 0, {})["error_code"] == 0


def accepted_now(broker) -> bool:
    """A new connection is served (the broker may not have seen a close yet)."""
    with broker.client() as c:
        try:
            return answers(c)
        except (ConnectionError, OSError):
            return False


def client_from(broker, source_ip: str) -> RawClient:
    """A RawClient whose socket is bound to source_ip (any 127/8 address is local)."""
    client = RawClient.__new__(RawClient)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10.0)
    sock.bind((source_ip, 0))
    sock.connect(("127.0.0.1", broker.ports[0]))
    client.sock, client.client_id, client._next_correlation_id = sock, "limits", 1
    return client


def test_an_idle_connection_is_closed_and_a_long_poll_is_not_idle(broker_factory):
    broker = broker_factory(workers=1, settings={"connections.max.idle.ms": 600})
    broker.create_topic("quiet", 1)
    with broker.client() as waiting:
        # a fetch long-polling for 2 s owes an answer: not idle although nothing is read
        body = waiting.request(ApiKey.FETCH, 4, {
            "replica_id": -1, "max_wait_ms": 2000, "min_bytes": 1, "max_bytes": 1 << 20,
            "isolation_level": 0, "topics": [{"topic": "quiet", "partitions": [{
                "partition": 0, "fetch_offset": 0, "partition_max_bytes": 1 << 20}]}]})
        assert body["responses"][0]["partitions"][0]["error_code"] == 0
        assert waiting.is_closed_by_peer(timeout=10.0)   # then idle: closed
    assert "idle longer than connections.max.idle.ms" in broker.log_tail(1 << 20)


def test_max_connections_refuses_past_the_limit_and_recovers(broker_factory):
    broker = broker_factory(workers=1, settings={"max.connections": 3})
    clients = [broker.client() for _ in range(3)]
    try:
        assert all(answers(c) for c in clients)
        with broker.client() as extra:
            assert extra.is_closed_by_peer(timeout=10.0)
        clients.pop().close()
        wait_for(lambda: accepted_now(broker), "a connection accepted after one closed", 10.0)
    finally:
        for c in clients:
            c.close()
    assert "max.connections reached" in broker.log_tail(1 << 20)


def test_max_connections_per_ip_counts_each_address(broker_factory):
    broker = broker_factory(workers=1, settings={"max.connections.per.ip": 2})
    local = [client_from(broker, "127.0.0.1") for _ in range(2)]
    try:
        assert all(answers(c) for c in local)
        third = client_from(broker, "127.0.0.1")
        assert third.is_closed_by_peer(timeout=10.0)
        third.close()
        other = client_from(broker, "127.0.0.2")   # another address has its own count
        assert answers(other)
        other.close()
    finally:
        for c in local:
            c.close()
    assert "max.connections.per.ip reached" in broker.log_tail(1 << 20)
