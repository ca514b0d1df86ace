"""Mutated real-client frames over sockets against a real 2-worker broker.

Seeds are the request frames confluent-kafka, kafka-python and kcat sent through a
recording proxy (pybroker.testing.frames; tests/data/frames/clients.json). Mutants
are pipelined in bounded batches over several connections; the broker may answer a
mutant, or close its connection with a named reason (malformed, unsupported...), and
we reconnect. Afterwards: no worker died or was restarted, no request handler raised
(the "internal error in a request handler" close reason) and no traceback reached the
broker log, each worker's RSS stayed within 2x of its start, and a plain produce +
fetch still works.
"""
from __future__ import annotations

import os
import random
import socket
import time
from pathlib import Path

import pytest

from pybroker.protocol import ApiKey
from pybroker.records import build_batch, parse_batches, parse_records
from pybroker.testing.frames import (RecordingProxy, capture_clients, load_frames,
                                     save_frames, select_frames)

FRAMES_FILE = Path(__file__).parent.parent / "data" / "frames" / "clients.json"
# Every API a client sent through the proxy in the capture; the capture test checks
# the recording still covers them (a client upgrade that stops sending one shows).
CAPTURED_APIS = {ApiKey.API_VERSIONS, ApiKey.METADATA, ApiKey.PRODUCE, ApiKey.FETCH,
                 ApiKey.LIST_OFFSETS, ApiKey.FIND_COORDINATOR, ApiKey.JOIN_GROUP,
                 ApiKey.SYNC_GROUP, ApiKey.HEARTBEAT, ApiKey.OFFSET_COMMIT,
                 ApiKey.OFFSET_FETCH, ApiKey.LEAVE_GROUP, ApiKey.CREATE_TOPICS,
                 ApiKey.DELETE_TOPICS, ApiKey.DESCRIBE_CONFIGS, ApiKey.INIT_PRODUCER_ID,
                 ApiKey.INCREMENTAL_ALTER_CONFIGS}


@pytest.mark.slow
def test_capture_client_frames(broker):
    """Real clients through the recording proxy; with PYBROKER_WRITE_FRAMES=1 the
    selection is written to tests/data/frames/clients.json."""
    with RecordingProxy(broker.ports) as proxy:
        capture_clients(proxy)
        frames = select_frames(proxy.frames)
    apis = {f.api_key for f in frames}
    assert CAPTURED_APIS <= apis, f"not captured: {sorted(CAPTURED_APIS - apis)}"
    assert {f.client for f in frames} == {"confluent", "kafka-python", "kcat"}
    if os.environ.get("PYBROKER_WRITE_FRAMES") == "1":
        FRAMES_FILE.parent.mkdir(parents=True, exist_ok=True)
        save_frames(frames, FRAMES_FILE)
