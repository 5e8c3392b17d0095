"""Append/read benchmark of evstore against eventsourcing's SQLite recorder: `python bench/append.py --help`."""
import sys

from evstore.client.bench.append import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
