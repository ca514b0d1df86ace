"""`pybroker produce` and `pybroker consume`: records from lines and back to lines.

produce: one message per input line (stdin or --file), optionally KEY<sep>VALUE; a
progress bar on stderr when reading a file. Exit 1 if any message was not delivered.
consume: from earliest, latest, an offset or a time; raw values or JSON lines with
partition, offset, timestamp, key and value; stops after --count messages or, with
--exit, at the end of every partition; --group uses pybroker's ZooKeeper consumer
(the paper's group rebalance) and commits what it printed.
"""
from __future__ import annotations

import base64
import json
import os
import sys
import time

from pybroker.cli import _zk_connect
from pybroker.client.connection import FETCH_VERSION, Cluster, KafkaError
from pybroker.protocol import ApiKey

FETCH_WAIT_MS = 500
FETCH_BYTES = 1 << 20


def _progress(done: int, total: int) -> None:
    frac = done / total if total else 1.0
    sys.stderr.write(f"\r[{'#' * int(30 * frac):<30}] {frac * 100:5.1f}%  {done}/{total} bytes")
    sys.stderr.flush()


def _lines(args):
    """(line bytes, bytes read so far, total or 0) from --file or stdin."""
    if args.file:
        total = os.path.getsize(args.file)
        with open(args.file, "rb") as f:
            for line in f:
                yield line.rstrip(b"\r\n"), f.tell(), total
    else:
        for line in sys.stdin.buffer:
            yield line.rstrip(b"\r\n"), 0, 0


def produce(args) -> int:
    from pybroker.client import Producer
    sep = args.key_separator.encode() if args.key_separator else None
    acks = "all" if args.acks == "all" else int(args.acks)
    producer = Producer(args.bootstrap, acks=acks, linger_ms=args.linger_ms,
                        client_id="pybroker-cli")
    results, last_bar, size = [], 0.0, 0
    show = bool(args.file) and (args.progress or sys.stderr.isatty())
    try:
        for line, done, total in _lines(args):
            key = None
            if sep is not None:
                if sep not in line:
                    print(f"pybroker produce: line {len(results) + 1} has no key separator "
                          f"{args.key_separator!r}", file=sys.stderr)
                    return 1
                key, line = line.split(sep, 1)
            results.append(producer.send(args.topic, line, key=key, partition=args.partition))
            size = total
            if show and time.monotonic() - last_bar > 0.2:
                last_bar = time.monotonic()
                _progress(done, total)
        producer.flush(args.timeout)
        if show:
            _progress(size, size)
            sys.stderr.write("\n")
    finally:
        producer.close(args.timeout)
    failed = [r for r in results if not r.done() or r.error is not None]
    if failed:
        first = failed[0].error if failed[0].done() else "not acknowledged in time"
        print(f"pybroker produce: {len(failed)} of {len(results)} messages failed: {first}",
              file=sys.stderr)
        return 1
    print(f"produced {len(results)} messages to {args.topic}", file=sys.stderr)
    return 0


def _text(data: bytes | None):
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode()}


def _emit(args, msg) -> None:
    if args.format == "json":
        print(json.dumps({"topic": msg.topic, "partition": msg.partition, "offset": msg.offset,
                          "timestamp": msg.timestamp, "key": _text(msg.key),
                          "value": _text(msg.value)}), flush=False)
    else:
        sys.stdout.buffer.write((msg.value or b"") + b"\n")


def _offsets(cluster: Cluster, topic: str, partitions: list[int], timestamp: int) -> dict:
    """partition -> ListOffsets answer for timestamp; KafkaError naming a refused one."""
    found = cluster.list_offsets({(topic, p): timestamp for p in partitions})
    for (t, p), (code, _offset) in found.items():
        if code:
            raise KafkaError(code, f"ListOffsets {t}-{p}")
    return {p: found[(topic, p)][1] for p in partitions}


def _start_offsets(cluster: Cluster, topic: str, partitions: list[int], where: str):
    """partition -> (first offset to read, end offset at start)."""
    ends = _offsets(cluster, topic, partitions, -1)
    named = {"earliest": -2, "latest": -1}
    if where.startswith("time:") or where in named:
        ts = int(where[5:]) if where.startswith("time:") else named[where]
        found = _offsets(cluster, topic, partitions, ts)
        # a time past every record has no offset: start at the end
        return {p: (found[p] if found[p] >= 0 else ends[p], ends[p]) for p in partitions}
    return {p: (int(where), ends[p]) for p in partitions}


