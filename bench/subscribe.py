"""Subscription benchmark (catch-up, live delivery, idle subscribers, persistent): `python bench/subscribe.py --help`."""
import sys

from evstore.client.bench.subscribe import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
