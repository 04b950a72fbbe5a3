"""Helpers shared by the test packages, imported as ``tests._support.<module>``."""
