"""The harness's subtree of the one exception tree (root: :class:`memories.errors.SpartanError`).

The command line shows any of them as one line with exit status 2.
"""

from __future__ import annotations

from memories.errors import SpartanError


class LoadTestError(SpartanError):
    """A load test, calibration or profile cannot run as asked; the message says what to fix."""


class CgroupError(LoadTestError):
    """A cgroup cannot be created or configured here (not root, controller missing, bad limit)."""
