"""Where relative paths in configs point: $RAYGEN_HOME when set, else the current directory.

Ray workers, `ray job submit` jobs and Serve replicas run with other working directories, so every path
is made absolute on the driver before it crosses into Ray.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("RAYGEN_HOME") or os.getcwd()).resolve()


def resolve(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (home() / p).resolve()


def location(path: str | os.PathLike) -> str:
    """A URI (s3://, gs://...) as it is; a local path made absolute (see resolve)."""
    return str(path) if "://" in str(path) else str(resolve(path))
