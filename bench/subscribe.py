"""Subscription benchmark (catch-up, live delivery, idle subscribers, persistent): `python bench/subscribe.py --help`."""
import os
import sys

# this file's directory comes first on sys.path, where bench/eventsourcing.py would shadow the eventsourcing
# library (the reference runs would be skipped)
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]

from evstore.client.bench.subscribe import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
