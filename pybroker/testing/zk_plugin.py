"""pytest plugin: one real ZooKeeper per test session, a fresh chroot per test.

Enable it in the root conftest with `pytest_plugins = ["pybroker.testing.zk_plugin"]`
(tests/conftest.py does). A sub-directory conftest may instead re-export it with
`from pybroker.testing.zk_plugin import *`, but not both: the re-exported fixtures
would override the plugin's and start a second server for that directory.

Fixtures
    zk_server          session: the running EmbeddedZooKeeper (tick 500 ms, so
                       sessions may last 1..10 s; fsync off: tests only).
    zk_root            session: a kazoo client at the real root, for setup and for
                       looking across chroots. Tests should not write outside their own.
    zk_chroot          test: a unique, freshly created path "/t-<test>-<random>",
                       deleted with everything under it after the test.
    zk_connect         test: "127.0.0.1:PORT/t-..." - the chroot's connect string, for
                       code under test that opens its own clients.
    zk                 test: a started KazooClient on that chroot, stopped after.
    expire_zk_session  a function `expire(client, timeout=30.0, wait_reconnected=True)`
                       that really expires `client`'s session (see coord.zktest).

A missing ZooKeeper package is an error in every test that needs it, never a skip.
When a test that used the server fails, the server's log written during that test is
attached to its report as the section "ZooKeeper log".
"""

from __future__ import annotations

import functools
import re
import secrets

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError, NotEmptyError

from pybroker.coord.zkserver import EmbeddedZooKeeper
from pybroker.coord.zktest import expire_session

__all__ = [
    "zk_server", "zk_root", "zk_chroot", "zk_connect", "zk", "expire_zk_session",
    "pytest_runtest_setup", "pytest_runtest_makereport",
]

# 500 ms ticks: sessions may last 2..20 ticks = 1..10 s, so a test can ask for a short
# session, and kazoo's default of 10 s still fits.
TEST_TICK_MS = 500
CLIENT_START_TIMEOUT_S = 15.0
LOG_SECTION = "ZooKeeper log"
LOG_REPORT_BYTES = 64 * 1024  # a failing test's report shows at most this much log

_SERVER = pytest.StashKey[EmbeddedZooKeeper]()
_LOG_OFFSET = pytest.StashKey[int]()


@pytest.fixture(scope="session")
def zk_server(tmp_path_factory, pytestconfig):
    """The session's ZooKeeper; started on first use, stopped at the session's end."""
    server = EmbeddedZooKeeper(tmp_path_factory.mktemp("zookeeper"), tick_ms=TEST_TICK_MS,
                               fast_unsafe=True)
    server.start()  # ZooKeeperNotInstalled propagates: the test errors, loudly
    pytestconfig.stash[_SERVER] = server
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def zk_root(zk_server):
    """A kazoo client on the server's real root, shared by the whole session."""
    client = _started_client(zk_server.connect_string)
    yield client
    _close_client(client)


@pytest.fixture
def zk_chroot(request, zk_root):
    """A unique, empty chroot path for this test; removed with its contents afterwards."""
    path = f"/t-{_node_safe(request.node.name)}-{secrets.token_hex(4)}"
    zk_root.create(path)
    yield path
    _delete_tree(zk_root, path)


@pytest.fixture
def zk_connect(zk_server, zk_chroot):
    """Connect string of this test's chroot: "127.0.0.1:PORT/t-..."."""
    return f"{zk_server.connect_string}{zk_chroot}"


@pytest.fixture
def zk(zk_connect):
    """A started KazooClient confined to this test's chroot."""
    client = _started_client(zk_connect)
    yield client
    _close_client(client)


@pytest.fixture
def expire_zk_session(zk_server):
    """expire(client, timeout=30.0, wait_reconnected=True): end client's session now."""
    return functools.partial(expire_session, connect_string=zk_server.connect_string)


# -- the server log in failure reports ------------------------------------------------

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # Remember where the log stood when this test began, so a failure shows only what
    # happened during it. A server started by this test's setup begins at 0.
    if _LOG_OFFSET not in item.stash:
        server = item.config.stash.get(_SERVER, None)
        item.stash[_LOG_OFFSET] = server.log_offset() if server is not None else 0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and "zk_server" in getattr(item, "fixturenames", ()):
        _attach_log(item, report)
    return report


def _attach_log(item, report) -> None:
    server = item.config.stash.get(_SERVER, None)
    # The plugin may be registered twice (root plugin + a conftest re-export).
    if server is None or any(name == LOG_SECTION for name, _ in report.sections):
        return
    text = server.read_log(item.stash.get(_LOG_OFFSET, 0), LOG_REPORT_BYTES)
    report.sections.append((LOG_SECTION, f"{server.log_path}:\n{text}"))


# -- helpers --------------------------------------------------------------------------

def _started_client(hosts: str) -> KazooClient:
    client = KazooClient(hosts=hosts)
    client.start(timeout=CLIENT_START_TIMEOUT_S)
    return client


def _close_client(client: KazooClient) -> None:
    client.stop()
    client.close()


def _node_safe(name: str) -> str:
    # Test ids carry brackets, slashes and spaces; a znode name should not.
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80]


def _delete_tree(client: KazooClient, path: str, attempts: int = 5) -> None:
    # A client the test forgot to stop may still be adding ephemeral nodes while we
    # delete, which makes the final delete fail with NotEmpty; a retry catches up.
    for attempt in range(attempts):
        try:
            client.delete(path, recursive=True)
            return
        except NoNodeError:
            return
        except NotEmptyError:
            if attempt == attempts - 1:
                raise
