"""Found blocks, from the share to the chain, or provably dead (issue 17).

A block-meeting share becomes a `BlockRecord` (the full block and what is needed to record it), written durably
(`BlockFiles`, fsync'd, off the event loop) before the first `submitblock`, which goes to every node in parallel.
What the nodes answer decides its status (gstratum/mining/blockstatus.py): accepted (`null`, `duplicate`) ->
`submitted`; a consensus refusal -> `rejected`; anything else leaves it `pending`: nodes down or stalled, a node
that lacks the parent (behind), or `inconclusive` (valid, not on its active chain yet). A pending block is resubmitted
with exponential backoff (RETRY_MIN .. RETRY_MAX, and at once when a node comes back) and its place on the nodes'
chains re-checked, until a node accepts it, refuses it, has it on its active chain, or holds another block at its
height STALE_DEPTH deep (`stale`). The submitter's loop also takes over blocks whose process stopped: files in the
journal folder nobody holds (a crash, SIGKILL, a restart), and, on the cluster leader, pending database rows nobody
has touched for ADOPT_AFTER seconds (their process and its disk are gone).

The block keeper (the leader, every minute) follows accepted blocks: `confirmed` once CONFIRMATIONS deep, `orphaned`
when the nodes that have the chain at that height agree another block is there, and back when the chain reorganises.
Every status change goes through `BlockLedger.change` (gstratum/storage/blocks.py), one transaction each.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import gevent
import gevent.event
import gevent.pool
import psycopg2

from gstratum.errors import first_line
from gstratum.greenlets import Loops, spawn_logged
from gstratum.mining.blockstatus import (
    CONFIRMATIONS, SETTLED, Answer, BlockStatus, BlockRecord, NodeView, Place, Placement, combine, judge_answer,
    judge_rpc_error, keeper_outcome, pending_outcome, place)
from gstratum.mining.channel import FoundBlock
from gstratum.mining.template import TemplateError
from gstratum.node.rpc import NodeClient, NodeError, NodeUnavailable, Nodes, off_loop
from gstratum.storage.blocks import BlockFiles, BlockLedger, Claim
from gstratum.storage.records import text, user_of

log = logging.getLogger(__name__)

RETRY_MIN, RETRY_MAX = 1.0, 30.0   # seconds between resubmissions of a pending block (doubling)
SUBMIT_TIMEOUT = 10.0              # a timed-out submitblock may have been received: the next attempt says duplicate
VIEW_TIMEOUT = 5.0                 # each chain query of a pending or kept block
RECORD_RETRY = 2.0                 # seconds between attempts to record a status the database did not take
SCAN_EVERY = 10.0                  # seconds between looks for blocks left by stopped processes
ADOPT_AFTER = 120.0                # a pending row nobody touched this long: its process is gone (owners touch it
                                   # at every attempt, at least every RETRY_MAX seconds)
STOP_WAIT = 5.0                    # seconds a stop waits for first submissions in flight


# -- where the nodes' chains have a block ----------------------------------------------------------------------

def node_view(client: NodeClient, height: int, prevhash: str | None, timeout: float = VIEW_TIMEOUT) -> NodeView | None:
    """One node's chain at `height`; None when it cannot be asked (it then says nothing)."""
    try:
        tip = int(client.call("getblockcount", timeout=timeout))
        if tip < height:
            return NodeView(tip, None, False)
        at_height = client.call("getblockhash", height, timeout=timeout)
        knows_parent = True
        if prevhash:
            try:
                client.call("getblockheader", prevhash, True, timeout=timeout)
            except NodeError:
                knows_parent = False
        return NodeView(tip, at_height, knows_parent)
    except (NodeUnavailable, NodeError, TypeError, ValueError):   # a reorg between the calls: out of range
        return None


