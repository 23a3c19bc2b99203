"""Atomic file replacement: readers see the old file or the whole new one, never a part.

Every file the project writes goes through here: memory files, registry records, reports
(:func:`write_json`) and their plots (:func:`write_figure`).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory, fsync and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o644)  # mkstemp makes 0600; memories are meant to be shared
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, document: object) -> None:
    """Write ``document`` as indented JSON (with a final newline) atomically: every report writer."""
    atomic_write(path, (json.dumps(document, indent=2) + "\n").encode())


def write_figure(figure: Any, path: Path, dpi: int) -> None:
    """Render a matplotlib figure to PNG in memory and write it atomically (plots beside reports)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    atomic_write(path, buffer.getvalue())
