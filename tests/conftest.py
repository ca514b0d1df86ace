"""Shared fixtures: a real ZooKeeper (pybroker.testing.zk_plugin) for tests that need it."""

pytest_plugins = ["pybroker.testing.zk_plugin", "pybroker.testing.broker_plugin"]
