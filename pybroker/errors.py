"""The one exception hierarchy of pybroker.

Every error pybroker raises derives from PyBrokerError; where a builtin type helps
callers (a bad argument is a ValueError, an I/O failure an OSError) the subclass
derives from that builtin too.
"""
import os


class PyBrokerError(Exception):
    """Base of every pybroker error."""


class CoreError(PyBrokerError):
    """A status code returned by the C core (see csrc/pb_status.h)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class CorruptRecordError(CoreError, ValueError):
    """A record batch failed validation: bad length, magic, CRC or record count."""

    def __init__(self, code: int, message: str, position: int):
        super().__init__(code, message)
        self.position = position


class CoreIOError(CoreError, OSError):
    """A system call in the C core failed; `errno` holds its error (ENOSPC, EBADF...)."""

    def __init__(self, code: int, message: str, err: int | None = None):
        super().__init__(code, message)
        self.errno = err
        self.strerror = os.strerror(err) if err else None

    def __str__(self) -> str:
        return self.args[0]


class CoreBuildError(PyBrokerError, ImportError):
    """The compiled core is missing or was built for another pybroker version."""


class OffsetOutOfRange(PyBrokerError, LookupError):
    """An offset below the log start offset or above the log end offset."""


class LogClosedError(PyBrokerError):
    """An operation on a partition log that has been closed."""


class LogSyncFailedError(PyBrokerError, OSError):
    """An fdatasync of this log failed. What it covered may never reach the disk, and a
    later fdatasync can succeed without writing it (Linux reports a writeback error
    once), so the log takes no more appends and its high watermark stays where it was
    until it is reopened, which recovers it from the recovery point."""


class MessageTooLarge(PyBrokerError, ValueError):
    """A batch larger than the configured maximum."""


class CorruptLogError(PyBrokerError):
    """Damage found before the recovery point: data that was durable is unreadable."""
