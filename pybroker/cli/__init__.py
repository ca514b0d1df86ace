"""The `pybroker` command line: serve, stats, zk, topics, produce, consume, groups.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration, 130
interrupted (Ctrl-C). Every failure is one line on stderr naming the problem, never a
traceback (except with --log-level debug): options are checked by argparse (the
type= functions below), and main() turns what is found later into that one line.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys

from pybroker.client.connection import KafkaError, parse_bootstrap
from pybroker.config import BrokerConfig, ConfigError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
BOOTSTRAP_ENV = "PYBROKER_BOOTSTRAP"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
CONNECT_TIMEOUT = 10.0   # seconds for the first TCP connect to a bootstrap address


class CommandError(Exception):
    """The broker refused or the work failed: printed, exit 1."""


class UsageError(Exception):
    """Bad usage found after parsing (a partition the topic lacks, nothing to do):
    printed, exit 2."""


def version() -> str:
    """The installed distribution's version (whatever its name: the one that provides
    the `pybroker` package), else pybroker.__version__."""
    from importlib import metadata
    try:
        names = metadata.packages_distributions().get("pybroker", [])
    except Exception:  # noqa: BLE001 - broken metadata: fall back below
        names = []
    for name in [n for n in names if n != "lib-pybroker"] + ["pybroker"]:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    import pybroker
    return getattr(pybroker, "__version__", "unknown")


# --- argparse: one-line errors, defaults in --help, option types ------------------------

class DefaultsFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already names its
    default or there is none to show (None, a flag's False, an empty list)."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False or default == []
                or default is argparse.SUPPRESS or not action.option_strings):
            return text
        return text + (" (default: '')" if default == "" else " (default: %(default)s)")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def bootstrap_list(text: str) -> str:
    """--bootstrap: host:port[,host:port...]."""
    try:
        parse_bootstrap(text)
    except ValueError:
        where = f" (from ${BOOTSTRAP_ENV})" if text == os.environ.get(BOOTSTRAP_ENV) else ""
        raise argparse.ArgumentTypeError(f"{text!r}{where} is not host:port[,host:port...] "
                                         "(the port is needed)") from None
    return text


def bootstrap_or_empty(text: str) -> str:
    """--bootstrap where '' means "do not ask the brokers"."""
    return text if text == "" else bootstrap_list(text)


def add_bootstrap(parser, help: str = "host:port[,host:port...] of any node",
                  type=bootstrap_list) -> None:
    """--bootstrap, defaulting to $PYBROKER_BOOTSTRAP, else 127.0.0.1:9092."""
    env = os.environ.get(BOOTSTRAP_ENV)
    where = (f"(default: {env}, from ${BOOTSTRAP_ENV})" if env is not None else
             f"(default: ${BOOTSTRAP_ENV}, else {DEFAULT_BOOTSTRAP})")
    parser.add_argument("--bootstrap", type=type, default=DEFAULT_BOOTSTRAP if env is None
                        else env, metavar="HOST:PORT", help=f"{help} {where}")


def readable_file(text: str) -> str:
    """An existing regular file that can be read."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text}: is a directory, not a file")
    if not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text}: not readable")
    return text


def key_value(text: str) -> str:
    """KEY=VALUE with a non-empty key (returned as given)."""
    key, sep, _value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return text


def _int(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} is not {what}")
    return value


def non_negative_int(text: str) -> int:
    return _int(text, 0, ">= 0")


def positive_int(text: str) -> int:
    return _int(text, 1, ">= 1")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number >= 0")
    return value


def add_log_level(parser, default) -> None:
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default=default,
                        metavar="LEVEL", help="one of " + ", ".join(LOG_LEVELS) + " (any "
                        "case; DEBUG also shows the traceback of an unexpected error) "
                        "(default: INFO for serve, WARNING for the other commands)")


