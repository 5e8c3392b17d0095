"""Appends as the log grows, node-made against client-made ids (issue 12 point 7): `python bench/growth.py --help`."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]

from evstore.client.bench.growth import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
