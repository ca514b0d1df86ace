"""`pybroker produce` and `pybroker consume`: records from lines and back to lines.

produce: one message per input line (stdin or --file), optionally KEY<sep>VALUE; a
progress bar on stderr when reading a file. Exit 1 if any message was not delivered.
consume: from earliest, latest, an offset or a time; raw values or JSON lines with
partition, offset, timestamp, key and value; stops after --count messages or, with
--exit, at the end of every partition; --group uses pybroker's ZooKeeper consumer
(the paper's group rebalance) and commits what it printed. Ctrl-C in either prints
the count (sent and acknowledged, or read) and exits 130.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import sys
import threading
import time

from pybroker.cli import (EXIT_INTERRUPTED, UsageError, _zk_connect, add_bootstrap,
                          non_negative_float, non_negative_int, positive_float, positive_int,
                          reach, readable_file)
from pybroker.client.connection import FETCH_VERSION, Cluster, KafkaError
from pybroker.protocol import ApiKey

FETCH_WAIT_MS = 500
FETCH_BYTES = 1 << 20


class CtrlC:
    """Ctrl-C held back across a step that must not be cut in half (a message queued
    and its result kept; a message written and counted): `with ctrl_c:` defers a
    KeyboardInterrupt that arrives inside to the step's end, so the count printed on
    Ctrl-C is exactly what was sent or written (a second Ctrl-C inside a step that
    blocks, on a full buffer or a full pipe, interrupts it at once). A no-op where SIGINT is not Python's
    (ignored, or another handler) or off the main thread."""

    def __init__(self):
        self.busy = self.pending = False
        self.previous = None

    def __enter__(self) -> "CtrlC":
        self.busy = True
        return self

    def __exit__(self, *exc_info) -> None:
        self.busy = False
        if self.pending and exc_info[0] is None:
            self.pending = False
            raise KeyboardInterrupt

    def _handler(self, signum, frame) -> None:
        if self.busy and not self.pending:   # a second Ctrl-C does not wait
            self.pending = True
        else:
            self.pending = False
            raise KeyboardInterrupt

    def install(self) -> "CtrlC":
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def uninstall(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


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


def check_partition(topic: str, partition: int, count: int) -> None:
    """UsageError (exit 2) unless the topic has that partition."""
    if not 0 <= partition < count:
        raise UsageError(f"--partition {partition}: topic {topic!r} has {count} "
                         f"partition(s), 0..{count - 1}")


def produce(args) -> int:
    from pybroker.client import Producer
    sep = args.key_separator.encode() if args.key_separator else None
    acks = "all" if args.acks == "all" else int(args.acks)
    reach(args.bootstrap)
    # requests time out within the delivery timeout (at most the producer's 30 s)
    producer = Producer(args.bootstrap, acks=acks, linger_ms=args.linger_ms,
                        client_id="pybroker-cli",
                        request_timeout_ms=int(min(args.timeout, 30) * 1000))
    results, last_bar, size = [], 0.0, 0
    show = bool(args.file) and (args.progress or sys.stderr.isatty())
    interrupted = False
    ctrl_c = CtrlC().install()
    try:
        if args.partition is not None:  # before reading a line: the topic may lack it
            check_partition(args.topic, args.partition,
                            len(producer.cluster.ensure_topic(args.topic)))
        try:
            for line, done, total in _lines(args):
                key = None
                if sep is not None:
                    if sep not in line:
                        print(f"pybroker produce: line {len(results) + 1} has no key "
                              f"separator {args.key_separator!r}", file=sys.stderr)
                        return 1
                    key, line = line.split(sep, 1)
                with ctrl_c:
                    results.append(producer.send(args.topic, line, key=key,
                                                 partition=args.partition))
                size = total
                if show and time.monotonic() - last_bar > 0.2:
                    last_bar = time.monotonic()
                    _progress(done, total)
        except KeyboardInterrupt:  # Ctrl-C: stop reading, deliver what was read
            interrupted = True
        try:
            producer.flush(args.timeout)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting for the acks too
            interrupted = True
        if show:
            if not interrupted:
                _progress(size, size)
            sys.stderr.write("\n")
    finally:
        try:
            producer.close(0 if interrupted else args.timeout)
        except KeyboardInterrupt:
            interrupted = True
        ctrl_c.uninstall()
    failed = [r for r in results if not r.done() or r.error is not None]
    if interrupted:
        sent = len(results) - len(failed)
        print(f"pybroker produce: interrupted: {sent} messages sent to {args.topic}"
              + (f", {len(failed)} not delivered" if failed else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
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


def start_position(text: str) -> str:
    """--from: earliest, latest, an offset >= 0, or time:<ms since the epoch>."""
    if text in ("earliest", "latest"):
        return text
    body = text[5:] if text.startswith("time:") else text
    if body.isdigit():   # ASCII digits only: int() would take "+5", " 5", "٥"
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is not earliest, latest, an offset >= 0 or time:<ms since the epoch>")


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
    reach(args.bootstrap, min(args.timeout, 10))
    cluster = Cluster(args.bootstrap, client_id="pybroker-cli", timeout=args.timeout,
                      allow_auto_create=False)
    conns: dict = {}
    printed = 0
    ctrl_c = CtrlC().install()
    try:
        leaders = cluster.ensure_topic(args.topic)
        if args.partition is not None:
            check_partition(args.topic, args.partition, len(leaders))
        partitions = [args.partition] if args.partition is not None else sorted(leaders)
        by_node: dict[int, list[int]] = {}
        for p in partitions:
            by_node.setdefault(leaders[p], []).append(p)
        conns = {node: cluster.connection(node) for node in by_node}
        positions = _start_offsets(cluster, args.topic, partitions, args.start)
        offsets = {p: s for p, (s, _e) in positions.items()}
        ends = {p: e for p, (_s, e) in positions.items()}
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
                        with ctrl_c:
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
        return _interrupted(printed)
    finally:
        ctrl_c.uninstall()
        _flush_stdout()
        for conn in conns.values():
            conn.close()
        cluster.close()
    return 0


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except KeyboardInterrupt:
        pass


def _interrupted(printed: int) -> int:
    """Ctrl-C while consuming: how many were printed, exit 130 (as Unix tools do)."""
    _flush_stdout()
    print(f"pybroker consume: interrupted: {printed} messages read", file=sys.stderr)
    return EXIT_INTERRUPTED


def _consume_group(args) -> int:
    from pybroker.client import Consumer
    consumer = Consumer(zookeeper=_zk_connect(args), group=args.group,
                        auto_offset_reset="smallest" if args.start == "earliest" else "largest")
    printed = 0
    ctrl_c = CtrlC().install()
    try:
        stream = consumer.create_message_streams({args.topic: 1})[args.topic][0]
        for msg in stream:
            with ctrl_c:
                _emit(args, msg)
                printed += 1
            if args.count is not None and printed >= args.count:
                break
    except KeyboardInterrupt:
        return _interrupted(printed)
    finally:
        ctrl_c.uninstall()
        _flush_stdout()
        consumer.commit()
        consumer.close()
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("produce", help="produce lines from stdin or a file as messages",
                       description="One message per input line (stdin or --file). Exit 1 "
                       "if any message was not delivered; Ctrl-C stops reading, waits for "
                       "the acknowledgements of what was read, prints how many were sent "
                       "and exits 130.")
    p.add_argument("topic")
    add_bootstrap(p)
    p.add_argument("--file", type=readable_file, help="read lines from this file (progress "
                   "bar on stderr) (default: stdin)")
    p.add_argument("--key-separator", metavar="SEP", help="split each line into KEY<sep>VALUE "
                   "(default: no key)")
    p.add_argument("--partition", type=non_negative_int, help="the partition to write to "
                   "(default: by key, else round-robin)")
    p.add_argument("--acks", default="all", choices=("0", "1", "all"),
                   help="acknowledgement: 0 none, 1 the leader's append, all durable")
    p.add_argument("--linger-ms", type=non_negative_float, default=5,
                   help="how long a batch waits for more messages")
    p.add_argument("--timeout", type=positive_float, default=60,
                   help="seconds to wait for delivery")
    p.add_argument("--progress", action="store_true", help="progress bar even if stderr "
                   "is not a terminal")
    p.set_defaults(func=produce)

    c = sub.add_parser("consume", help="print messages of a topic",
                       description="Print the messages of a topic, one per line. Ctrl-C "
                       "prints how many were read and exits 130.")
    c.add_argument("topic")
    add_bootstrap(c)
    c.add_argument("--from", dest="start", default="earliest", type=start_position,
                   metavar="WHERE",
                   help="earliest, latest, an offset, or time:<ms since the epoch>")
    c.add_argument("--partition", type=non_negative_int,
                   help="only this partition (default: all partitions)")
    c.add_argument("--count", type=positive_int, help="stop after this many messages "
                   "(default: no limit)")
    c.add_argument("--exit", action="store_true", help="stop at the end of every partition")
    c.add_argument("--format", choices=("raw", "json"), default="raw",
                   help="raw values, or JSON lines with partition/offset/timestamp/key/value")
    c.add_argument("--timeout", type=positive_float, default=30.0,
                   help="seconds per request to a broker")
    c.add_argument("--group", help="consume as a member of this group (the paper's "
                   "ZooKeeper-coordinated consumer; needs --zookeeper or --data-dir) "
                   "(default: no group)")
    c.add_argument("--zookeeper", help="ZooKeeper connect string, for --group (default: "
                   "the broker's, from --data-dir)")
    c.add_argument("--data-dir", default="./pybroker-data", help="a local broker's data "
                   "dir, to find its ZooKeeper, for --group")
    c.set_defaults(func=consume)