def chain_placement(clients: list[NodeClient], block_hash: str, height: int, prevhash: str | None,
                    timeout: float = VIEW_TIMEOUT) -> Placement:
    """Every node asked in parallel; decided by those that have the chain at that height (see blockstatus.place)."""
    views: dict[str, NodeView] = {}

    def one(client: NodeClient) -> None:
        view = node_view(client, height, prevhash, timeout)
        if view is not None:
            views[client.name] = view

    group = gevent.pool.Group()
    for client in clients:
        spawn_logged(one, client, group=group, name="node-view")
    if not group.join(timeout=3 * timeout + 2):
        group.kill(timeout=1)
    return place(dict(views), block_hash, height)


def describe(placement: Placement, height: int) -> str:
    nodes = ", ".join(placement.speakers)
    if placement.place is Place.ON_CHAIN:
        return f"on the active chain of {nodes}, {placement.depth} deep"
    if placement.place is Place.DISPLACED:
        return f"the active chain of {nodes} holds {placement.other or 'other blocks'} at height {height}, " \
               f"{placement.depth} deep"
    if placement.place is Place.SPLIT:
        return f"the nodes disagree at height {height}: on the active chain of {', '.join(placement.holders)} " \
               f"only ({nodes})"
    return f"no node has the chain at height {height} yet"


def _judge(answer) -> tuple[Answer, str]:
    """One node's submitblock outcome: (verdict, the text recorded in `results`)."""
    if isinstance(answer, NodeError):
        return judge_rpc_error(answer.code), f"error: {first_line(answer)}"
    if isinstance(answer, Exception):
        return Answer.NO_VERDICT, f"error: {first_line(answer)}"
    verdict = judge_answer(answer)
    if answer is None:
        return verdict, "accepted"
    return verdict, str(answer)


def _outputs_of(coinbase: bytes) -> list[tuple[int, bytes]]:
    from gstratum.mining.block import parse_transaction

    try:
        return [(o.value, o.script) for o in parse_transaction(coinbase).outputs]
    except ValueError:
        return []


# -- the submitter ---------------------------------------------------------------------------------------------

@dataclass(eq=False)
class Tracked:
    """A block this process drives to a settled status."""
    block: BlockRecord
    claim: Claim | None
    origin: str                                   # "found" here, or taken over from a "file" or the "database"
    status: BlockStatus = BlockStatus.PENDING
    recorded: BlockStatus | None = None           # the status the database row holds, as far as we know
    attempts: int = 0
    reason: str = ""
    results: dict = field(default_factory=dict)   # node -> its last answer
    holders: set = field(default_factory=set)     # nodes that hold it `inconclusive`: re-checked, not resubmitted
    delay: float = 0.0
    next_at: float = 0.0
    next_record_at: float = 0.0
    busy: bool = False                            # its first submission is running in its own greenlet
    logged: str | None = None                     # the pending reason last logged


