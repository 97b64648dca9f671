"""Fixtures for the interceptor contract: the bytes server, registries, and a driver per flavour."""

from tests.contract.drivers import driver
from tests.grpc.bytes_server import registry, server

__all__ = ["driver", "registry", "server"]  # the fixtures
