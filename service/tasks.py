"""Task ids and tenant names: what they may look like, and how a tenant's task becomes a key.

Every tenant has its own namespace: ``acme``'s ``sentiment`` and ``globex``'s ``sentiment`` are
two tasks, :class:`TaskRef` ("acme/sentiment") names one of them. Ids never appear raw in paths or
Redis keys; :func:`storage_key` turns one into hex.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from service.errors import InvalidTaskIdError, InvalidTenantError

TASK_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
TENANT_PATTERN = TASK_ID_PATTERN
_NAME = re.compile(TASK_ID_PATTERN)
_RULE = "use 1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"

DEFAULT_TENANT = "local"
"""The tenant of every caller when no API keys are configured, and the owner of seeded memories."""


def validate_task_id(task: str) -> str:
    """Return the id unchanged, or raise InvalidTaskIdError saying what is allowed."""
    if not _NAME.fullmatch(task):
        raise InvalidTaskIdError(f"invalid task id {task[:80]!r}: {_RULE}")
    return task


def validate_tenant(tenant: str) -> str:
    """Return the tenant name unchanged, or raise InvalidTenantError saying what is allowed."""
    if not _NAME.fullmatch(tenant):
        raise InvalidTenantError(f"invalid tenant name {tenant[:80]!r}: {_RULE}")
    return tenant


@dataclass(frozen=True, order=True)
class TaskRef:
    """One task of one tenant; written ``tenant/task``."""

    tenant: str
    task: str

    def __post_init__(self) -> None:
        validate_tenant(self.tenant)
        validate_task_id(self.task)

    def __str__(self) -> str:
        return f"{self.tenant}/{self.task}"

    @classmethod
    def parse(cls, text: str, default_tenant: str = DEFAULT_TENANT) -> TaskRef:
        """``tenant/task``, or a bare ``task`` of ``default_tenant``."""
        tenant, _, task = text.rpartition("/")
        return cls(tenant or default_tenant, task)


def storage_key(name: str) -> str:
    """A reversible, path- and key-safe form of a validated task id or tenant (hex of its bytes)."""
    if not _NAME.fullmatch(name):
        raise InvalidTaskIdError(f"invalid name {name[:80]!r}: {_RULE}")
    return name.encode().hex()


def name_from_key(key: str) -> str:
    """The task id or tenant a :func:`storage_key` was made from."""
    return bytes.fromhex(key).decode()
