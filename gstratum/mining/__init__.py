"""Pure mining core: Bitcoin serialization, jobs, share hashing and judging (no I/O)."""
