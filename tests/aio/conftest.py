"""Fixtures for the grpc.aio interceptor tests: the bytes server of tests/grpc on 127.0.0.1."""

from tests.grpc.bytes_server import registry, server

__all__ = ["registry", "server"]  # the fixtures, shared with the other interceptor tests
