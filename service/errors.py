"""The service's subtree of the one exception tree (root: :class:`memories.errors.SpartanError`).

``service.api.errors`` maps every class of the tree, this subtree and the core's, to one HTTP
status in one table. Messages are written for the caller and are safe to show.
"""

from __future__ import annotations

from memories.errors import SpartanError


class ServiceError(SpartanError):
    """Base of every error the service raises on purpose (400 unless a subclass says otherwise)."""


class SettingsError(ServiceError):
    """A setting (flag or environment variable) is invalid; the service does not start."""


class UnauthorizedError(ServiceError):
    """No key, or an unknown key, while keys are configured (401)."""


class InvalidRequestError(ServiceError):
    """A request that is well formed but cannot be served as sent (422): empty text, bad header."""


class PayloadTooLargeError(ServiceError):
    """A request over a configured size limit: too many texts, too long, too big a file (413)."""


class UnsupportedMediaTypeError(ServiceError):
    """A body sent with the wrong content type (415)."""


class InvalidTaskIdError(InvalidRequestError):
    """A task id that does not match the allowed pattern (422)."""


class InvalidTenantError(InvalidRequestError):
    """A tenant name that does not match the allowed pattern (422)."""


class ForbiddenError(ServiceError):
    """A tenant key addressing another tenant's namespace (403); says nothing about its tasks."""


class TaskNotFoundError(ServiceError):
    """No such task in the addressed namespace (404)."""


class UnknownTenantError(TaskNotFoundError):
    """An admin call naming a tenant that no key or quota names (404)."""


class VersionConflictError(ServiceError):
    """An If-Match version did not match the current version (412)."""


class RegistryUnavailableError(ServiceError):
    """The registry backend cannot be reached, or cannot be written: read-only or gone (503)."""


class RegistryFullError(ServiceError):
    """The registry's storage has no space left (ENOSPC, EDQUOT) and stored nothing (507)."""


class OverloadedError(ServiceError):
    """The engine queue, or the tenant's share of it, is full (429 with Retry-After)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimitedError(OverloadedError):
    """The tenant is over its rate quota (429; Retry-After says when its bucket has the tokens)."""


class StorageQuotaError(ServiceError):
    """An upload would take the tenant over its task count or stored bytes (403); nothing is stored."""


class RequestTimeoutError(ServiceError):
    """The request body did not arrive within the body timeout (408; the connection closes)."""


class DeadlineExceededError(ServiceError):
    """The request's deadline passed before it was served (504)."""


class ShuttingDownError(ServiceError):
    """The engine no longer admits requests (503)."""
