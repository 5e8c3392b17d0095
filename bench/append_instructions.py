"""Instructions per appended event, counted by valgrind (deterministic: for A/B decisions on a machine whose speed
moves by 2x within an hour, where throughput and even CPU time cannot show a 5 % change).

`python bench/append_instructions.py [--tree TREE] [--parts api,ids,seal,log,logids]`: for each part, runs itself
under `valgrind --tool=callgrind` twice (a short and a long run of the same loop) and prints the difference in
instructions divided by the difference in events, so start-up and imports cancel out. TREE is a source tree
whose `src/` is imported (default: this one), so two trees (e.g. git worktrees) compare side by side.

Parts, each over appends of 100 events of 100-byte JSON data (the shape of bench/append.py's append_b100 cases):
- api: parsing and checking the HTTP body (`validation.append_body`), node-made ids;
- ids: the same body with client-made ids (what the Python client and eventsourcing send);
- seal: the event loop's preparation of each event for the writer (`storage.seal_payloads`, with the texts of
  node-made ids; plus ~100 for resetting them each round);
- log, logids: `Log.append` of parsed bodies (node-made, client-made ids) in-process at concurrency 64 on a real
  SQLite file (the event loop, the writer thread and SQLite together; durability `sync`, whose fsync is kernel
  time and not counted).
Needs Debian's `valgrind`.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
EVENTS_PER_APPEND = 100
ROUNDS = {"api": (5, 25), "ids": (5, 25), "seal": (5, 25), "log": (40, 140), "logids": (40, 140)}


def _body(*, client_ids: bool) -> bytes:
    import orjson
    events = [{"type": "BenchEvent", "data": {"p": "x" * 92}} for _ in range(EVENTS_PER_APPEND)]
    if client_ids:
        for event in events:
            event["id"] = str(uuid.uuid4())
    return orjson.dumps({"expectedVersion": "any", "events": events})


def run_part(part: str, rounds: int) -> None:
    """The measured loop: `rounds` appends of EVENTS_PER_APPEND events."""
    from evstore.node.api.validation import append_body
    from evstore.node.storage import seal_payloads
    if part in ("api", "ids"):
        body = _body(client_ids=part == "ids")
        for _ in range(rounds):
            append_body(body)
    elif part == "seal":
        events = append_body(_body(client_ids=False))[1]
        for _ in range(rounds):
            for event in events:  # as parsed: node-made ids come without their text, which sealing makes
                if hasattr(event, "id_text"):  # trees before `id_text` made the text in the loop itself
                    event.id_text = b""
            seal_payloads("bench-1", events)
    elif part in ("log", "logids"):
        asyncio.run(_appends(rounds, client_ids=part == "logids"))
    else:
        raise SystemExit(f"unknown part {part!r}")


async def _appends(rounds: int, *, client_ids: bool) -> None:
    from evstore.node.api.validation import append_body
    from evstore.node.log import Log
    from evstore.node.storage import Storage
    # client-made ids must differ from append to append (a repeated id is answered, not written): as many bodies
    # are made in the short run as in the long one, so that making them cancels out
    bodies = [_body(client_ids=True) for _ in range(ROUNDS["logids"][1])] if client_ids else None
    body = _body(client_ids=False)
    with tempfile.TemporaryDirectory(prefix="evstore-append-ir-") as tmp:
        log = Log(Storage(Path(tmp), durability="sync"))
        await log.open()
        work = iter(range(rounds))

        async def worker(w: int) -> None:
            for i in work:
                await log.append(f"bench-{w}-{i % 50}", "any", append_body(bodies[i] if bodies else body)[1])
        try:
            await asyncio.gather(*(worker(w) for w in range(64)))
        finally:
            await log.close()


def instructions(tree: str, part: str, rounds: int) -> int:
    done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                           __file__, "--tree", tree, "--inner", part, str(rounds)],
                          capture_output=True, text=True, timeout=1200)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"valgrind run of {part} failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", default=str(HERE), help="source tree whose src/ is measured")
    parser.add_argument("--parts", default="api,ids,seal,log,logids")
    parser.add_argument("--inner", nargs=2, metavar=("PART", "ROUNDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(args.tree, "src"))
    if args.inner:
        run_part(args.inner[0], int(args.inner[1]))
        return
    for part in args.parts.split(","):
        short, long = ROUNDS[part]
        per_event = (instructions(args.tree, part, long) - instructions(args.tree, part, short)) / (
            (long - short) * EVENTS_PER_APPEND)
        print(f"{Path(args.tree).name:12} {part:5} {per_event:>9,.0f} instructions per event", flush=True)


if __name__ == "__main__":
    main()
