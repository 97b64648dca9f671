"""Fixtures for the sync interceptor tests: a real bytes server and fake-clocked registries."""

from tests.grpc.bytes_server import registry, server

__all__ = ["registry", "server"]  # the fixtures, shared with the other interceptor tests
