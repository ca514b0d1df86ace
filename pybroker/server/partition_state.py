r"""The life cycle of a partition on the node that stores it (one storage owner per
worker, pybroker.server.log_manager):

    opening --(recovered, replayed)--> online --> closing
        \                                |
         `--(open failed)--> offline <---'  (failed sync, damaged durable data)

The integer values are what the control block stores and the metrics export; they
never change meaning (append new states at the end).
"""
from __future__ import annotations

import enum


class PartitionState(enum.IntEnum):
    OPENING = 1   # recovery and producer-state replay under way on a storage thread
    ONLINE = 2    # serving produce and fetch
    OFFLINE = 3   # a failed open, a failed fdatasync, or damaged durable data
    CLOSING = 4   # being closed (shutdown, reassignment, topic deletion)

    @property
    def label(self) -> str:
        return self.name.lower()
