"""Kafka error codes and the exceptions of the protocol layer.

`ErrorCode` holds the numbers Kafka puts in `error_code` fields (from the protocol
specification's error table, Java `org.apache.kafka.common.protocol.Errors`); the
names are Kafka's own so they can be searched for in Kafka's documentation.

The exceptions describe what went wrong with bytes on the wire or values handed to
the encoder. All derive from `ProtocolError`, itself a `PyBrokerError` and a
`ValueError` (bad input, not a broken broker).
"""

from __future__ import annotations

import enum

from pybroker.errors import PyBrokerError


class ErrorCode(enum.IntEnum):
    """Kafka protocol error codes (int16 on the wire)."""

    UNKNOWN_SERVER_ERROR = -1
    NONE = 0
    OFFSET_OUT_OF_RANGE = 1
    CORRUPT_MESSAGE = 2
    UNKNOWN_TOPIC_OR_PARTITION = 3
    INVALID_FETCH_SIZE = 4
    LEADER_NOT_AVAILABLE = 5
    NOT_LEADER_OR_FOLLOWER = 6
    REQUEST_TIMED_OUT = 7
    BROKER_NOT_AVAILABLE = 8
    REPLICA_NOT_AVAILABLE = 9
    MESSAGE_TOO_LARGE = 10
    STALE_CONTROLLER_EPOCH = 11
    OFFSET_METADATA_TOO_LARGE = 12
    NETWORK_EXCEPTION = 13
    COORDINATOR_LOAD_IN_PROGRESS = 14
    COORDINATOR_NOT_AVAILABLE = 15
    NOT_COORDINATOR = 16
    INVALID_TOPIC_EXCEPTION = 17
    RECORD_LIST_TOO_LARGE = 18
    NOT_ENOUGH_REPLICAS = 19
    NOT_ENOUGH_REPLICAS_AFTER_APPEND = 20
    INVALID_REQUIRED_ACKS = 21
    ILLEGAL_GENERATION = 22
    INCONSISTENT_GROUP_PROTOCOL = 23
    INVALID_GROUP_ID = 24
    UNKNOWN_MEMBER_ID = 25
    INVALID_SESSION_TIMEOUT = 26
    REBALANCE_IN_PROGRESS = 27
    INVALID_COMMIT_OFFSET_SIZE = 28
    TOPIC_AUTHORIZATION_FAILED = 29
    GROUP_AUTHORIZATION_FAILED = 30
    CLUSTER_AUTHORIZATION_FAILED = 31
    INVALID_TIMESTAMP = 32
    UNSUPPORTED_SASL_MECHANISM = 33
    ILLEGAL_SASL_STATE = 34
    UNSUPPORTED_VERSION = 35
    TOPIC_ALREADY_EXISTS = 36
    INVALID_PARTITIONS = 37
    INVALID_REPLICATION_FACTOR = 38
    INVALID_REPLICA_ASSIGNMENT = 39
    INVALID_CONFIG = 40
    NOT_CONTROLLER = 41
    INVALID_REQUEST = 42
    UNSUPPORTED_FOR_MESSAGE_FORMAT = 43
    POLICY_VIOLATION = 44
    OUT_OF_ORDER_SEQUENCE_NUMBER = 45
    DUPLICATE_SEQUENCE_NUMBER = 46
    INVALID_PRODUCER_EPOCH = 47
    INVALID_TXN_STATE = 48
    INVALID_PRODUCER_ID_MAPPING = 49
    INVALID_TRANSACTION_TIMEOUT = 50
    CONCURRENT_TRANSACTIONS = 51
    TRANSACTION_COORDINATOR_FENCED = 52
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
    SECURITY_DISABLED = 54
    OPERATION_NOT_ATTEMPTED = 55
    KAFKA_STORAGE_ERROR = 56
    LOG_DIR_NOT_FOUND = 57
    SASL_AUTHENTICATION_FAILED = 58
    UNKNOWN_PRODUCER_ID = 59
    REASSIGNMENT_IN_PROGRESS = 60
    DELEGATION_TOKEN_AUTH_DISABLED = 61
    DELEGATION_TOKEN_NOT_FOUND = 62
    DELEGATION_TOKEN_OWNER_MISMATCH = 63
    DELEGATION_TOKEN_REQUEST_NOT_ALLOWED = 64
    DELEGATION_TOKEN_AUTHORIZATION_FAILED = 65
    DELEGATION_TOKEN_EXPIRED = 66
    INVALID_PRINCIPAL_TYPE = 67
    NON_EMPTY_GROUP = 68
    GROUP_ID_NOT_FOUND = 69
    FETCH_SESSION_ID_NOT_FOUND = 70
    INVALID_FETCH_SESSION_EPOCH = 71
    LISTENER_NOT_FOUND = 72
    TOPIC_DELETION_DISABLED = 73
    FENCED_LEADER_EPOCH = 74
    UNKNOWN_LEADER_EPOCH = 75
    UNSUPPORTED_COMPRESSION_TYPE = 76
    STALE_BROKER_EPOCH = 77
    OFFSET_NOT_AVAILABLE = 78
    MEMBER_ID_REQUIRED = 79
    PREFERRED_LEADER_NOT_AVAILABLE = 80
    GROUP_MAX_SIZE_REACHED = 81
    FENCED_INSTANCE_ID = 82
    ELIGIBLE_LEADERS_NOT_AVAILABLE = 83
    ELECTION_NOT_NEEDED = 84
    NO_REASSIGNMENT_IN_PROGRESS = 85
    GROUP_SUBSCRIBED_TO_TOPIC = 86
    INVALID_RECORD = 87
    UNSTABLE_OFFSET_COMMIT = 88
    THROTTLING_QUOTA_EXCEEDED = 89
    PRODUCER_FENCED = 90
    RESOURCE_NOT_FOUND = 91
    DUPLICATE_RESOURCE = 92
    UNKNOWN_TOPIC_ID = 100
    UNSUPPORTED_ENDPOINT_TYPE = 115


