"""The service's exception tree; ``service.api.errors`` maps each class to one HTTP status.

Errors raised by the memories package (invalid memory file, backbone mismatch) pass through
unchanged and are mapped there too.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service raises on purpose; the message is safe to show."""


class InvalidTaskIdError(ServiceError):
    """A task id that does not match the allowed pattern (422)."""


class TaskNotFoundError(ServiceError):
    """No such task, or not visible to the caller (404)."""


class VersionConflictError(ServiceError):
    """An If-Match version did not match the current version (412)."""


class RegistryUnavailableError(ServiceError):
    """The registry backend cannot be reached (503)."""


class OverloadedError(ServiceError):
    """The engine queue is full (429 with Retry-After)."""


class DeadlineExceededError(ServiceError):
    """The request's deadline passed before it was served (504)."""


class ShuttingDownError(ServiceError):
    """The engine no longer admits requests (503)."""


class CgroupError(ServiceError):
    """A cgroup cannot be created or configured here (not root, controller missing, bad limit)."""
