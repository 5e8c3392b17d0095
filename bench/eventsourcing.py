"""eventsourcing application workload through evstore, eventsourcing's SQLite module and its PostgreSQL
module (on a server the script starts): `python bench/eventsourcing.py --help`."""
import os
import sys

# this file's directory comes first on sys.path and its name would shadow the eventsourcing library
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]

from evstore.client.bench.eventsourcing import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