class ProtocolError(PyBrokerError, ValueError):
    """Base of every error of the wire-protocol layer."""


class SchemaError(ProtocolError):
    """A message declaration is inconsistent (a bug in our schemas, found at import)."""


class FrameSizeError(ProtocolError):
    """A 4-byte frame size prefix is negative or above the configured limit.

    Raised before any byte of the body is read, so a hostile size never makes us
    allocate or wait for that many bytes.
    """

    def __init__(self, size: int, limit: int):
        if size < 0:
            reason = f"frame size {size} is negative"
        else:
            reason = f"frame size {size} exceeds the limit of {limit} bytes"
        super().__init__(reason)
        self.size = size
        self.limit = limit


class _FieldPathError(ProtocolError):
    """A protocol error that knows where in the message it happened.

    The path is built while the error unwinds through nested structs and arrays
    (innermost component first), so no bookkeeping happens on the success path.
    `context` names the message ("ProduceRequest v7"), set by the outermost caller.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
        self.context = ""
        self._parts: list[str] = []

    def add_path(self, component: str) -> None:
        """Prepend `component` (a field name or "[i]") to the path."""
        self._parts.append(component)

    @property
    def path(self) -> str:
        """The field path from the message root, e.g. "topics[0].partitions[2].records"."""
        out = ""
        for part in reversed(self._parts):
            out += part if (part.startswith("[") or not out) else "." + part
        return out

    def _prefix_and_place(self) -> tuple[str, str]:
        ctx = f"{self.context}: " if self.context else ""
        where = f" at {self.path}" if self._parts else ""
        return ctx, where


class DecodeError(_FieldPathError):
    """Bytes that do not parse under the schema: truncated, bad length, bad varint...

    `offset` is the byte position (in the decoded buffer) where the bad item starts.
    When raised by `decode_request`, `api_key`, `api_version` and `correlation_id` say
    which request it was (None while unknown), so the server can log it.
    """

    def __init__(self, reason: str, offset: int):
        super().__init__(reason)
        self.offset = offset
        self.api_key: int | None = None
        self.api_version: int | None = None
        self.correlation_id: int | None = None

    def __str__(self) -> str:
        ctx, where = self._prefix_and_place()
        return f"{ctx}{self.reason}{where} (byte offset {self.offset})"


class EncodeError(_FieldPathError):
    """A value that cannot be encoded under the schema: wrong type, out of range, a
    non-ignorable field set in a version that lacks it, a file reference given to
    `encode` instead of `encode_chunks`."""

    def __str__(self) -> str:
        ctx, where = self._prefix_and_place()
        return f"{ctx}{self.reason}{where}"


class UnsupportedRequest(ProtocolError):
    """A request whose (api_key, api_version) this broker does not implement.

    Carries what the server needs to answer or log: the api key and version, and
    the correlation id (always readable: the first 8 bytes of every request header).
    """

    def __init__(self, api_key: int, api_version: int, correlation_id: int, reason: str):
        super().__init__(f"{reason} (api_key={api_key} api_version={api_version} "
                         f"correlation_id={correlation_id})")
        self.api_key = api_key
        self.api_version = api_version
        self.correlation_id = correlation_id


class UnknownApiKey(UnsupportedRequest):
    """The api key is not one we implement at all: no response schema exists."""

    def __init__(self, api_key: int, api_version: int, correlation_id: int):
        super().__init__(api_key, api_version, correlation_id, f"unknown api key {api_key}")


class UnsupportedVersion(UnsupportedRequest):
    """A known api key at a version outside our SUPPORTED range.

    `supported` is our (min, max) for that key.
    """

    def __init__(self, api_key: int, api_version: int, correlation_id: int,
                 supported: tuple[int, int]):
        super().__init__(api_key, api_version, correlation_id,
                         f"version {api_version} of api key {api_key} is outside the "
                         f"supported range {supported[0]}-{supported[1]}")
        self.supported = supported
