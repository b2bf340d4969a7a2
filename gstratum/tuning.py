"""Process limits and collector settings for holding tens of thousands of sockets."""
from __future__ import annotations

import gc
import logging
import resource

log = logging.getLogger(__name__)


def tune_process() -> None:
    """Raise the open-files limit to the hard limit; make the GC run less often (handshake latency spikes)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise RLIMIT_NOFILE from %d to %d: %s", soft, hard, exc)
    log.info("open files limit %d", soft)
    gc.set_threshold(50_000, 50, 100)
