"""Subscriptions: transient (live fan-out from this node's committed log, any role) and persistent.
Imports log (and storage records), never cluster internals or api."""
