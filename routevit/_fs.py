"""File-system helpers of the atomic writers (checkpoints, save_pretrained folders)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: str | Path) -> None:
    """Flush a file's or a directory's entry to disk (a directory: after renaming into it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
