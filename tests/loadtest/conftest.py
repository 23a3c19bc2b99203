"""The load tests run against real servers: reuse the service tests' server fixture."""

from tests.service.conftest import service_factory

__all__ = ["service_factory"]
