"""Properties files as Kafka operators write them: Java's syntax (java.util.Properties
.load), and a stock Kafka server.properties loaded as a broker configuration."""
import logging
import pathlib
import shutil
import subprocess

import pytest

from pybroker.config import BrokerConfig, ConfigError, parse_properties, read_properties

DATA = pathlib.Path(__file__).resolve().parent / "data"
KAFKA_SERVER_PROPERTIES = DATA / "kafka-server.properties"

# (rule, text, the properties it holds); each case fails when its rule breaks.
CASES = [
    # separators: =, : or whitespace, with optional whitespace around
    ("sep =", "a=b", {"a": "b"}),
    ("sep :", "a:b", {"a": "b"}),
    ("sep space", "a b", {"a": "b"}),
    ("sep tab", "a\tb", {"a": "b"}),
    ("sep form feed", "a\fb", {"a": "b"}),
    ("spaces around =", "a  =  b", {"a": "b"}),
    ("spaces around :", "a : b", {"a": "b"}),
    ("several spaces", "a    b", {"a": "b"}),
    ("only one = is a separator", "a = = b", {"a": "= b"}),
    ("a : then = stays", "a := b", {"a": "= b"}),
    ("later = and : are value", "url=http://h:1/x=y", {"url": "http://h:1/x=y"}),
    ("leading whitespace", " \t a=b", {"a": "b"}),
    ("trailing whitespace kept", "a=b  ", {"a": "b  "}),
    ("key alone", "a", {"a": ""}),
    ("key alone, then spaces", "a   ", {"a": ""}),
    ("empty value", "a=", {"a": ""}),
    ("empty key", "=b", {"": "b"}),
    ("later duplicate wins", "a=1\na=2", {"a": "2"}),
    # comments and blank lines
    ("# comment", "# a=b\nc=d", {"c": "d"}),
    ("! comment", "! a=b\nc=d", {"c": "d"}),
    ("indented comment", "   # a=b\nc=d", {"c": "d"}),
    ("# inside a value", "a=b # c", {"a": "b # c"}),
    ("blank lines", "\n\n \t \f\na=b\n\n", {"a": "b"}),
    ("comment does not continue", "# a\\\nc=d", {"c": "d"}),
    # natural line ends
    ("\\r and \\r\\n end lines", "a=1\rb=2\r\nc=3\n", {"a": "1", "b": "2", "c": "3"}),
    ("\\x85 does not end a line", "a=1\x852", {"a": "1\x852"}),
    # continuation lines
    ("continuation", "a=b\\\n   c", {"a": "bc"}),
    ("continuation keeps whitespace before \\", "a=b \\\n\tc", {"a": "b c"}),
    ("continuation over \\r\\n", "a=b\\\r\n  c", {"a": "bc"}),
    ("continuation in a key", "ke\\\n  y=v", {"key": "v"}),
    ("continuation after the separator", "a=\\\n  b", {"a": "b"}),
    ("continued line starting with #", "a=b\\\n  #c", {"a": "b#c"}),
    ("even backslashes do not continue", "a=b\\\\\nc=d", {"a": "b\\", "c": "d"}),
    ("odd backslashes continue", "a=b\\\\\\\nc", {"a": "b\\c"}),
    ("continuation at end of file", "a=b\\", {"a": "b"}),
    ("continuation onto a blank line ends", "a=b\\\n\nc=d", {"a": "b", "c": "d"}),
    # escapes
    ("\\t \\n \\r \\f", "a=\\t\\n\\r\\f", {"a": "\t\n\r\f"}),
    ("\\\\", "a=x\\\\y", {"a": "x\\y"}),
    ("\\= and \\:", "a=\\=\\:", {"a": "=:"}),
    ("\\uXXXX", "a=\\u0041\\u00e9\\u00E9", {"a": "A\u00e9\u00e9"}),
    ("\\uXXXX surrogate pair", "a=\\ud83d\\ude00", {"a": "\U0001f600"}),
    ("other escaped character", "a=\\q\\#", {"a": "q#"}),
    ("escaped leading space of a value", "a=\\ b", {"a": " b"}),
    # keys with escaped separators
    ("key with \\=", "a\\=b=c", {"a=b": "c"}),
    ("key with \\:", "a\\:b:c", {"a:b": "c"}),
    ("key with \\ (space)", "a\\ b c", {"a b": "c"}),
    ("key :=", "\\:\\= x", {":=": "x"}),
    ("key ending in \\\\", "a\\\\=b", {"a\\": "b"}),
    ("key with \\u escape", "\\u0061=b", {"a": "b"}),
]


