"""The keys file: who may call the service (hashed keys) and what each tenant may use (quotas).

Format (JSON; ``spartan keys add`` and ``spartan keys quota`` write it, atomically)::

    {
      "keys": [{"sha256": "<hex>", "tenant": "acme", "role": "tenant"}, ...],
      "quotas": {
        "default": {"max_tasks": 100, "rows_per_second": 200},
        "tenants": {"acme": {"max_bytes": 1073741824, "weight": 2}}
      }
    }

A file that is only a JSON list of keys (the format before quotas) is read as ``{"keys": [...]}``
and rewritten in the full form by the next ``spartan keys`` command. The running service reads
the file again when it changes (service.app), so new keys and quotas apply without a restart; a
file that no longer parses is refused and the previous one stays in force.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from memories.atomic import atomic_write
from service.auth import ApiKey, Role, hash_key
from service.errors import ServiceError
from service.quotas import Quota, Quotas

KEY_PREFIX = "sk-spartan-"


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: list[ApiKey] = []
    quotas: Quotas = Quotas()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def read_keys_file(path: Path) -> KeysFile:
    """The file's keys and quotas; ServiceError naming the problem if it is unreadable or invalid."""
    try:
        raw = json.loads(path.read_bytes())
        return KeysFile.model_validate({"keys": raw} if isinstance(raw, list) else raw)
    except (OSError, ValueError, ValidationError) as exc:
        raise ServiceError(f"cannot read the keys file {path}: {exc}") from None


def _write(path: Path, content: KeysFile) -> KeysFile:
    """Validate, then write atomically; only the quota fields that were set are written, so a
    tenant's entry overrides just those. Returns the content as read back."""
    data = {
        "keys": [key.model_dump() for key in content.keys],
        "quotas": content.quotas.model_dump(exclude_unset=True),
    }
    try:
        checked = KeysFile.model_validate(data)
    except ValidationError as exc:
        raise ServiceError(f"not written, the keys file is unchanged: {exc}") from None
    atomic_write(path, json.dumps(data, indent=2).encode() + b"\n")
    return checked


def add_key(path: Path, tenant: str, role: Role) -> str:
    """Create a key for ``tenant``, store its hash in the keys file, return the key (shown once)."""
    content = read_keys_file(path) if path.exists() else KeysFile()
    key = new_key()
    keys = [*content.keys, ApiKey(sha256=hash_key(key), tenant=tenant, role=role)]
    _write(path, content.model_copy(update={"keys": keys}))
    return key


def set_quota(path: Path, tenant: str | None, quota: Quota) -> KeysFile:
    """Merge ``quota``'s explicitly set fields into a tenant's quota (None: the default); returns
    the new content. A field set to None removes that limit."""
    content = read_keys_file(path) if path.exists() else KeysFile()
    quotas = content.quotas
    if tenant is None:
        quotas = quotas.model_copy(update={"default": quota.over(quotas.default)})
    else:
        merged = quota.over(quotas.tenants.get(tenant, Quota()))
        quotas = quotas.model_copy(update={"tenants": {**quotas.tenants, tenant: merged}})
    return _write(path, content.model_copy(update={"quotas": quotas}))
