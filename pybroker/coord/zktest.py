"""Test helpers for a real ZooKeeper: force a session expiry the way a network
partition longer than the session timeout would, without waiting that long.

The technique: a second connection presents the same session id and password (the
server moves the session to it and drops the first connection), then sends
closeSession. The session is gone; when the original client reconnects, the server
answers "expired", kazoo reports KazooState.LOST, drops the session's ephemeral nodes
and watches from its view, and opens a new session.

The second connection speaks the ZooKeeper wire protocol directly (jute encoding,
big-endian), which keeps the window between "take the session" and "close it" to one
loopback round trip, far shorter than the original client's reconnect backoff.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

from kazoo.client import KazooClient, KazooState

from pybroker.errors import PyBrokerError

CLOSE_SESSION_OP = -11  # OpCode.closeSession
CLOSE_XID = 1  # any positive xid; ours is the only request on the connection
ATTACH_TIMEOUT_MS = 10_000  # requested session timeout; irrelevant, we close at once
ROUND_TRIP_S = 5.0  # socket timeout for the raw connection's two round trips
LOST_WAIT_S = 2.0  # per attempt: how long the original client gets to see the expiry


class SessionExpiryError(PyBrokerError):
    """The session could not be expired, or the client did not notice in time."""


def expire_session(client: KazooClient, connect_string: str, timeout: float = 30.0,
                   wait_reconnected: bool = True) -> None:
    """Expire `client`'s current session for real, and wait until kazoo reports LOST.

    `connect_string` names the server ("host:port[,host:port...][/chroot]"; the first
    host is used, the chroot ignored). With `wait_reconnected` (the default) it also
    waits until the client holds a new session, so the test can go on using it.
    Raises SessionExpiryError after `timeout` seconds.
    """
    if client.client_id is None:
        raise SessionExpiryError("client has no session: is it started and connected?")
    session_id, password = client.client_id
    host, port = _first_server(connect_string)
    deadline = time.monotonic() + timeout
    lost = threading.Event()

    def on_state(state: str) -> None:
        if state == KazooState.LOST:
            lost.set()

    client.add_listener(on_state)
    try:
        while not lost.is_set():
            _remaining(deadline, f"session 0x{session_id:x} was not reported LOST")
            # An attempt fails when the original client re-attaches before our close
            # lands (the server then drops our connection instead); just try again.
            _close_session(host, port, session_id, password)
            lost.wait(min(LOST_WAIT_S, max(deadline - time.monotonic(), 0)))
    finally:
        client.remove_listener(on_state)
    if wait_reconnected:
        _wait_new_session(client, session_id, deadline)


def _close_session(host: str, port: int, session_id: int, password: bytes) -> bool:
    """Attach to the session and close it; True if the server confirmed the close."""
    try:
        with socket.create_connection((host, port), timeout=ROUND_TRIP_S) as sock:
            _send_frame(sock, _connect_request(session_id, password))
            timeout_ms = struct.unpack_from(">iiq", _recv_frame(sock))[1]
            if timeout_ms <= 0:
                return True  # the server already considers the session expired
            _send_frame(sock, struct.pack(">ii", CLOSE_XID, CLOSE_SESSION_OP))
            xid, _zxid, err = struct.unpack_from(">iqi", _recv_frame(sock))
            return xid == CLOSE_XID and err == 0
    except (OSError, struct.error):
        return False


def _connect_request(session_id: int, password: bytes) -> bytes:
    # ConnectRequest: protocolVersion, lastZxidSeen, timeOut, sessionId, passwd, readOnly.
    # lastZxidSeen 0: a value above the server's would make it refuse us.
    return (struct.pack(">iqiq", 0, 0, ATTACH_TIMEOUT_MS, session_id)
            + struct.pack(">i", len(password)) + password + b"\x00")


def _send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack(">i", len(payload)) + payload)


def _recv_frame(sock: socket.socket) -> bytes:
    (length,) = struct.unpack(">i", _recv_exact(sock, 4))
    return _recv_exact(sock, length)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"server closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def _wait_new_session(client: KazooClient, old_session_id: int, deadline: float) -> None:
    while True:
        current = client.client_id
        if client.connected and current is not None and current[0] != old_session_id:
            return
        _remaining(deadline, "client did not open a new session after the expiry")
        time.sleep(0.02)


def _remaining(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise SessionExpiryError(what)
    return left


def _first_server(connect_string: str) -> tuple[str, int]:
    servers = connect_string.split("/", 1)[0]
    host, _, port = servers.split(",")[0].rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"connect string {connect_string!r} is not host:port[/chroot]")
    return host, int(port)
