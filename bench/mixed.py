"""Mixed read/write benchmark (cqrs-read-model shape) of evstore against eventsourcing's PostgreSQL recorder:
`python bench/mixed.py --help`."""
import sys

from evstore.client.bench.mixed import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
