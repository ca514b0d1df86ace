"""Storage: segmented, append-only partition logs addressed by offset (paper P4-P12, P22)."""
from pybroker.log.config import LogConfig
from pybroker.log.partition_log import AppendResult, FileSlice, PartitionLog

__all__ = ["AppendResult", "FileSlice", "LogConfig", "PartitionLog"]