def reach(bootstrap: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Connect (TCP only) to the bootstrap addresses until one accepts, so that a dead
    or wrong address fails at once with one line; CommandError naming each address and
    why it refused."""
    errors = []
    for host, port in parse_bootstrap(bootstrap):
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            return
        except socket.timeout:
            errors.append(f"{host}:{port}: no answer within {timeout:g} s")
        except socket.gaierror as exc:
            errors.append(f"{host}:{port}: unknown host ({exc.strerror})")
        except OSError as exc:
            errors.append(f"{host}:{port}: {(exc.strerror or str(exc)).lower()}")
    raise CommandError("no broker reachable at " + "; ".join(errors))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname,
                 "logger": record.name, "pid": record.process, "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, fmt: str = "text") -> None:
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


def _setting_default(key: str):
    from pybroker.config import BY_KEY
    setting = BY_KEY.get(key)
    return "?" if setting is None else setting.default


def cmd_serve(args) -> int:
    setup_logging(args.log_level or "INFO", args.log_format)
    overrides = _parse_overrides(args.set)
    flags = {"log.dirs": args.data_dir, "port": args.port, "num.workers": args.workers,
             "broker.id": args.broker_id, "zookeeper.connect": args.zookeeper,
             "advertised.host": args.advertised_host, "metrics.port": args.metrics_port}
    overrides.update({k: v for k, v in flags.items() if v is not None})  # flags win over --set
    try:
        config = BrokerConfig.load(args.config, overrides)
    except OSError as exc:  # gone or unreadable since argparse checked it
        raise UsageError(f"--config {args.config}: {exc.strerror or exc}") from None
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
    parser = Parser(prog="pybroker", description="A Kafka-compatible log broker built on "
                    "the 2011 Kafka paper's design.", epilog="Exit codes: 0 done, 1 the "
                    "broker refused or the work failed, 2 bad usage or configuration, "
                    "130 interrupted.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    add_log_level(parser, None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run a broker: a supervisor and its workers",
                           description="Run a broker. Worker i is Kafka node "
                           "broker.id*100+i on port --port+i. Without --zookeeper a private "
                           "ZooKeeper is started under the data dir. Flags win over --set, "
                           "which wins over --config.")
    serve.add_argument("--data-dir", help="data directory, log.dirs (default: "
                       f"{_setting_default('log.dirs')})")
    serve.add_argument("--port", type=int, help="base port, port (default: "
                       f"{_setting_default('port')})")
    serve.add_argument("--workers", type=int, help="worker processes, num.workers "
                       "(default: one per CPU)")
    serve.add_argument("--broker-id", type=int, help="broker id, broker.id (default: "
                       f"{_setting_default('broker.id')})")
    serve.add_argument("--zookeeper", metavar="HOST:PORT[/CHROOT]",
                       help="ZooKeeper connect string, zookeeper.connect (default: a "
                       "private ZooKeeper under the data dir)")
    serve.add_argument("--advertised-host", help="host name given to clients in metadata, "
                       "advertised.host (default: listeners.host)")
    serve.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on "
                       "this port (GET /metrics); 0: any free port, -1: off, metrics.port "
                       f"(default: {_setting_default('metrics.port')})")
    serve.add_argument("--config", metavar="FILE", type=readable_file,
                       help="Kafka-style properties file (default: none, the built-in defaults)")
    serve.add_argument("--set", action="append", metavar="KEY=VALUE", type=key_value,
                       help="override one setting (repeatable)")
    add_log_level(serve, argparse.SUPPRESS)   # also before the command: one dest
    serve.add_argument("--log-format", choices=("text", "json"), default="text",
                       help="log lines as text or as JSON objects")
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


def _command_name(args) -> str:
    """"pybroker topics alter" for the messages of a command."""
    words = ["pybroker", getattr(args, "command", None)]
    words += [getattr(args, "topics_command", None), getattr(args, "groups_command", None)]
    return " ".join(w for w in words if w)


def _one_line(exc: BaseException) -> str:
    """An exception as one line: its message, with the type for the unexpected ones."""
    text = " ".join(str(exc).split())
    if isinstance(exc, (KafkaError, ConfigError, CommandError, UsageError, OSError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = _command_name(args)
    debug = args.log_level == "DEBUG"
    if args.log_level and args.command != "serve":
        setup_logging(args.log_level)
    try:
        return args.func(args)
    except (ConfigError, UsageError) as exc:
        print(f"{name}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except (CommandError, KafkaError) as exc:
        print(f"{name}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `pybroker consume ... | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - a bug or an unforeseen failure: one line
        if debug:
            import traceback
            traceback.print_exc()
        print(f"{name}: {_one_line(exc)}" + ("" if debug else
              " (--log-level debug shows the traceback)"), file=sys.stderr)
        return EXIT_FAILURE
