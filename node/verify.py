"""Offline checksum scan of a data directory (`evstore verify --data DIR`), no server needed."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .log import verify_connection
from .storage import DB_FILE, connect


def verify_data_dir(data_dir: str | Path, progress: Callable[[int, int], None] | None = None) -> dict:
    """Return {"checked": N, "corrupt": [positions]} (and "error" when the file itself is damaged)."""
    path = Path(data_dir) / DB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no evstore log at {path}")
    conn = connect(path, readonly=True, synchronous="NORMAL")
    try:
        return verify_connection(conn, progress)
    finally:
        conn.close()
