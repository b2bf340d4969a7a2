"""Several processes, one pool: the LISTEN/NOTIFY bus and the job stream on it."""
