"""PPLNS as the database holds it: the window of the pool's accepted shares, the balances, each job's split, and the
balance changes that go with a block's fate (the rule itself is pure: gstratum/mining/pplns.py).

The window is the database's, not one process's. Every process keeps the window in memory (`Window`: O(1) a share)
and follows `pplns_shares`, where the writer puts every accepted share of the pool with a `submitted_at` strictly
increasing per pool (assigned under a per-pool lock, so a reader never sees an older share appear after a newer
one): the state at any moment is a prefix, and every process that has read the same prefix computes the same split.
A process reads what is new before each split: at every template (a new block, a refresh every --template-refresh
seconds, and at once when balances change).

Balances change only in the transaction that moves a block to accepted (or back, when it is orphaned): the
BlockLedger hook `on_block_status` inserts the block's split when its row is created and applies or reverses the
balance changes with the status. A job built on a block of ours must pay the balances as that block left them, so
before such a split the ledger waits (briefly) for the block's changes to be applied; if they are not applied in
time it pays no balance in that job (credits are paid or carried, nothing is paid twice) and the job is refreshed as
soon as they are.
"""
from __future__ import annotations

import decimal
import functools
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from fractions import Fraction

import gevent
import gevent.event
import gevent.lock
import psycopg2
import ujson

from gstratum.cluster.bus import Bus
from gstratum.errors import first_line
from gstratum.greenlets import Loops
from gstratum.mining import pplns
from gstratum.mining.blockstatus import BlockStatus
from gstratum.mining.pplns import Split, Window, WindowSnapshot

log = logging.getLogger(__name__)

BALANCES_CHANNEL = "balances"
APPLIED = (BlockStatus.SUBMITTED, BlockStatus.CONFIRMED)   # statuses whose balance changes are in force
APPLY_WAIT = 2.0          # seconds a split on our own new block waits for that block's balance changes
PUBLISH_DELAY = 1.0       # seconds after a job before its split is written for the API (after the fan-out)
WARM_DELAY = 0.3          # seconds after a job before its whole split is computed (after the fan-out)
LOAD_BATCH = 20_000
MAX_REWARD = pplns.MAX_MONEY


class PplnsUnavailable(Exception):
    """The window was never read from the database: there is no split to pay, so no job (no invented payout)."""


@dataclass(frozen=True)
class PplnsSettings:
    payout_address: str                 # as the node normalises it: gets the fee and what is not paid out
    pool_fee: Decimal = pplns.DEFAULT_POOL_FEE
    window_factor: Decimal = pplns.DEFAULT_WINDOW_FACTOR
    window_difficulty: Decimal | None = None     # --pplns-window-difficulty: the target itself
    min_output: int = pplns.DEFAULT_MIN_OUTPUT
    max_outputs: int = pplns.DEFAULT_MAX_OUTPUTS

    def target(self, nbits: int) -> Fraction:
        if self.window_difficulty is not None:
            return Fraction(self.window_difficulty)
        return pplns.window_target(self.window_factor, nbits)


class JobPayout:
    """What one job's coinbase pays, and why: its outputs (computed on the new-block path from a shortlist made
    ahead), and the whole split and window behind them (computed later, once: when the split is published or a
    block found on the job is recorded). Recorded with any block found on the job, so the block's balance changes
    are exactly the ones its coinbase implies."""

    def __init__(self, prepared: pplns.Prepared, settings: PplnsSettings, reward: int, paid: dict[str, int],
                 window: WindowSnapshot, job_created_at: datetime, height: int, balances_paid: bool) -> None:
        self.prepared = prepared
        self.settings = settings
        self.reward = reward
        self.window = window
        self.job_created_at = job_created_at
        self.height = height
        self.balances_paid = balances_paid      # False: no balance paid (our previous block's changes not applied)
        outputs = [pplns.Output(address, amount, False) for address, amount in paid.items()]
        kept = reward - sum(paid.values())
        if kept:
            outputs.append(pplns.Output(settings.payout_address, kept, True))
        self.outputs = tuple(outputs)
        self._record: dict | None = None

    @functools.cached_property
    def split(self) -> Split:
        split = self.prepared.split(self.reward, self.settings.pool_fee, self.settings.min_output,
                                    self.settings.max_outputs, payout_address=self.settings.payout_address)
        if split.outputs != self.outputs:       # one rule, two paths: they cannot differ (tests/test_pplns.py)
            raise AssertionError(f"PPLNS payees {self.outputs} differ from the split's {split.outputs}")
        return split

    def record(self) -> dict:
        """JSON-ready: the block record (file and row) and the API's current split (built once)."""
        if self._record is not None:
            return self._record
        split, window = self.split, self.window
        total = window.total
        miners = []
        for address in sorted(split.credits.keys() | split.balances.keys(),
                              key=lambda a: (-split.due(a), a)):
            weight = window.weights.get(address, Decimal(0))
            miners.append({"address": address, "weight": str(weight),
                           "share": float(weight / total) if total else 0.0,
                           "credit": split.credits.get(address, 0), "balance": split.balances.get(address, 0),
                           "due": split.due(address), "paid": split.paid.get(address, 0)})
        self._record = {
            "height": self.height, "created_at": self.job_created_at.isoformat(), "reward": split.reward,
            "fee": split.fee, "payout_address": split.payout_address, "balances_paid": self.balances_paid,
            "window": {"start": window.start.isoformat(), "end": window.end.isoformat(), "total": str(total),
                       "shares": window.shares,
                       "target": str(Decimal(window.target.numerator) / Decimal(window.target.denominator)),
                       "complete": window.complete},
            "miners": miners,
            "outputs": [{"address": o.address, "amount": o.amount, "fee": o.fee} for o in split.outputs]}
        return self._record


