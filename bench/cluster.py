"""Single node vs 3-node cluster append throughput, and failover time over leader kills:
`python bench/cluster.py --help`."""
import sys

from evstore.client.bench.cluster import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
