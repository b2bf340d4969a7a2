"""Pure Stratum protocol: framing, the JSON-RPC codec, the PROXY header, the per-miner session (no I/O)."""