@pytest.mark.parametrize("rule, text, expected", CASES, ids=[c[0] for c in CASES])
def test_java_properties_rule(rule, text, expected):
    assert parse_properties(text) == expected


@pytest.mark.parametrize("text, line", [
    ("a=\\u12", 1), ("a=\\u12G4", 1), ("x=1\n\n# c\nb=\\uzzzz", 4), ("k\\u00=1", 1),
])
def test_a_malformed_unicode_escape_is_the_one_refused_line(text, line, tmp_path):
    path = tmp_path / "bad.properties"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"bad\.properties:{line}: malformed \\uXXXX"):
        read_properties(str(path))


def test_read_properties_reads_utf8_and_falls_back_to_latin1(tmp_path):
    utf8 = tmp_path / "utf8.properties"
    utf8.write_bytes("\ufeffa=\u00e9\u20ac\n".encode("utf-8"))  # with a BOM
    assert read_properties(str(utf8)) == {"a": "\u00e9\u20ac"}
    latin1 = tmp_path / "latin1.properties"
    latin1.write_bytes("# caf\u00e9\na=\u00e9\n".encode("iso-8859-1"))
    assert read_properties(str(latin1)) == {"a": "\u00e9"}


ORACLE = r"""
import java.io.StringReader;
import java.nio.file.*;
import java.util.*;

public class Oracle {
    static String hex(String s) {
        StringBuilder b = new StringBuilder();
        for (char c : s.toCharArray()) b.append(String.format("%04x", (int) c));
        return b.toString();
    }
    public static void main(String[] args) throws Exception {
        for (String arg : args) {
            Properties p = new Properties();
            p.load(new StringReader(Files.readString(Path.of(arg))));
            StringBuilder line = new StringBuilder("case");
            for (String k : new TreeSet<>(p.stringPropertyNames()))
                line.append(' ').append(hex(k)).append(':').append(hex(p.getProperty(k)));
            System.out.println(line);
        }
    }
}
"""


def _unhex(h: str) -> str:
    units = "".join(chr(int(h[i:i + 4], 16)) for i in range(0, len(h), 4))
    return units.encode("utf-16-le", "surrogatepass").decode("utf-16-le")


