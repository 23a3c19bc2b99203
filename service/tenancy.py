"""The keys and quotas in force, read from the settings and the keys file, reloaded when it changes.

One object the app and the runtime share: the :class:`~service.auth.KeyRing` that names callers,
the :class:`~service.quotas.Quotas` per tenant and the rate limiter that applies them. A keys
file that fails to parse at start-up stops the service; one that fails on a later reload is
refused, the previous keys and quotas stay in force, and readiness reports the problem until a
valid file replaces it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from service.auth import ApiKey, KeyRing
from service.errors import ServiceError
from service.keysfile import KeysFile, read_keys_file
from service.quotas import Quota, RateLimiter

log = logging.getLogger(__name__)


class Tenancy:
    def __init__(self, keys: list[ApiKey], path: Path | None) -> None:
        self._setting_keys = keys
        self.path = path
        self.reload_error: str | None = None
        self._stamp: tuple[int, int] | None = None
        content = self._read()
        self.keyring = self._keyring(content)
        self.limiter = RateLimiter(content.quotas)  # holds the quotas in force

    def _read(self) -> KeysFile:
        if self.path is None:
            return KeysFile()
        stat = self.path.stat() if self.path.exists() else None
        content = read_keys_file(self.path)
        self._stamp = (stat.st_mtime_ns, stat.st_size) if stat is not None else None
        return content

    def _keyring(self, content: KeysFile) -> KeyRing:
        return KeyRing([*self._setting_keys, *content.keys], content.quotas.tenants)

    def quota(self, tenant: str) -> Quota:
        return self.limiter.quotas.of(tenant)

    def weight(self, tenant: str) -> float:
        return self.quota(tenant).weight

    def _changed(self) -> bool:
        if self.path is None:
            return False
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return self._stamp is not None
        return (stat.st_mtime_ns, stat.st_size) != self._stamp

    def reload(self) -> bool:
        """Read the keys file again if it changed; True when new keys and quotas are in force."""
        if not self._changed():
            return False
        try:
            content = self._read()
        except ServiceError as exc:
            if self.reload_error != str(exc):
                log.error("keys file not reloaded, the previous keys and quotas stay in force: %s", exc)
            self.reload_error = str(exc)
            return False
        self.keyring = self._keyring(content)
        self.limiter.update(content.quotas)
        self.reload_error = None
        log.info(
            "keys file reloaded: %d keys, quotas for %d tenants",
            len(content.keys),
            len(content.quotas.tenants),
        )
        return True

    async def watch(self, interval_s: float) -> None:
        """Reload whenever the keys file changes (checked every ``interval_s``); runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            await asyncio.to_thread(self.reload)
