"""HTTP API of the node: thin aiohttp handlers over the log."""
