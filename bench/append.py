"""Append/read benchmark of evstore against eventsourcing's PostgreSQL recorder (or its SQLite one): `python bench/append.py --help`."""
import sys

from evstore.client.bench.append import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
