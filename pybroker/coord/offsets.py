"""The offset registry (paper P18-P20): committed consumer offsets in ZooKeeper, shared
by the paper's own consumer (pybroker.client) and the broker's Kafka group coordinator.

Paths, under the connect string's optional chroot (Kafka 0.8 layout):
  /consumers/<group>/offsets/<topic>/<partition>          persistent: the next offset to
        consume, as ASCII decimal text ("1234"), exactly what Kafka 0.8's ZooKeeper
        consumer wrote. Both kinds of consumer read and write this znode.
  /consumers/<group>/offset-metadata/<topic>/<partition>  persistent, optional: JSON
        {"offset": N, "metadata": "...", "leader_epoch": E, "timestamp": ms} written by
        the group coordinator beside every offset it commits.

Why a sibling znode for metadata rather than JSON in the offset znode: the paper's
consumer reads the offset znode as a plain number. The metadata applies only while its
"offset" equals the offset znode's value; once anyone (e.g. the paper's consumer)
commits another offset without touching the sibling, the stale metadata is ignored and
reads give "" (what Kafka answers for a commit without metadata).

A commit of many partitions is one ZooKeeper multi-op transaction (one round trip, all
or nothing); znodes missing at the first commit are created, then the transaction is
retried. Every function here does blocking ZooKeeper I/O: the broker calls them on an
executor thread, never on a worker's event loop. Callers validate group names with
group_id_error() first; topics reaching these functions are existing topics, whose
names are legal path elements by construction.
"""
from __future__ import annotations

import json
import time

from kazoo.exceptions import NodeExistsError, NoNodeError

CONSUMERS = "/consumers"
MAX_GROUP_ID_CHARS = 255     # a znode name, not a Kafka limit: keeps paths readable
COMMIT_ATTEMPTS = 3          # transactions retried after creating missing znodes
NO_OFFSET = -1               # what OffsetFetch answers for a partition without a commit


class OffsetRegistryError(Exception):
    """A commit that could not be written (ZooKeeper refused it repeatedly)."""


def path_element_error(name, what: str) -> str | None:
    """Why `name` cannot be one element of a path under /consumers (a group id, a
    consumer id), or None. The paper's consumer and the group coordinator both write
    there, so both check names with this one rule."""
    if not isinstance(name, str) or not name:
        return f"{what} is empty" if isinstance(name, str) or name is None else \
            f"{what} must be a str, not {type(name).__name__}"
    if name in (".", ".."):
        return f"{what} {name!r} is not allowed"
    if "/" in name:
        return f"{what} {name!r} contains '/'"
    if len(name) > MAX_GROUP_ID_CHARS:
        return f"{what} is {len(name)} characters; at most {MAX_GROUP_ID_CHARS} allowed"
    # ZooKeeper refuses \u0000-\u001f, \u007f-\u009f, \ud800-\uf8ff, \ufff0-\uffff; isprintable
    # is stricter (other separators), which keeps the names printable in logs and the CLI
    if not name.isprintable() or any(
            "\ud800" <= c <= "\uf8ff" or "\ufff0" <= c <= "\uffff" for c in name):
        return f"{what} {name!r} has characters ZooKeeper does not allow in a path"
    return None


def group_id_error(group) -> str | None:
    """Why `group` cannot be a group id, or None."""
    return path_element_error(group, "group id")


def group_path(group: str) -> str:
    return f"{CONSUMERS}/{group}"


def offset_path(group: str, topic: str, partition: int) -> str:
    return f"{CONSUMERS}/{group}/offsets/{topic}/{partition}"


def metadata_path(group: str, topic: str, partition: int) -> str:
    return f"{CONSUMERS}/{group}/offset-metadata/{topic}/{partition}"


def _metadata_value(offset: int, metadata: str | None, leader_epoch: int) -> bytes:
    return json.dumps({"offset": offset, "metadata": metadata or "",
                       "leader_epoch": leader_epoch, "timestamp": int(time.time() * 1000)},
                      separators=(",", ":"), sort_keys=True).encode()


