"""Fixtures shared by the integration tests: a real daemon, registry and test images."""
