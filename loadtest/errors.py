"""The load test's exception tree (shown by the CLI as one line, exit status 2)."""

from __future__ import annotations

from memories.errors import SpartanError


class LoadTestError(SpartanError):
    """A load test, calibration or profile cannot run as asked; the message says what to fix."""
