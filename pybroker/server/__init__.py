"""The broker: supervisor, workers, connections, request handlers (ARCHITECTURE.md)."""
