"""Test support shipped with the package: the pytest plugin for a real ZooKeeper
(`pybroker.testing.zk_plugin`)."""