def commit_offsets(zk, group: str, offsets: dict) -> None:
    """Store {(topic, partition): (offset, metadata, leader_epoch)} for group, all in
    one transaction. Raises OffsetRegistryError or a kazoo error if it cannot."""
    writes = []
    for (topic, partition), (offset, metadata, epoch) in sorted(offsets.items()):
        writes.append((offset_path(group, topic, partition), b"%d" % offset))
        writes.append((metadata_path(group, topic, partition),
                       _metadata_value(offset, metadata, epoch)))
    if not writes:
        return
    for _attempt in range(COMMIT_ATTEMPTS):
        tx = zk.transaction()
        for path, value in writes:
            tx.set_data(path, value)
        results = tx.commit()
        failures = [r for r in results if isinstance(r, Exception)]
        if not failures:
            return
        if not any(isinstance(r, NoNodeError) for r in failures):
            raise failures[0]
        _create_missing(zk, writes)
    raise OffsetRegistryError(f"group={group}: commit of {len(offsets)} offsets failed "
                              f"{COMMIT_ATTEMPTS} times")


def _create_missing(zk, writes) -> None:
    """Create each znode that does not exist yet, with its value (never empty: a reader
    must not see an offset znode without a number)."""
    pending = [(path, value, zk.exists_async(path)) for path, value in writes]
    for path, value, exists in pending:
        if exists.get() is not None:
            continue
        try:
            zk.create(path, value, makepath=True)
        except NodeExistsError:
            pass  # someone else created it meanwhile; the retried transaction sets it


def fetch_offsets(zk, group: str, partitions=None) -> dict:
    """{(topic, partition): (offset, metadata, leader_epoch)} for the given partitions
    (an iterable of (topic, partition)), or for every committed partition of the group
    when partitions is None. Partitions without a commit are left out."""
    if partitions is None:
        partitions = committed_partitions(zk, group)
    partitions = list(partitions)
    reads = [(tp, zk.get_async(offset_path(group, *tp)), zk.get_async(metadata_path(group, *tp)))
             for tp in partitions]
    found = {}
    for tp, offset_read, meta_read in reads:
        try:
            data, _ = offset_read.get()
            offset = int(data.decode("ascii").strip())
        except NoNodeError:
            continue
        except (ValueError, UnicodeDecodeError):
            continue  # not a number: treat as no commit rather than fail the group
        metadata, epoch = "", -1
        try:
            meta = json.loads(meta_read.get()[0].decode())
            if meta.get("offset") == offset:   # else stale: written for another offset
                metadata, epoch = meta.get("metadata", ""), meta.get("leader_epoch", -1)
        except (NoNodeError, ValueError, UnicodeDecodeError, AttributeError):
            pass
        found[tp] = (offset, metadata, epoch)
    return found


def read_offset(zk, group: str, topic: str, partition: int) -> int | None:
    """The committed offset of one partition, or None."""
    found = fetch_offsets(zk, group, [(topic, partition)])
    return found[(topic, partition)][0] if found else None


def write_offset(zk, group: str, topic: str, partition: int, offset: int) -> None:
    """Commit one partition's offset (no metadata)."""
    commit_offsets(zk, group, {(topic, partition): (offset, None, -1)})


def committed_partitions(zk, group: str) -> list[tuple[str, int]]:
    """Every (topic, partition) with an offset znode in group, sorted."""
    base = f"{CONSUMERS}/{group}/offsets"
    try:
        topics = zk.get_children(base)
    except NoNodeError:
        return []
    listings = [(topic, zk.get_children_async(f"{base}/{topic}")) for topic in topics]
    found = []
    for topic, listing in listings:
        try:
            children = listing.get()
        except NoNodeError:
            continue
        found.extend((topic, int(p)) for p in children if p.isdigit())
    return sorted(found)


def delete_offsets(zk, group: str, partitions) -> None:
    """Delete the committed offsets (and their metadata) of these (topic, partition)s
    of group; absent ones are no error."""
    for tp in partitions:
        for path in (offset_path(group, *tp), metadata_path(group, *tp)):
            try:
                zk.delete(path)
            except NoNodeError:
                pass


def delete_group(zk, group: str) -> str:
    """Delete a group's registry entry (its committed offsets), unless paper consumers
    are registered in it: "deleted", "absent" or "members"."""
    path = group_path(group)
    if zk.exists(path) is None:   # (kazoo's recursive delete says nothing when absent)
        return "absent"
    try:
        if zk.get_children(f"{path}/ids"):
            return "members"
    except NoNodeError:
        pass
    zk.delete(path, recursive=True)
    return "deleted"


def group_exists(zk, group: str) -> bool:
    """The group has a registry entry (committed offsets or paper consumers)."""
    return zk.exists(group_path(group)) is not None


def list_groups(zk) -> list[str]:
    """Every group in the registry, sorted."""
    try:
        return sorted(zk.get_children(CONSUMERS))
    except NoNodeError:
        return []
