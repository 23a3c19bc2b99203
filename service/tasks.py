"""Task ids: the one place that says what a task id may look like and how it becomes a key."""

from __future__ import annotations

import re

from service.errors import InvalidTaskIdError

TASK_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_TASK_ID = re.compile(TASK_ID_PATTERN)


def validate_task_id(task: str) -> str:
    """Return the id unchanged, or raise InvalidTaskIdError saying what is allowed."""
    if not _TASK_ID.fullmatch(task):
        raise InvalidTaskIdError(
            f"invalid task id {task[:80]!r}: use 1-64 characters of a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return task


def storage_key(task: str) -> str:
    """A reversible, path- and key-safe form of a validated task id (hex of its UTF-8 bytes)."""
    return validate_task_id(task).encode().hex()


def task_from_key(key: str) -> str:
    return bytes.fromhex(key).decode()
