"""What one commit's fdatasync costs on a WAL file that grows against one zero-filled beforehand (why the node
zero-fills its WAL at open: evstore.node.storage.wal.zero_fill), written as SQLite writes a commit: a 24-byte
frame header and a page per frame, the frames one after another, then fdatasync.

    python bench/wal_sync.py [--dir DIR] [--commits 1500] [--frames 6] [--rounds 2]

DIR is where the files go (default: the system's temporary directory; use the volume the data dir is on).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

PAGE, FRAME_HEADER, WAL_HEADER = 4096, 24, 32


def commit_syncs(path: str, *, commits: int, frames: int, zero_filled: bool) -> list[float]:
    """Seconds of each commit's fdatasync, on a new file (zero-filled to the size the commits take, or not)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        size = WAL_HEADER + commits * frames * (PAGE + FRAME_HEADER)
        if zero_filled:
            zeros = bytes(1024 * 1024)
            written = 0
            while written < size:
                written += os.pwrite(fd, zeros[:size - written], written)
            os.fsync(fd)
        header, page = b"h" * FRAME_HEADER, b"p" * PAGE
        offset, syncs = WAL_HEADER, []
        for _ in range(commits):
            for _frame in range(frames):
                os.pwrite(fd, header, offset)
                os.pwrite(fd, page, offset + FRAME_HEADER)
                offset += FRAME_HEADER + PAGE
            started = time.perf_counter()
            os.fdatasync(fd)
            syncs.append(time.perf_counter() - started)
        return syncs
    finally:
        os.close(fd)
        os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/wal_sync.py", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--commits", type=int, default=1500)
    parser.add_argument("--frames", type=int, default=6, help="pages per commit (a single-event append: about 6)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    path = os.path.join(args.dir, f"wal-sync-{os.getpid()}.tmp")
    print(f"fdatasync per commit of {args.frames} frames, {args.commits} commits, in {args.dir}")
    for _round in range(args.rounds):
        for zero_filled in (False, True):
            syncs = sorted(commit_syncs(path, commits=args.commits, frames=args.frames, zero_filled=zero_filled))
            p50, p90 = statistics.median(syncs), syncs[int(len(syncs) * 0.9)]
            print(f"  {'zero-filled' if zero_filled else 'growing':12s} p50 {p50 * 1e6:7.0f} us  p90 {p90 * 1e6:7.0f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
