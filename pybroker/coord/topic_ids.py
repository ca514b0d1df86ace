"""Topic IDs (KIP-516): a UUID per topic incarnation, so a topic deleted and created
again under the same name is a different topic to a client, a log directory and a
fetch that hold the old ID.

Written as Kafka writes them: in the topic znode (`"topic_id"`, znode version 3) and in
each partition directory's `partition.metadata`, as the URL-safe base64 of the 16 bytes
without padding (Kafka's `Uuid.toString`, 22 characters). Like Kafka's `Uuid.randomUuid`,
a new ID is never the zero UUID or the reserved metadata-topic ID 1, and never prints
with a leading "-" (which a command line would take for an option).
"""
from __future__ import annotations

import base64
import binascii
import uuid

ZERO = uuid.UUID(int=0)
METADATA_TOPIC_ID = uuid.UUID(int=1)


def new_topic_id() -> uuid.UUID:
    while True:
        candidate = uuid.uuid4()
        if candidate not in (ZERO, METADATA_TOPIC_ID) and not to_text(candidate).startswith("-"):
            return candidate


def to_text(topic_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(topic_id.bytes).rstrip(b"=").decode()


def from_text(text: str) -> uuid.UUID:
    """The UUID of Kafka's text form; ValueError when it is not one."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not a topic id: {text!r}") from exc
    if len(raw) != 16:
        raise ValueError(f"not a topic id: {text!r} ({len(raw)} bytes, not 16)")
    return uuid.UUID(bytes=raw)