class BlockSubmitter:
    def __init__(self, nodes: Nodes, work, ledger: BlockLedger, files: BlockFiles, metrics, new_id, cluster: str,
                 leadership=None, record_first: bool = False, loops: Loops | None = None) -> None:
        self.nodes = nodes
        self.loops = loops or Loops()
        # PPLNS: the row (with the split its coinbase pays) is in the database before the first submitblock, so any
        # process that sees the node's new tip knows it is ours and waits for its balance changes (storage/pplns.py)
        self.record_first = record_first
        self.work = work
        self.ledger = ledger
        self.files = files
        self.metrics = metrics
        self.new_id = new_id
        self.cluster = cluster
        self.leadership = leadership          # anything with .is_leader (the cluster bus); None: always
        self._blocks: dict[str, Tracked] = {}
        self._group = gevent.pool.Group()     # first submissions in flight: a stop waits for them
        self._wake = gevent.event.Event()
        self._loop = None
        self._seen_recoveries = 0
        self._seen_tip: str | None = None
        self._next_scan = 0.0

    @property
    def pending(self) -> int:
        return sum(1 for t in self._blocks.values() if t.status is BlockStatus.PENDING)

    def found(self, found: FoundBlock) -> None:
        """A share met the network target (on the miner's reply path: nothing here blocks)."""
        spawn_logged(self._first, found, time.perf_counter(), time.time(), group=self._group, name="submitblock")

    def _first(self, found: FoundBlock, found_perf: float, found_at: float) -> None:
        job = found.job
        template = job.block
        worker = text(found.worker)
        error = None
        try:
            raw = template.block_bytes(found.header, found.coinbase)
        except (TemplateError, ValueError) as exc:
            raw, error = b"", str(exc)
        block = BlockRecord(row_id=self.new_id(), block_hash=found.block_hash, height=job.height,
                            prevhash=template.previousblockhash, block=raw, header=found.header.hex(), worker=worker,
                            username=user_of(worker), connection_id=found.connection_id, job_id=found.job_id,
                            reward=sum(value for value, _ in _outputs_of(found.coinbase)),
                            found_at=found_at, cluster=self.cluster,
                            payouts=job.payout.record() if job.payout is not None else None)
        if block.block_hash in self._blocks:
            return
        tracked = self._blocks[block.block_hash] = Tracked(block, None, "found", busy=True)
        try:
            if error is not None:
                log.error("BLOCK %s could not be assembled: %s", block.block_hash, error)
                self._settle(tracked, BlockStatus.REJECTED, f"could not be assembled: {error}")
                return
            try:
                tracked.claim = off_loop(self.files.write, block)
            except OSError as exc:
                log.error("BLOCK %s: its durable copy could not be written in %s (%s); submitting anyway, but a crash "
                          "before a node accepts it would lose it", block.block_hash, self.files.directory, exc)
            if self.record_first:
                self._record(tracked)
            delay = time.perf_counter() - found_perf
            self.metrics.block_submit_delay.observe(delay)
            self._attempt(tracked, delay)
        finally:
            tracked.busy = False
            self._wake.set()

    def _attempt(self, t: Tracked, since_share: float | None = None) -> None:
        """Submit to every node that does not hold it yet; settle it, or keep it pending with the reason."""
        t.attempts += 1
        if t.attempts > 1:
            self.metrics.block_resubmissions += 1
        targets = [c for c in self.nodes.clients if c.name not in t.holders]
        answers = self.nodes.call_all("submitblock", t.block.block.hex(), timeout=SUBMIT_TIMEOUT,
                                      clients=targets) if targets else {}
        verdicts = {name: Answer.INCONCLUSIVE for name in t.holders}
        refusals = []
        for client in targets:
            verdict, said = _judge(answers.get(client.name, NodeUnavailable("no answer in time")))
            t.results[client.name] = said
            verdicts[client.name] = verdict
            if verdict is Answer.INCONCLUSIVE:
                t.holders.add(client.name)
            elif verdict is Answer.INVALID:
                refusals.append(f"{client.name}: {said}")
        outcome = combine(verdicts.values())
        if outcome is Answer.ACCEPTED:
            new, reason = BlockStatus.SUBMITTED, None
        elif outcome is Answer.INVALID:
            new, reason = BlockStatus.REJECTED, "refused as invalid by " + "; ".join(refusals)
        else:
            placement = chain_placement(self.nodes.clients, t.block.block_hash, t.block.height, t.block.prevhash)
            new = pending_outcome(placement)
            answered = ", ".join(f"{name}: {said}" for name, said in sorted(t.results.items()))
            reason = describe(placement, t.block.height) if new is not BlockStatus.PENDING else \
                f"no node accepted it yet ({answered}); {describe(placement, t.block.height)}"
        self._settle(t, new, reason, since_share)

    def _settle(self, t: Tracked, new: BlockStatus, reason: str | None, since_share: float | None = None) -> None:
        t.status, t.reason = new, reason or ""
        block = t.block
        if new is BlockStatus.PENDING:
            t.delay = min(max(t.delay * 2, RETRY_MIN), RETRY_MAX)
            t.next_at = time.monotonic() + t.delay
            if t.reason != t.logged or t.attempts % 10 == 0:
                log.error("BLOCK %s height %d by %r is PENDING after %d attempt(s): %s; resubmitting in %.0f s "
                          "(durable copy: %s)", block.block_hash, block.height, block.worker, t.attempts, t.reason,
                          t.delay, t.claim.path if t.claim else "database row only")
                t.logged = t.reason
        else:
            self.metrics.block_result({BlockStatus.SUBMITTED: "accepted", BlockStatus.REJECTED: "rejected",
                                       BlockStatus.STALE: "stale"}[new])
            log.log(logging.WARNING if new is BlockStatus.SUBMITTED else logging.ERROR,
                    "BLOCK %s height %d by %r: %s (%s), %d bytes, attempt %d%s", block.block_hash, block.height,
                    block.worker, new.value, t.reason or ", ".join(f"{k}: {v}" for k, v in t.results.items()),
                    len(block.block), t.attempts,
                    f", sent {since_share * 1000:.1f} ms after the share" if since_share is not None else "")
            if new is BlockStatus.SUBMITTED:
                self.work.tip_changed("our block")     # the next template at once: miners move to the new tip
        self._record(t)

    def _record(self, t: Tracked) -> None:
        """The status into the database row (inserted if missing); done with the block once it is settled there."""
        try:
            change = self.ledger.change(t.block.row_id, t.status, reason=t.reason or None, results=t.results,
                                        attempts=t.attempts, block=t.block)
        except psycopg2.Error as exc:
            t.next_record_at = time.monotonic() + RECORD_RETRY
            log.warning("BLOCK %s: status %s not recorded yet (%s); retrying", t.block.block_hash, t.status.value,
                        first_line(exc))
            return
        if change.applied:
            t.recorded = t.status
        elif change.old in SETTLED:      # settled elsewhere (another process, or this one before a restart)
            if change.old is not t.status:
                log.warning("BLOCK %s is already %s in the database (this process had it %s)", t.block.block_hash,
                            change.old.value, t.status.value)
            t.status = t.recorded = change.old
        else:
            log.error("BLOCK %s: the database row (%s) cannot become %s", t.block.block_hash,
                      change.old.value if change.old else "missing", t.status.value)
            t.recorded = t.status
        if t.status in SETTLED and t.recorded is t.status:
            if t.claim is not None:
                BlockFiles.release(t.claim, done=True)
                t.claim = None
            self._blocks.pop(t.block.block_hash, None)

    # -- the loop ---------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            now = time.monotonic()
            if now >= self._next_scan:
                self._next_scan = now + SCAN_EVERY
                self._adopt()
            # a node came back, or the chain moved (an inconclusive block connected, or buried): look again at once
            now_too = self.nodes.recoveries != self._seen_recoveries or \
                self._seen_tip not in (None, self.work.tip)
            self._seen_recoveries, self._seen_tip = self.nodes.recoveries, self.work.tip
            for t in list(self._blocks.values()):
                if t.busy:
                    continue
                if t.status is BlockStatus.PENDING and (time.monotonic() >= t.next_at or now_too):
                    self._attempt(t)
                elif t.recorded is not t.status and time.monotonic() >= t.next_record_at:
                    self._record(t)

    def _adopt(self) -> None:
        """Blocks whose process stopped: files nobody holds; on the leader, database rows nobody touches."""
        try:
            files = off_loop(self.files.adopt)
        except OSError as exc:
            log.error("cannot read block files in %s: %s", self.files.directory, exc)
            files = []
        for block, claim in files:
            tracked = self._blocks.get(block.block_hash)
            if tracked is not None and tracked.claim is None:
                tracked.claim = claim             # the file of a block this process drives from its row
            elif tracked is not None:
                BlockFiles.release(claim, done=False)
            else:
                log.error("BLOCK %s height %d by %r: taken over from %s (left by a process that stopped); "
                          "resubmitting", block.block_hash, block.height, block.worker, claim.path)
                self._blocks[block.block_hash] = Tracked(block, claim, "file")
        if self.leadership is not None and not self.leadership.is_leader:
            return
        try:
            rows = self.ledger.abandoned(self.cluster, ADOPT_AFTER)
        except psycopg2.Error as exc:
            log.warning("cannot look for abandoned pending blocks: %s", first_line(exc))
            return
        for block in rows:
            if block.block_hash not in self._blocks:
                log.error("BLOCK %s height %d by %r: pending in the database and untouched for %.0f s (its process "
                          "stopped); taken over, resubmitting", block.block_hash, block.height, block.worker,
                          ADOPT_AFTER)
                self._blocks[block.block_hash] = Tracked(block, None, "database", recorded=BlockStatus.PENDING)

    def start(self) -> None:
        self._loop = self.loops.spawn("block-submitter", self._run)

    def stop(self, timeout: float = STOP_WAIT) -> None:
        """Wait (bounded) for first submissions in flight; whatever is not settled stays in its file for the next
        start."""
        if self._loop is not None:
            self._loop.stop()
        if not self._group.join(timeout=timeout):
            log.error("block submissions still running after %.0f s at stop; their files are kept", timeout)
            self._group.kill(timeout=1)
        unsettled = [t for t in self._blocks.values() if t.status not in SETTLED or t.recorded is not t.status]
        for t in self._blocks.values():
            if t.claim is not None:
                BlockFiles.release(t.claim, done=False)
                t.claim = None
        if unsettled:
            log.error("%d block(s) not settled at stop (%s); kept in %s for the next start", len(unsettled),
                      ", ".join(f"{t.block.block_hash} {t.status.value}" for t in unsettled), self.files.directory)


