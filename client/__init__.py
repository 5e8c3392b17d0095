"""Python client (async and sync) and the `evstore` command line."""
