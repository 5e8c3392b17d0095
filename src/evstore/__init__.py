"""evstore: an event store for event sourcing that runs itself on Kubernetes."""

__version__ = "0.1.0"