@pytest.mark.skipif(shutil.which("java") is None, reason="no Java runtime to compare with")
def test_the_cases_are_what_java_reads(tmp_path):
    """The table above is java.util.Properties' behaviour, not our reading of its docs."""
    (tmp_path / "Oracle.java").write_text(ORACLE)
    files = []
    for i, (_, text, _) in enumerate(CASES):
        files.append(tmp_path / f"case{i}.properties")
        files[-1].write_text(text, encoding="utf-8", newline="")
    run = subprocess.run(["java", str(tmp_path / "Oracle.java"), *map(str, files)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    for (rule, _, expected), line in zip(CASES, run.stdout.splitlines(), strict=True):
        pairs = (p.split(":") for p in line.split()[1:])
        assert {_unhex(k): _unhex(v) for k, v in pairs} == expected, rule


# --- a stock Kafka server.properties -------------------------------------------------

KAFKA_UNUSED = {  # the keys of the stock file this broker has no use for
    "num.network.threads", "num.io.threads", "socket.send.buffer.bytes",
    "socket.receive.buffer.bytes", "num.recovery.threads.per.data.dir",
    "offsets.topic.replication.factor", "transaction.state.log.replication.factor",
    "transaction.state.log.min.isr", "group.initial.rebalance.delay.ms",
}


def _ignored(caplog) -> list[str]:
    """The keys named by the 'ignoring Kafka setting' warnings, one entry each."""
    return [r.getMessage().split("ignoring Kafka setting ")[1].split(":")[0]
            for r in caplog.records
            if r.levelno == logging.WARNING and "ignoring Kafka setting" in r.getMessage()]


def test_a_stock_kafka_server_properties_loads(caplog):
    caplog.set_level(logging.INFO, logger="pybroker.config")
    config = BrokerConfig.load(str(KAFKA_SERVER_PROPERTIES))
    assert config["broker.id"] == 0
    assert config["log.dirs"] == "/tmp/kafka-logs"
    assert config["zookeeper.connect"] == "localhost:2181"
    assert config["log.retention.ms"] == 168 * 3600 * 1000  # log.retention.hours=168
    assert config["log.segment.bytes"] == 1 << 30
    assert config["log.retention.check.interval.ms"] == 300_000
    assert config["zookeeper.connection.timeout.ms"] == 18_000
    assert config["socket.request.max.bytes"] == 100 << 20
    assert config["num.partitions"] == 1
    assert sorted(_ignored(caplog)) == sorted(KAFKA_UNUSED)  # one warning per key
    assert all(f"{KAFKA_SERVER_PROPERTIES}:" in r.getMessage() for r in caplog.records
               if "ignoring" in r.getMessage())  # each names file:line


def test_an_operator_edited_kafka_file_loads(tmp_path, caplog):
    """Uncommented listeners, `key : value` and `key value` lines, a continued value."""
    text = KAFKA_SERVER_PROPERTIES.read_text()
    text = text.replace("#listeners=PLAINTEXT://:9092", "listeners = PLAINTEXT://:9092")
    text = text.replace("broker.id=0", "broker.id : 3")
    text = text.replace("zookeeper.connect=localhost:2181",
                        "zookeeper.connect zk1:2181,\\\n    zk2:2181/kafka")
    text += "log.retention.minutes=90\n"  # wins over log.retention.hours
    path = tmp_path / "server.properties"
    path.write_text(text)
    caplog.set_level(logging.WARNING, logger="pybroker.config")
    config = BrokerConfig.load(str(path), {"num.partitions": "4"})
    assert config["broker.id"] == 3
    assert config["zookeeper.connect"] == "zk1:2181,zk2:2181/kafka"
    assert config["log.retention.ms"] == 90 * 60_000
    assert config["num.partitions"] == 4
    assert sorted(_ignored(caplog)) == sorted(KAFKA_UNUSED | {"listeners"})


def test_a_bad_value_in_a_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "server.properties"
    path.write_text("broker.id=1\n# a comment\nnum.partitions\n")
    with pytest.raises(ConfigError, match=r"server\.properties:3: num\.partitions='': "
                                          r"expected int"):
        BrokerConfig.load(str(path))
    path.write_text("\n\nlog.retension.ms=5\n")
    with pytest.raises(ConfigError, match=r"server\.properties:3: unknown setting "
                                          r"'log\.retension\.ms'; did you mean "
                                          r"'log\.retention\.ms'\?"):
        BrokerConfig.load(str(path))
    path.write_text("log.roll.hours=0\n")
    with pytest.raises(ConfigError, match=r"server\.properties:1: log\.roll\.hours='0' "
                                          r"as log\.roll\.ms=0: allowed >= 1"):
        BrokerConfig.load(str(path))


def test_log_dirs_list_is_refused_not_taken_for_one_directory():
    """Kafka's log.dirs may list several directories; pybroker stores in one."""
    from pybroker.config import BrokerConfig, ConfigError
    with pytest.raises(ConfigError, match="log.dirs='/a,/b': allowed one directory"):
        BrokerConfig.load(None, {"log.dirs": "/a,/b"})
    assert BrokerConfig.load(None, {"log.dirs": "/data/kafka"})["log.dirs"] == "/data/kafka"
