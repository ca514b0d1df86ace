"""Coordination through a real Apache ZooKeeper (P13-P19): the server launcher and,
beside it, the registries, controller and group coordinator."""
