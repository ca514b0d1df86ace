"""Storage: segmented, append-only partition logs addressed by offset (paper P4-P12, P22)."""
from pybroker.log.config import LogConfig
from pybroker.log.leader_epochs import LeaderEpochCache
from pybroker.log.partition_log import (AppendResult, FileSlice, FlushInProgress,
                                        LogTruncatedError, PartitionLog, ReplicaOffsetMismatch,
                                        whole_batches)

__all__ = ["AppendResult", "FileSlice", "FlushInProgress", "LeaderEpochCache", "LogConfig",
           "LogTruncatedError", "PartitionLog", "ReplicaOffsetMismatch", "whole_batches"]
