"""Fixtures for the interceptor contract: the bytes server, registries, and a driver per flavour."""

from tests.contract.drivers import any_driver, driver
from tests.grpc.bytes_server import registry, server

__all__ = ["any_driver", "driver", "registry", "server"]  # the fixtures
