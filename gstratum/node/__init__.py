"""Bitcoin Core as the source of work: RPC with failover, templates to jobs, new-block triggers, block submission."""