def consume(args) -> int:
    if args.group:
        return _consume_group(args)
    from pybroker.client.consumer import decode_messages
    cluster = Cluster(args.bootstrap, client_id="pybroker-cli", allow_auto_create=False)
    leaders = cluster.ensure_topic(args.topic)
    partitions = [args.partition] if args.partition is not None else sorted(leaders)
    by_node: dict[int, list[int]] = {}
    for p in partitions:
        by_node.setdefault(leaders[p], []).append(p)
    conns = {node: cluster.connection(node) for node in by_node}
    positions = _start_offsets(cluster, args.topic, partitions, args.start)
    offsets = {p: s for p, (s, _e) in positions.items()}
    ends = {p: e for p, (_s, e) in positions.items()}
    printed = 0
    try:
        while args.count is None or printed < args.count:
            if args.exit and all(offsets[p] >= ends[p] for p in partitions):
                break
            for node, parts in by_node.items():  # one long-polling Fetch per leader
                if args.exit:
                    parts = [p for p in parts if offsets[p] < ends[p]]
                if not parts:
                    continue
                body = {"replica_id": -1, "max_wait_ms": FETCH_WAIT_MS, "min_bytes": 1,
                        "max_bytes": FETCH_BYTES, "isolation_level": 0, "topics": [{
                            "topic": args.topic, "partitions": [{
                                "partition": p, "fetch_offset": offsets[p],
                                "partition_max_bytes": FETCH_BYTES} for p in parts]}]}
                answer = conns[node].request(ApiKey.FETCH, FETCH_VERSION, body)
                for part in answer["responses"][0]["partitions"]:
                    p = part["partition_index"]
                    if part["error_code"]:
                        raise KafkaError(part["error_code"], f"Fetch {args.topic}-{p} at "
                                         f"{offsets[p]}")
                    for msg in decode_messages(args.topic, p, part["records"], offsets[p]):
                        _emit(args, msg)
                        offsets[p] = msg.offset + 1
                        printed += 1
                        if args.count is not None and printed >= args.count:
                            break
                    if args.count is not None and printed >= args.count:
                        break
                if args.count is not None and printed >= args.count:
                    break
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        sys.stdout.flush()
        for conn in conns.values():
            conn.close()
        cluster.close()
    return 0


def _consume_group(args) -> int:
    from pybroker.client import Consumer
    consumer = Consumer(zookeeper=_zk_connect(args), group=args.group,
                        auto_offset_reset="smallest" if args.start == "earliest" else "largest")
    printed = 0
    try:
        stream = consumer.create_message_streams({args.topic: 1})[args.topic][0]
        for msg in stream:
            _emit(args, msg)
            printed += 1
            if args.count is not None and printed >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        sys.stdout.flush()
        consumer.commit()
        consumer.close()
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("produce", help="produce lines from stdin or a file as messages")
    p.add_argument("topic")
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--file", help="read lines from this file (progress bar on stderr)")
    p.add_argument("--key-separator", help="split each line into KEY<sep>VALUE")
    p.add_argument("--partition", type=int, help="default: by key, else round-robin")
    p.add_argument("--acks", default="all", choices=("0", "1", "all"))
    p.add_argument("--linger-ms", type=float, default=5)
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for delivery")
    p.add_argument("--progress", action="store_true", help="progress bar even if stderr "
                   "is not a terminal")
    p.set_defaults(func=produce)

    c = sub.add_parser("consume", help="print messages of a topic")
    c.add_argument("topic")
    c.add_argument("--bootstrap", default="127.0.0.1:9092")
    c.add_argument("--from", dest="start", default="earliest",
                   help="earliest, latest, an offset, or time:<ms since the epoch>")
    c.add_argument("--partition", type=int, help="default: all partitions")
    c.add_argument("--count", type=int, help="stop after this many messages")
    c.add_argument("--exit", action="store_true", help="stop at the end of every partition")
    c.add_argument("--format", choices=("raw", "json"), default="raw",
                   help="raw values, or JSON lines with partition/offset/timestamp/key/value")
    c.add_argument("--group", help="consume as a member of this group (the paper's "
                   "ZooKeeper-coordinated consumer; needs --zookeeper or --data-dir)")
    c.add_argument("--zookeeper", help="ZooKeeper connect string, for --group")
    c.add_argument("--data-dir", default="./pybroker-data", help="a local broker's data "
                   "dir, to find its ZooKeeper, for --group")
    c.set_defaults(func=consume)
