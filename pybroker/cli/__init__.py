"""The `pybroker` command line: serve, stats, zk, topics, produce, consume, groups.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration (a message
on stderr names the problem).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from pybroker.client.connection import KafkaError
from pybroker.config import BrokerConfig, ConfigError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """The broker refused or the work failed: printed, exit 1."""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname,
                 "logger": record.name, "pid": record.process, "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s pid=%(process)d %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("kazoo").setLevel(logging.WARNING)


def _parse_overrides(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def cmd_serve(args) -> int:
    setup_logging(args.log_level, args.log_format)
    overrides = _parse_overrides(args.set)
    flags = {"log.dirs": args.data_dir, "port": args.port, "num.workers": args.workers,
             "broker.id": args.broker_id, "zookeeper.connect": args.zookeeper,
             "advertised.host": args.advertised_host, "metrics.port": args.metrics_port}
    overrides.update({k: v for k, v in flags.items() if v is not None})  # flags win over --set
    config = BrokerConfig.load(args.config, overrides)
    from pybroker.server.supervisor import serve
    return serve(config)


def cmd_stats(args) -> int:
    from pybroker.server.controlblock import STATES, ControlBlock, monotonic_ms
    try:
        block = ControlBlock.in_dir(args.data_dir)
    except FileNotFoundError:
        print(f"pybroker stats: no control block in {args.data_dir} (is a broker running "
              "with this --data-dir?)", file=sys.stderr)
        return EXIT_FAILURE
    except ValueError as exc:  # another layout version, or not a control block at all
        print(f"pybroker stats: {exc}", file=sys.stderr)
        return EXIT_FAILURE

    def age(ms: int, now: int) -> str:  # monotonic ms, the clock the workers write
        return f"{(now - ms) / 1000:.1f}s ago" if ms else "-"

    print(f"{'worker':>6} {'node':>6} {'port':>6} {'pid':>8} {'state':>9} {'heartbeat':>10} "
          f"{'loop':>10} {'restarts':>8} {'conns':>6} {'requests':>10} {'msgs in':>12} "
          f"{'bytes in':>14} {'bytes out':>14} {'parts':>6} {'opening':>7} {'offline':>7}")
    for i in range(block.workers):
        w = block.read_worker(i)
        now = monotonic_ms()
        print(f"{i:>6} {w['node_id']:>6} {w['port']:>6} {w['pid']:>8} "
              f"{STATES.get(w['state'], '?'):>9} {age(w['heartbeat_ms'], now):>10} "
              f"{age(w['loop_ms'], now):>10} {w['restarts']:>8} "
              f"{w['connections']:>6} {w['requests']:>10} {w['messages_in']:>12} "
              f"{w['bytes_in']:>14} {w['bytes_out']:>14} {w['partitions']:>6} "
              f"{w['opening']:>7} {w['offline']:>7}")
    rows = block.partitions()
    block.close()
    if rows:
        print()
        print(f"{'partition':<32} {'node':>6} {'state':>8} {'log start':>12} {'log end':>12} "
              f"{'high wm':>12} {'msgs in':>12} {'bytes in':>14} {'flushes':>8}")
        for r in rows:
            print(f"{r.topic + '-' + str(r.partition):<32} {r.node_id:>6} {r.state_label:>8} "
                  f"{r.log_start:>12} {r.log_end:>12} {r.high_watermark:>12} "
                  f"{r.messages_in:>12} {r.bytes_in:>14} {r.flushes:>8}")
    return EXIT_OK


def _zk_connect(args) -> str:
    if args.zookeeper:
        return args.zookeeper
    from pybroker.server.supervisor import ZK_CONNECT_FILE
    path = os.path.join(args.data_dir, ZK_CONNECT_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except FileNotFoundError:
        raise ConfigError(f"no --zookeeper given and no {path} (is a broker running with "
                          f"--data-dir {args.data_dir}?)") from None


def open_zk(args):
    """A started kazoo client on the broker's ZooKeeper (--zookeeper or --data-dir), or
    a ConfigError naming the address that did not answer."""
    from kazoo.client import KazooClient
    from kazoo.handlers.threading import KazooTimeoutError
    connect = _zk_connect(args)
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)  # its retries are not news here
    client = KazooClient(hosts=connect, timeout=10)
    try:
        client.start(timeout=10)
    except KazooTimeoutError:
        client.close()
        raise ConfigError(f"ZooKeeper at {connect} did not answer within 10 s") from None
    return client


def zk_children(client, path: str) -> list[str]:
    """The sorted children of path; none when it does not exist."""
    from kazoo.exceptions import NoNodeError
    try:
        return sorted(client.get_children(path))
    except NoNodeError:
        return []


def cmd_zk(args) -> int:
    """Print the registries: brokers, controller, topics, consumers, owners, offsets."""
    from kazoo.exceptions import NoNodeError
    client = open_zk(args)

    def children(path):
        return zk_children(client, path)

    def value(path):
        try:
            return client.get(path)[0].decode()
        except NoNodeError:
            return None

    try:
        print("brokers:")
        for node in sorted(children("/brokers/ids"), key=int):
            print(f"  {node}: {value('/brokers/ids/' + node)}")
        print(f"controller: {value('/controller')}")
        print(f"cluster id: {value('/cluster/id')}")
        print("topics:")
        for topic in children("/brokers/topics"):
            print(f"  {topic}: {value('/brokers/topics/' + topic)}  "
                  f"config={value('/config/topics/' + topic)}")
        print("consumers:")
        for group in children("/consumers"):
            print(f"  group {group}:")
            for cid in children(f"/consumers/{group}/ids"):
                print(f"    consumer {cid}: {value(f'/consumers/{group}/ids/{cid}')}")
            for kind in ("owners", "offsets"):
                for topic in children(f"/consumers/{group}/{kind}"):
                    for part in sorted(children(f"/consumers/{group}/{kind}/{topic}"), key=int):
                        print(f"    {kind[:-1]} {topic}-{part}: "
                              f"{value(f'/consumers/{group}/{kind}/{topic}/{part}')}")
    finally:
        client.stop()
        client.close()
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pybroker", description="A Kafka-compatible log "
                                     "broker built on the 2011 Kafka paper's design.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a broker: a supervisor and its workers",
                           description="Run a broker. Worker i is Kafka node "
                           "broker.id*100+i on port --port+i. Without --zookeeper a private "
                           "ZooKeeper is started under the data dir.")
    serve.add_argument("--data-dir", help="data directory (log.dirs)")
    serve.add_argument("--port", type=int, help="base port (default 9092)")
    serve.add_argument("--workers", type=int, help="worker processes (default: CPU count)")
    serve.add_argument("--broker-id", type=int, help="broker id (default 0)")
    serve.add_argument("--zookeeper", help="ZooKeeper connect string host:port[/chroot]")
    serve.add_argument("--advertised-host", help="host name given to clients in metadata")
    serve.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on "
                       "this port (GET /metrics); 0: any free port")
    serve.add_argument("--config", help="Kafka-style properties file")
    serve.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override one setting (repeatable)")
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    serve.add_argument("--log-format", choices=("text", "json"), default="text")
    serve.set_defaults(func=cmd_serve)

    stats = sub.add_parser("stats", help="print the shared-memory control block as tables",
                           description="Read the running broker's control block (no "
                           "request to the workers).")
    stats.add_argument("--data-dir", default="./pybroker-data", help="the broker's data dir")
    stats.set_defaults(func=cmd_stats)

    zk = sub.add_parser("zk", help="show the ZooKeeper registries (brokers, topics, "
                        "consumers, owners, offsets)")
    zk.add_argument("--zookeeper", help="connect string (default: the broker's, from "
                    "--data-dir)")
    zk.add_argument("--data-dir", default="./pybroker-data", help="the broker's data dir")
    zk.set_defaults(func=cmd_zk)

    from pybroker.cli import groups, records, topics
    topics.add_parser(sub)
    records.add_parsers(sub)
    groups.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"pybroker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (CommandError, KafkaError) as exc:
        print(f"pybroker {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except BrokenPipeError:  # `pybroker consume ... | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
