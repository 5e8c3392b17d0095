"""The evstore node: storage -> log -> api, wired by app."""
