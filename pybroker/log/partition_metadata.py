"""`partition.metadata`: the topic ID a partition directory belongs to (KIP-516), in
Kafka's format:

    version: 0
    topic_id: <the ID as coord/topic_ids.py prints it>

A directory holds one incarnation of a topic. When a topic is deleted and created again
while a broker is down, that broker finds a directory under the old name holding the
old ID: `claim` moves it aside as `<dir>-<old id>-stray` (kept for the operator, never
served, as Kafka's KRaft brokers do with stray logs) so the new topic starts empty here
and copies from its leader. Writes are atomic (a temporary file renamed over, the
directory synced) so a crash leaves the old file or the new one.
"""
from __future__ import annotations

import logging
import os
import uuid

from pybroker.coord import topic_ids

log = logging.getLogger("pybroker.log")

FILE = "partition.metadata"
VERSION = 0


class PartitionMetadataError(ValueError):
    """partition.metadata exists but is not one this format can read."""


def read(directory: str) -> uuid.UUID | None:
    """The topic ID recorded in directory, or None when there is no file."""
    try:
        with open(os.path.join(directory, FILE), encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    if fields.get("version") != str(VERSION) or "topic_id" not in fields:
        raise PartitionMetadataError(f"{directory}/{FILE}: not version {VERSION} with a "
                                     f"topic_id: {text[:200]!r}")
    try:
        return topic_ids.from_text(fields["topic_id"])
    except ValueError as exc:
        raise PartitionMetadataError(f"{directory}/{FILE}: {exc}") from None


def write(directory: str, topic_id: uuid.UUID) -> None:
    path = os.path.join(directory, FILE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"version: {VERSION}\ntopic_id: {topic_ids.to_text(topic_id)}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def claim(directory: str, topic_id: uuid.UUID | None) -> None:
    """Before a partition's log opens in directory: make directory this topic ID's.
    An unknown ID (a topic from before IDs) claims nothing yet; a directory of another
    ID is moved aside; a directory without a file (new, or from before IDs) gets one."""
    if topic_id is None:
        return
    if os.path.isdir(directory):
        held = read(directory)
        if held == topic_id:
            return
        if held is not None:
            stray = f"{directory}-{topic_ids.to_text(held)}-stray"
            log.warning("%s holds topic ID %s, the topic's is now %s (deleted and created "
                        "again while this broker was away): moved to %s, starting empty",
                        directory, topic_ids.to_text(held), topic_ids.to_text(topic_id),
                        stray)
            os.replace(directory, stray)
    os.makedirs(directory, exist_ok=True)
    write(directory, topic_id)


def adopt(directory: str, topic_id: uuid.UUID) -> None:
    """An open log's topic has just been given its ID (it is from before IDs): record
    it, unless the directory already names one (then it is left as it is, logged)."""
    held = read(directory)
    if held is None:
        write(directory, topic_id)
    elif held != topic_id:
        log.error("%s holds topic ID %s, but its open topic's is %s: left as it is",
                  directory, topic_ids.to_text(held), topic_ids.to_text(topic_id))