# -- the keeper ------------------------------------------------------------------------------------------------

class BlockKeeper:
    """Keeps accepted blocks' status current from the nodes that have the chain at their height: `confirmed` once
    CONFIRMATIONS deep, `orphaned` when those nodes agree the active chain holds another block there, and back to
    `submitted` / `confirmed` when the chain reorganises back. A node that is behind, or never saw the block's
    parent, says nothing; nodes that disagree change nothing. Run by the cluster leader every `every` seconds."""

    def __init__(self, ledger: BlockLedger, nodes: Nodes, leadership, cluster: str, every: float = 60.0,
                 loops: Loops | None = None) -> None:
        self.ledger = ledger
        self.loops = loops or Loops()
        self.nodes = nodes
        self.leadership = leadership
        self.cluster = cluster
        self.every = every
        self._loop = None

    def _tip_height(self) -> int | None:
        heights = []
        for client in self.nodes.clients:
            try:
                heights.append(int(client.call("getblockcount", timeout=VIEW_TIMEOUT)))
            except (NodeUnavailable, NodeError, TypeError, ValueError):
                continue
        return max(heights) if heights else None

    def run_once(self) -> int:
        tip = self._tip_height()
        if tip is None:
            return 0
        try:
            rows = self.ledger.kept(self.cluster, tip - CONFIRMATIONS)
        except psycopg2.Error as exc:
            log.warning("block status check: %s", first_line(exc))
            return 0
        changed = 0
        for row_id, block_hash, height, prevhash, status in rows:
            placement = chain_placement(self.nodes.clients, block_hash, height, prevhash)
            new = keeper_outcome(status, placement)
            if new is None:
                if placement.place is Place.SPLIT:
                    log.warning("block %s at height %d stays %s: %s", block_hash, height, status.value,
                                describe(placement, height))
                continue
            try:
                change = self.ledger.change(row_id, new, reason=describe(placement, height))
            except psycopg2.Error as exc:
                log.warning("block status update: %s", first_line(exc))
                continue
            if change.applied:
                changed += 1
                log.warning("block %s at height %d: %s -> %s (%s)", block_hash, height, status.value, new.value,
                            describe(placement, height))
        return changed

    def _run(self) -> None:
        while True:
            gevent.sleep(self.every)
            if self.leadership is None or self.leadership.is_leader:
                self.run_once()

    def start(self) -> None:
        self._loop = self.loops.spawn("block-keeper", self._run)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