class PplnsLedger:
    """The window and balances of one pool (`cluster`), kept in memory from the database, and the split of each job.

    Computed ahead: a supervised loop follows the window every `follow_every` seconds and, when it or the balances
    changed, prepares the split's inputs (pplns.Prepared: integer weights, ranks); a job's split is then one pass
    over them (a few ms for 5,000 miners) plus one indexed look-up of the block the job builds on. `job_payout` runs
    in the template refresher's greenlet, never on a miner's reply path."""

    def __init__(self, db, cluster: str, settings: PplnsSettings, retain: Decimal = pplns.DEFAULT_RETAIN,
                 loops: Loops | None = None, follow_every: float = 1.0) -> None:
        self.db = db
        self.cluster = cluster
        self.settings = settings
        self.retain = retain
        self.loops = loops or Loops()
        self.follow_every = follow_every
        self.window: Window | None = None
        self.target: Fraction | None = None
        self.newest: datetime | None = None          # the newest share read from the database
        self.balances: dict[str, int] = {}
        self.balances_read = False
        self.unapplied: set[str] = set()             # blocks of ours whose balance changes are not applied yet
        self._foreign: deque[str] = deque(maxlen=64)   # recent tips with no row of ours: nothing to wait for
        self._applied = gevent.event.Event()         # set whenever a block's balance changes are applied
        self._prepared: pplns.Prepared | None = None
        self._shortlist: pplns.Shortlist | None = None
        self.reward_seen: int | None = None          # the newest template's reward: the shortlist's range is around it
        self._snapshot_at: datetime | None = None
        self._snapshot: WindowSnapshot | None = None
        self._lock = gevent.lock.Semaphore()         # one reader of the database at a time (loop or refresher)
        self._loop = None
        self._publishing: tuple[str, JobPayout] | None = None
        self.current: JobPayout | None = None

    def start(self) -> None:
        self._loop = self.loops.spawn("pplns-follow", self._follow_forever)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()

    def _follow_forever(self) -> None:
        while True:
            gevent.sleep(self.follow_every)
            if self.target is None:
                continue                             # no template yet: the first job_payout loads the window
            try:
                self.catch_up(self.target)
            except psycopg2.Error as exc:
                log.warning("PPLNS: following the window failed (%s); jobs count it as last read", first_line(exc))
            if self._shortlist is None and self.reward_seen and self._prepared is not None:
                self._shortlist_ahead()

    # -- the window -----------------------------------------------------------------------------------------------
    def _load(self, cur, target: Fraction) -> None:
        """The window from the database: newest first until the shares reach target x retain (the older ones a
        larger target may take back), then followed from the newest."""
        cur.execute("SELECT max(submitted_at) FROM pplns_shares WHERE cluster = %s", (self.cluster,))
        (newest,), = cur.fetchall()
        keep = target * Fraction(self.retain)
        rows: list[tuple] = []
        preceding = None
        if newest is not None:
            total = Decimal(0)
            cursor_time = newest
            done = False
            with decimal.localcontext() as context:
                context.prec = 200                    # a stop criterion only: the window sums exactly itself
                while not done:
                    cur.execute("SELECT address, difficulty, submitted_at FROM pplns_shares WHERE cluster = %s AND "
                                "submitted_at <= %s ORDER BY submitted_at DESC LIMIT %s",
                                (self.cluster, cursor_time, LOAD_BATCH + 1 if not rows else LOAD_BATCH))
                    batch = cur.fetchall()
                    if rows and batch and batch[0][2] == cursor_time:
                        batch = batch[1:]            # the boundary row was read in the previous batch
                    for address, difficulty, submitted_at in batch:
                        if total * keep.denominator >= keep.numerator:
                            preceding = submitted_at
                            done = True
                            break
                        rows.append((address, difficulty, submitted_at))
                        total += difficulty
                    if len(batch) < LOAD_BATCH:
                        break
                    cursor_time = batch[-1][2]
        window = Window(target, retain=self.retain, preceding=preceding)
        window.extend(reversed(rows))
        self.window, self.newest = window, newest
        log.info("PPLNS window loaded: %d shares, %d miners, total %s of target %s", window.shares,
                 window.addresses, window.total, float(target))

    def _follow(self, cur) -> int:
        """Append the shares the pool credited since the newest one read."""
        count = 0
        while True:
            cur.execute("SELECT address, difficulty, submitted_at FROM pplns_shares WHERE cluster = %s AND "
                        "submitted_at > %s ORDER BY submitted_at LIMIT %s",
                        (self.cluster, self.newest or pplns.EPOCH, LOAD_BATCH))
            rows = cur.fetchall()
            if rows:
                self.window.extend(rows)
                self.newest = rows[-1][2]
                count += len(rows)
            if len(rows) < LOAD_BATCH:
                return count

    def catch_up(self, target: Fraction) -> None:
        """Read what the database has that memory does not (the window's new shares, the balances when they
        changed) and prepare the split's inputs again if anything changed. psycopg2.Error when it cannot."""
        with self._lock:
            changed = False
            with self.db.connection() as conn, conn.cursor() as cur:
                if self.window is None or (target != self.target and not self._retarget(target)):
                    self._load(cur, target)
                    changed = True
                elif target != self.target:
                    changed = True
                self.target = target
                changed |= self._follow(cur) > 0
                if not self.balances_read:
                    self._read_balances(cur)
                    changed = True
            if changed or self._prepared is None:
                self._prepare()

    def _retarget(self, target: Fraction) -> bool:
        """A new target on the window in memory; False when it needs older shares than memory holds."""
        self.window.set_target(target)
        return self.window.complete

    def _prepare(self) -> None:
        moment = self.newest or pplns.EPOCH
        self._snapshot = self.window.snapshot(moment)
        self._snapshot_at = moment
        self._prepared = pplns.prepare(self._snapshot.weights, self.balances)
        self._shortlist = None
        if self.reward_seen:
            self._shortlist_ahead()

    def _shortlist_ahead(self) -> None:
        """The miners that can be paid by the next block's reward, which is near the newest one: half to twice."""
        settings = self.settings
        self._shortlist = self._prepared.shortlist(settings.pool_fee, settings.max_outputs, self.reward_seen // 2,
                                                   min(self.reward_seen * 2, MAX_REWARD))

    # -- balances -------------------------------------------------------------------------------------------------
    def _read_balances(self, cur) -> None:
        cur.execute("SELECT address, balance FROM balances WHERE cluster = %s AND balance <> 0", (self.cluster,))
        self.balances = {address: int(balance) for address, balance in cur.fetchall()}
        self.balances_read = True

    def prefetch_tip(self, tip: str) -> None:
        """The node announced `tip` (ZMQ): look its row up now, while the template is being fetched, so the job's
        split need not wait for the database."""
        if tip not in self._foreign:
            gevent.spawn(self._prefetch, tip)

    def _prefetch(self, tip: str) -> None:
        try:
            self._tip_unsettled(tip)
        except psycopg2.Error:
            pass                                     # the split asks again (and then says why)

    def _tip_unsettled(self, tip: str) -> bool:
        """True while `tip` is a block of this pool whose balance changes are not applied yet (pending, or accepted
        and its transaction has not run): a split now would pay balances that block already paid. Memory knows
        the blocks of this process and those announced on the bus; the row settles it for any other (a block
        with no row, or settled, is remembered: blocks do not become ours later)."""
        if tip in self.unapplied:
            return True
        if tip in self._foreign:
            return False
        with self.db.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT status, balances_applied FROM blocks WHERE cluster = %s AND block_hash = %s",
                        (self.cluster, tip))
            row = cur.fetchone()
        if row is None:
            self._foreign.append(tip)
            return False
        if row[1] or row[0] not in (BlockStatus.PENDING.value, BlockStatus.SUBMITTED.value):
            return False
        self.unapplied.add(tip)
        return True

    def heard(self, message: dict) -> None:
        """A block of the pool is pending (its balances will move), or its balance changes were applied/reversed
        (heard on the cluster bus, from any process)."""
        block = message.get("block")
        if not isinstance(block, str):
            return
        if message.get("pending"):
            self.unapplied.add(block)
        else:
            self.unapplied.discard(block)
            self.balances_read = False
            self._applied.set()

    # -- a job's split ----------------------------------------------------------------------------------------------
    def job_payout(self, reward: int, nbits: int, tip: str, height: int, created_at: float) -> JobPayout:
        """The split of a job on `tip` paying `reward`: the window as last followed (at most `follow_every` seconds
        old) and the balances as our blocks up to `tip` left them. If `tip` is a block of ours whose balance changes
        are not applied within APPLY_WAIT, or the database cannot say, the job pays no balance (credits are paid or
        carried: nothing twice) and is rebuilt once they are. PplnsUnavailable when the window was never read (no
        split to pay: the caller makes no job)."""
        target = self.settings.target(nbits)
        settled = True
        try:
            if self._prepared is None or target != self.target:
                self.catch_up(target)
            deadline = time.monotonic() + APPLY_WAIT
            while self._tip_unsettled(tip):
                if time.monotonic() >= deadline:
                    settled = False
                    break
                self._applied.clear()
                self._applied.wait(timeout=min(0.05, max(deadline - time.monotonic(), 0)))
            if settled and not self.balances_read:
                self.catch_up(target)            # our block's balance changes are applied: read them
        except psycopg2.Error as exc:
            if self._prepared is None:
                raise PplnsUnavailable(first_line(exc)) from None
            log.warning("PPLNS: the database cannot be read (%s)", first_line(exc))
            settled = False
        moment = datetime.fromtimestamp(created_at, timezone.utc)
        snapshot = self._snapshot
        if snapshot.shares == 0:                 # an empty window: start = end = the job's creation time
            snapshot = self.window.snapshot(moment)
        settings = self.settings
        if settled:
            prepared, shortlist = self._prepared, self._shortlist
        else:
            prepared, shortlist = pplns.prepare(snapshot.weights, {}), None
            log.warning("PPLNS: the balances as block %s left them are not known yet; this job pays no balance "
                        "(credits are paid or carried, nothing twice) and is rebuilt once they are", tip)
        paid = prepared.payees(reward, settings.pool_fee, settings.min_output, settings.max_outputs, shortlist)
        payout = JobPayout(prepared, settings, reward, paid, snapshot, moment, height, settled)
        if self.reward_seen is None or not (self.reward_seen // 2 <= reward <= self.reward_seen * 2):
            self.reward_seen = reward            # the shortlist follows the reward (next prepare)
            self._shortlist = None
        self.current = payout
        return payout

    def publish(self, job_id: str, payout: JobPayout) -> None:
        """The split paid now, for the API and dashboard: written PUBLISH_DELAY seconds later, in its own greenlet,
        so that turning 5,000 miners into JSON never sits inside a new block's fan-out; a newer job's split
        replaces one not written yet."""
        pending = self._publishing is not None
        self._publishing = (job_id, payout)
        gevent.spawn_later(WARM_DELAY, payout.record)       # ready before a block found on the job needs it
        if not pending:
            gevent.spawn_later(PUBLISH_DELAY, self._publish_latest).link_exception(
                lambda g: log.error("PPLNS: publishing the current split failed: %r", g.exception))

    def _publish_latest(self) -> None:
        job_id, payout = self._publishing
        self._publishing = None
        self._publish(job_id, payout)

    def _publish(self, job_id: str, payout: JobPayout) -> None:
        try:
            with self.db.connection() as conn, conn.cursor() as cur:
                cur.execute("INSERT INTO pplns_current (cluster, job_id, created_at, split) VALUES (%s, %s, %s, %s) "
                            "ON CONFLICT (cluster) DO UPDATE SET job_id = EXCLUDED.job_id, "
                            "created_at = EXCLUDED.created_at, split = EXCLUDED.split "
                            "WHERE pplns_current.created_at <= EXCLUDED.created_at",
                            (self.cluster, job_id, payout.job_created_at,
                             ujson.dumps({"job_id": job_id, **payout.record()})))
        except psycopg2.Error as exc:
            log.warning("PPLNS: current split not published: %s", first_line(exc))

    # -- a block's fate (BlockLedger hook, inside its transaction) ---------------------------------------------------
    def on_block_status(self, cur, row_id: str, block_hash: str, old: BlockStatus | None, new: BlockStatus,
                        block=None) -> None:
        """Insert the split with a new block row; apply its balance changes when it is accepted, reverse them when
        an accepted block is orphaned (the row's `balances_applied` makes both idempotent)."""
        payouts = getattr(block, "payouts", None) if block is not None else None
        if old is None and payouts:
            self._insert_split(cur, row_id, block_hash, payouts)
            if new not in APPLIED:              # its balances will move: no split pays them before they do
                self.unapplied.add(block_hash)
                cur.execute("SELECT pg_notify(%s, %s)", (Bus.channel_of(self.cluster, BALANCES_CHANNEL),
                                                         ujson.dumps({"block": block_hash, "pending": True})))
        if new in APPLIED and old not in APPLIED:
            self._move_balances(cur, row_id, block_hash, apply=True)
        elif old in APPLIED and new not in APPLIED:
            self._move_balances(cur, row_id, block_hash, apply=False)

    def _insert_split(self, cur, row_id: str, block_hash: str, payouts: dict) -> None:
        window = payouts["window"]
        cur.execute("UPDATE blocks SET window_start = %s, window_end = %s, window_total = %s::numeric, "
                    "window_shares = %s WHERE id = %s",
                    (window["start"], window["end"], window["total"], window["shares"], row_id))
        positions = {(o["address"], o["fee"]): index for index, o in enumerate(payouts["outputs"])}
        rows = [(m["address"], False, m["weight"], m["credit"], m["balance"], m["paid"],
                 positions.get((m["address"], False))) for m in payouts["miners"]]
        rows += [(o["address"], True, "0", 0, 0, o["amount"], positions[(o["address"], True)])
                 for o in payouts["outputs"] if o["fee"]]
        if rows:        # one statement for every miner (thousands): arrays, not a round trip each
            columns = list(zip(*rows))
            cur.execute("INSERT INTO block_payouts (block_hash, cluster, address, fee, weight, credit, balance, paid, "
                        "position) SELECT %s, %s, * FROM unnest(%s::text[], %s::bool[], %s::numeric[], %s::bigint[], "
                        "%s::bigint[], %s::bigint[], %s::int[]) ON CONFLICT DO NOTHING",
                        (block_hash, self.cluster, *[list(column) for column in columns]))

    def _move_balances(self, cur, row_id: str, block_hash: str, apply: bool) -> None:
        cur.execute("SELECT balances_applied FROM blocks WHERE id = %s", (row_id,))
        row = cur.fetchone()
        if row is None or bool(row[0]) == apply:
            return
        sign = 1 if apply else -1
        cur.execute("INSERT INTO balances (cluster, address, balance, updated_at) "
                    "SELECT cluster, address, %s * (credit - paid), now() FROM block_payouts "
                    "WHERE block_hash = %s AND cluster = %s AND NOT fee AND credit <> paid "
                    "ON CONFLICT (cluster, address) DO UPDATE SET balance = balances.balance + EXCLUDED.balance, "
                    "updated_at = now()", (sign, block_hash, self.cluster))
        moved = cur.rowcount
        cur.execute("UPDATE blocks SET balances_applied = %s WHERE id = %s", (apply, row_id))
        self.unapplied.discard(block_hash)      # (this process: its memory is told at once; others hear the bus)
        self.balances_read = False
        cur.execute("SELECT pg_notify(%s, %s)", (Bus.channel_of(self.cluster, BALANCES_CHANNEL),
                                                 ujson.dumps({"block": block_hash, "applied": apply})))
        log.warning("PPLNS: block %s %s: %d balance(s) %s", block_hash, "accepted" if apply else "no longer accepted",
                    moved, "moved by credit - paid" if apply else "restored")
