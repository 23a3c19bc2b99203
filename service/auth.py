"""API keys: hashed at rest, each mapping to a tenant and a role.

Keys are random tokens handed to callers once; only their sha256 is stored (the keys file,
service.keysfile, or the ``SPARTAN_API_KEYS`` setting). A request presents its key as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. With no keys configured the service
runs open: every caller is the local admin, and start-up says so loudly.

A key addresses its tenant's own namespace. An admin key may address any tenant's namespace
(the ``tenant`` query parameter of every task route); a tenant key that names another tenant is
refused with 403, whatever that tenant holds, so no answer tells one tenant about another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.errors import ForbiddenError, UnauthorizedError, UnknownTenantError
from service.tasks import DEFAULT_TENANT, TENANT_PATTERN, validate_tenant

Role = Literal["admin", "tenant"]


class ApiKey(BaseModel):
    """One stored key: its hash, the tenant it acts for, its role."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tenant: str = Field(pattern=TENANT_PATTERN)
    role: Role = "tenant"


@dataclass(frozen=True)
class Caller:
    """Who is asking: a tenant, and whether it may manage every tenant's tasks."""

    tenant: str
    admin: bool = False


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """Looks up callers by key hash; empty = open mode. ``tenants``: names known besides the keys'
    (those with quotas)."""

    def __init__(self, keys: list[ApiKey], tenants: Iterable[str] = ()) -> None:
        self._by_hash = {k.sha256: k for k in keys}
        # local: the owner of seeded memories
        self.tenants = frozenset({DEFAULT_TENANT, *tenants, *(k.tenant for k in keys)})

    @property
    def open(self) -> bool:
        return not self._by_hash

    def caller(self, presented: str | None, local_tenant: str) -> Caller:
        if self.open:
            return Caller(local_tenant, admin=True)
        if not presented:
            raise UnauthorizedError(
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            )
        entry = self._by_hash.get(hash_key(presented))
        if entry is None:
            raise UnauthorizedError("unknown API key")
        return Caller(entry.tenant, admin=entry.role == "admin")

    def namespace(self, caller: Caller, requested: str | None, upload: bool = False) -> str:
        """The tenant whose tasks a request addresses: the caller's own, or ``requested`` (admin).

        An admin upload must name a tenant some key names (or ``local``, the owner of seeded
        memories), so a typo never stores a memory nobody can use; reads and deletes may name
        any tenant, so memories of a tenant whose keys were removed can still be cleaned up.
        """
        if requested is None or requested == caller.tenant:
            return caller.tenant
        if not caller.admin:
            raise ForbiddenError(
                "the 'tenant' parameter needs an admin key; a tenant key addresses its own tasks only"
            )
        validate_tenant(requested)
        if upload and not self.open and requested not in self.tenants:
            raise UnknownTenantError(f"unknown tenant {requested!r}: no API key or quota names it")
        return requested
