"""Process-local counters and histograms (plain ints: a hot-path increment costs nothing), their snapshot, and a
prometheus-client collector that exposes one or many snapshots (with --workers, the supervisor sums its workers').

Names follow Prometheus conventions: `gstratum_..._total` counters, seconds as the unit, and no unbounded label
values (no worker names, no addresses): share results and drop reasons are small fixed sets.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from gstratum import __version__
from gstratum.protocol.rpc import StratumCode
from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

SHARE_RESULTS = {None: "accepted", StratumCode.OTHER: "invalid", StratumCode.JOB_NOT_FOUND: "stale",
                 StratumCode.DUPLICATE_SHARE: "duplicate", StratumCode.LOW_DIFFICULTY: "low_difficulty",
                 StratumCode.UNAUTHORIZED: "unauthorized", StratumCode.NOT_SUBSCRIBED: "not_subscribed"}
FANOUT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
DB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# process_* of the process serving /metrics (with --workers: the supervisor); made once, it reads /proc per scrape
PROCESS = ProcessCollector(registry=None)


@dataclass
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def as_dict(self) -> dict:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.total}


@dataclass
class Metrics:
    subscribes: int = 0
    authorizes: int = 0
    shares: dict = field(default_factory=dict)         # result name -> count
    blocks: int = 0
    jobs: int = 0
    accepted_difficulty: float = 0.0                  # sum over accepted shares: rate() of it is hashrate / 2**32
    job_publish_failures: int = 0                     # jobs the cluster bus could not share
    dropped: dict = field(default_factory=dict)        # reason -> count
    fanout: Histogram = field(default_factory=lambda: Histogram(FANOUT_BUCKETS))
    db_write: Histogram = field(default_factory=lambda: Histogram(DB_BUCKETS))
    gc_pause: Histogram = field(default_factory=lambda: Histogram(FANOUT_BUCKETS))
    gc_longest: float = 0.0                            # seconds, the longest collector pause so far
    loop_lag: Histogram = field(default_factory=lambda: Histogram(LAG_BUCKETS))
    gbt_latency: Histogram = field(default_factory=lambda: Histogram(DB_BUCKETS))
    block_submit_delay: Histogram = field(default_factory=lambda: Histogram(FANOUT_BUCKETS))
    block_results: dict = field(default_factory=dict)  # "accepted" / "rejected" / "stale" -> count
    block_resubmissions: int = 0                       # submitblock rounds after the first, for pending blocks
    chain_height: int = 0

    def block_result(self, result: str) -> None:
        self.block_results[result] = self.block_results.get(result, 0) + 1

    def share(self, error_code: int | None) -> None:
        name = SHARE_RESULTS.get(error_code, "invalid")
        self.shares[name] = self.shares.get(name, 0) + 1

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def counters(self) -> dict:
        return {"subscribes": self.subscribes, "authorizes": self.authorizes, "shares": dict(self.shares),
                "blocks": self.blocks, "jobs": self.jobs,
                "job_publish_failures": self.job_publish_failures, "accepted_difficulty": self.accepted_difficulty,
                "gbt_latency": self.gbt_latency.as_dict(), "block_submit_delay": self.block_submit_delay.as_dict(),
                "block_results": dict(self.block_results), "chain_height": self.chain_height,
                "block_resubmissions": self.block_resubmissions,
                "loop_lag": self.loop_lag.as_dict(), "dropped": dict(self.dropped),
                "fanout": self.fanout.as_dict(), "db_write": self.db_write.as_dict(),
                "gc_pause": self.gc_pause.as_dict()}


def _histogram(name: str, doc: str, snapshots: list[dict], key: str) -> HistogramMetricFamily:
    # a worker still running the previous release during a rolling restart may not have this histogram yet
    snapshots = [snap for snap in snapshots if key in snap]
    bounds = snapshots[0][key]["bounds"] if snapshots else []
    counts = [0] * (len(bounds) + 1)
    total = 0.0
    for snap in snapshots:
        for i, c in enumerate(snap[key]["counts"]):
            counts[i] += c
        total += snap[key]["sum"]
    buckets, running = [], 0
    for bound, count in zip(list(bounds) + [float("inf")], counts):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], buckets, total)
    return family


class PoolCollector:
    """Yields the pool's metrics from `snapshots()` (a list of process snapshots), summed."""

    def __init__(self, snapshots) -> None:
        self.snapshots = snapshots

    def collect(self):
        snaps = self.snapshots()
        total = lambda key: sum(s[key] for s in snaps)  # noqa: E731
        gauge = GaugeMetricFamily("gstratum_miners_connected", "Miner connections open now.")
        gauge.add_metric([], total("connections"))
        yield gauge
        gauge = GaugeMetricFamily("gstratum_miners_subscribed", "Miners subscribed (V1) or with a channel open (V2) now.")
        gauge.add_metric([], total("subscribed"))
        yield gauge
        for key, name, doc in (("subscribes", "gstratum_subscribes_total", "mining.subscribe answered."),
                               ("authorizes", "gstratum_authorizes_total", "mining.authorize answered."),
                               ("blocks", "gstratum_blocks_found_total", "Shares that met the network target."),
                               ("jobs", "gstratum_jobs_broadcast_total", "Jobs broadcast to miners."),
                               ("job_publish_failures", "gstratum_job_publish_failures_total",
                                "Jobs this pool's leader could not publish to the other processes.")):
            counter = CounterMetricFamily(name[:-6], doc)
            counter.add_metric([], sum(s["counters"].get(key, 0) for s in snaps))
            yield counter
        shares = CounterMetricFamily("gstratum_shares", "mining.submit by result.", labels=["result"])
        for result in SHARE_RESULTS.values():
            shares.add_metric([result], sum(s["counters"]["shares"].get(result, 0) for s in snaps))
        yield shares
        dropped = CounterMetricFamily("gstratum_miners_dropped", "Connections closed by the server, by reason.",
                                      labels=["reason"])
        reasons = sorted({r for s in snaps for r in s["counters"]["dropped"]})
        for reason in reasons:
            dropped.add_metric([reason], sum(s["counters"]["dropped"].get(reason, 0) for s in snaps))
        yield dropped
        yield _histogram("gstratum_notify_fanout_seconds", "Time to hand one job to every miner.",
                         [s["counters"] for s in snaps], "fanout")
        yield _histogram("gstratum_db_write_seconds", "Duration of one batched database write.",
                         [s["counters"] for s in snaps], "db_write")
        difficulty = CounterMetricFamily("gstratum_accepted_difficulty", "Sum of the difficulty of accepted shares "
                                         "(hashrate = rate() x 2^32).")
        difficulty.add_metric([], sum(s["counters"].get("accepted_difficulty", 0.0) for s in snaps))
        yield difficulty
        blocks = CounterMetricFamily("gstratum_blocks_submitted", "Blocks submitted to bitcoind, by result.",
                                     labels=["result"])
        for result in ("accepted", "rejected", "stale"):
            blocks.add_metric([result], sum(s["counters"].get("block_results", {}).get(result, 0) for s in snaps))
        yield blocks
        resubmissions = CounterMetricFamily("gstratum_block_resubmissions", "submitblock rounds for blocks still "
                                            "pending (nodes down, stalled, or inconclusive).")
        resubmissions.add_metric([], sum(s["counters"].get("block_resubmissions", 0) for s in snaps))
        yield resubmissions
        pending = GaugeMetricFamily("gstratum_blocks_pending", "Found blocks not accepted by any node yet (durable, "
                                    "being resubmitted). Above 0 for long is a reward at risk.")
        pending.add_metric([], sum(s.get("blocks_pending", 0) for s in snaps))
        yield pending
        yield _histogram("gstratum_event_loop_lag_seconds", "How late a 5 ms timer fires: the event loop's stalls "
                         "as every miner feels them.", [s["counters"] for s in snaps], "loop_lag")
        yield _histogram("gstratum_getblocktemplate_seconds", "getblocktemplate round trips.",
                         [s["counters"] for s in snaps], "gbt_latency")
        yield _histogram("gstratum_block_submit_delay_seconds", "From a block-meeting share to its submitblock "
                         "being sent.", [s["counters"] for s in snaps], "block_submit_delay")
        height = GaugeMetricFamily("gstratum_chain_height", "Height of the block the newest template builds on.")
        height.add_metric([], max([s["counters"].get("chain_height", 0) for s in snaps] or [0]))
        yield height
        age = GaugeMetricFamily("gstratum_template_age_seconds", "Age of the newest job's template (or random job).")
        age.add_metric([], min([s.get("template_age", 0.0) for s in snaps] or [0.0]))
        yield age
        up = GaugeMetricFamily("gstratum_node_up", "1 when the bitcoind node answers.", labels=["node"])
        for name in sorted({n for s in snaps for n in s.get("nodes", {})}):
            up.add_metric([name], max(s.get("nodes", {}).get(name, 0) for s in snaps))
        yield up
        yield _histogram("gstratum_gc_pause_seconds", "Pauses of Python's cyclic garbage collector (every miner "
                         "waits while it runs).", [s["counters"] for s in snaps], "gc_pause")
        for key, name, doc in (("writer_queue", "gstratum_writer_queue_rows", "Rows waiting in memory."),
                               ("journal_bytes", "gstratum_journal_bytes", "Spill journal bytes on disk."),
                               ("extranonce_reserve", "gstratum_extranonce_reserve",
                                "extranonce1 values reserved and not yet handed out."),
                               ("processes", "gstratum_processes", "Server processes reporting.")):
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], total(key))
            yield gauge
        for key, name, doc in (("journal_failures", "gstratum_journal_write_failures_total",
                                "Spill journal writes that failed (disk full, I/O error); the rows stay in memory."),
                               ("rows_dropped", "gstratum_rows_dropped_total",
                                "Rows lost: past the writer's memory bound while the journal could not be written, "
                                "or not encodable at all.")):
            counter = CounterMetricFamily(name[:-6], doc)
            counter.add_metric([], sum(s.get(key, 0) for s in snaps))
            yield counter
        restarts = CounterMetricFamily("gstratum_loop_restarts", "Restarts of a background loop after it raised.",
                                       labels=["loop"])
        for loop in sorted({name for s in snaps for name in s.get("loop_restarts", {})}):
            restarts.add_metric([loop], sum(s.get("loop_restarts", {}).get(loop, 0) for s in snaps))
        yield restarts
        down = GaugeMetricFamily("gstratum_loops_down", "Background loops crashed and waiting for their restart "
                                 "(the process is not ready meanwhile).")
        down.add_metric([], sum(s.get("loops_down", 0) for s in snaps))
        yield down
        info = GaugeMetricFamily("gstratum_build_info", "The running release (always 1).", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield from PROCESS.collect()
