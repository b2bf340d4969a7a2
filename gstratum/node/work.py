"""Work from Bitcoin Core: templates become jobs, new blocks become clean jobs at once (found blocks: node/blocks.py).

Every process of the pool asks the node itself (the node is the source of truth, and a template with thousands of
transactions cannot travel over NOTIFY): each process makes its own jobs from its own templates, so the process
whose miner finds a block holds everything needed to submit it as a full block.

A new block is learnt three ways, whichever comes first: ZMQ `hashblock` (zmq.green: a trigger, since a SUB socket
can go quiet without any error), a `getbestblockhash` poll every `block_poll` seconds as the safety net, and
`python -m gstratum blocknotify` (for `-blocknotify`) over the cluster bus. Any of them wakes one refresher
greenlet, which fetches a template and sends a clean job when the previous block changed. Between blocks a fresh
template (new fees) goes out every `template_refresh` seconds with clean_jobs false.

No node, no work: while every node is unreachable, in initial block download or refusing templates, no job is
invented. Miners keep their connection and get work as soon as a node answers again.
"""
from __future__ import annotations

import itertools
import logging
import secrets
import time

import gevent
import gevent.event
import gevent.lock

from gstratum.errors import first_line
from gstratum.greenlets import Loops
from gstratum.mining.address import describe_script, normalize_address, script_for_address
from gstratum.mining.jobs import Job
from gstratum.mining.template import BlockTemplate, TemplateError, split_reward
from gstratum.node.rpc import NodeError, NodeUnavailable, Nodes, off_loop
from gstratum.storage.pplns import BALANCES_CHANNEL, PplnsUnavailable

log = logging.getLogger(__name__)

BLOCKNOTIFY_CHANNEL = "blocknotify"
GBT_RULES = {"rules": ["segwit"]}
NEW_BLOCK_TRIGGERS = ("zmq", "poll", "blocknotify", "our block")


class PayoutAddressInvalid(ValueError):
    """--payout-address is not an address of the node's chain: start-up stops with this message."""


class NodeWork:
    """Keeps this process's job book fed from the node."""

    def __init__(self, nodes: Nodes, job_stream, metrics, payout_address: str | None, tag: bytes,
                 extranonce_size: int, template_refresh: float, block_poll: float, zmq_endpoints=(), bus=None,
                 solo: bool = False, solo_fee: float = 0.0, max_template_age: float = 120.0, payouts=None,
                 loops: Loops | None = None) -> None:
        self.nodes = nodes
        self.loops = loops or Loops()
        self.payouts = payouts                  # gstratum.storage.pplns.PplnsLedger: PPLNS, None otherwise
        self._scripts: dict[str, bytes] = {}    # PPLNS payee address -> its script (decoded once)
        self.last_split_ms: float | None = None  # how long the newest job's PPLNS split took (logged)
        self.job_stream = job_stream
        self.metrics = metrics
        self.payout_address = payout_address
        self.payout_script: bytes | None = None      # the node's scriptPubKey for payout_address (start)
        self.tag = tag
        self.extranonce_size = extranonce_size
        self.template_refresh = template_refresh
        self.block_poll = block_poll
        self.zmq_endpoints = tuple(zmq_endpoints)
        self.solo = solo
        self.solo_fee = solo_fee
        self.max_template_age = max_template_age
        self.template: BlockTemplate | None = None
        self.template_at = float("-inf")     # monotonic time of the newest template
        self.tip: str | None = None          # display hash of the block the newest template builds on
        self.last_error: str | None = None
        self.chain: str | None = None
        self._prefix = f"{secrets.randbits(32):08x}"
        self._counter = itertools.count(1)
        self._wake = gevent.event.Event()
        self._refreshing = gevent.lock.Semaphore()
        self._loops: list = []
        self.tip_learnt_at: float | None = None  # perf_counter when the last new block was heard (for latency)
        self._reason = "start"                   # what woke the refresher last (logged with the clean job)
        if bus is not None:
            bus.subscribe(BLOCKNOTIFY_CHANNEL, self._on_blocknotify)
            if payouts is not None:     # a process applied a block's balance changes: rebuild the job with them
                bus.subscribe(BALANCES_CHANNEL, self._on_balances)

    # -- readiness ----------------------------------------------------------------------------------------------
    @property
    def template_age(self) -> float:
        return time.monotonic() - self.template_at

    @property
    def fresh(self) -> bool:
        return self.template is not None and self.template_age <= self.max_template_age

    # -- payouts ------------------------------------------------------------------------------------------------
    def _resolve_payout(self) -> None:
        """The chain, and the payout address as the node sees it; ValueError (start-up stops) when it is invalid,
        NodeUnavailable when no node answers yet (retried before each template)."""
        if self.payout_address is None:
            self.chain = self.nodes.call("getblockchaininfo", timeout=10.0)["chain"]
            return
        self.payout_script, self.chain = script_from_node(self.nodes, self.payout_address)
        log.info("paying %s (%s) on chain %s", self.payout_address, describe_script(self.payout_script), self.chain)

    def solo_script(self, address: str) -> bytes:
        """A solo miner's address (the user part of its login) as a script of the node's chain; ValueError with
        the reason when it is not one."""
        if self.chain is None:
            raise ValueError("the node's chain is not known yet (no node answered); try again shortly")
        return script_for_address(address, self.chain)

    def pplns_login(self, user: str) -> str:
        """PPLNS: a login's user part checked as an address of the node's chain (ValueError with the reason), and
        returned as the node normalises it: the key of the miner's credit and balance."""
        self.solo_script(user)
        return normalize_address(user)

    def _payee_script(self, address: str) -> bytes:
        script = self._scripts.get(address)
        if script is None:
            script = self._scripts[address] = script_for_address(address, self.chain)
        return script

    # -- templates to jobs --------------------------------------------------------------------------------------
    def _outputs(self, template: BlockTemplate, miner_script: bytes | None) -> list[tuple[int, bytes]]:
        if self.solo and miner_script is not None:
            return split_reward(template.coinbasevalue, miner_script, self.solo_fee, self.payout_script)
        return [(template.coinbasevalue, self.payout_script)]

    def make_job(self, template: BlockTemplate, clean: bool) -> Job:
        """The job for a template: one coinbase (pool), or one per payout script made on demand (solo)."""
        size = self.extranonce_size

        def coinbase_for(script: bytes) -> tuple[bytes, bytes]:
            return template.coinbase_parts(self._outputs(template, script), self.tag, size)

        created_at = time.time()
        payout = None
        if self.payouts is not None:        # PPLNS: the window's miners, then the fee output (one coinbase for all)
            started = time.perf_counter()
            payout = self.payouts.job_payout(template.coinbasevalue, int(template.bits_hex, 16),
                                             template.previousblockhash, template.height, created_at)
            self.last_split_ms = (time.perf_counter() - started) * 1000
            outputs = [(o.amount, self.payout_script if o.fee else self._payee_script(o.address))
                       for o in payout.outputs]
        else:
            # the pool's own variant: solo miners never get it (they wait for authorize), it pays the fee address
            outputs = [(template.coinbasevalue, self.payout_script or bytes([0x6A]))]
        coinb1, coinb2 = template.coinbase_parts(outputs, self.tag, size)
        job = Job(job_id=f"{self._prefix}{next(self._counter):x}", prevhash=template.stratum_prevhash,
                  coinb1=coinb1.hex(), coinb2=coinb2.hex(),
                  merkle_branch=tuple(h.hex() for h in template.merkle_branch), version=template.version_hex,
                  nbits=template.bits_hex, ntime=template.curtime_hex, clean_jobs=clean, height=template.height,
                  created_at=created_at, block=template, coinbase_for=coinbase_for if self.solo else None,
                  payout=payout)
        if payout is not None:
            self.payouts.publish(job.job_id, payout)
        return job

    def refresh(self, reason: str) -> bool:
        """Fetch a template and send its job (clean when the previous block changed). False when no node gave one."""
        with self._refreshing:
            started = time.perf_counter()
            try:
                if self.chain is None:
                    self._resolve_payout()
                result = self.nodes.call("getblocktemplate", GBT_RULES)
                big = isinstance(result, dict) and len(result.get("transactions") or ()) > 200
                template = off_loop(BlockTemplate.from_gbt, result) if big else BlockTemplate.from_gbt(result)
            except (NodeUnavailable, NodeError, TemplateError) as exc:
                if self.last_error != first_line(exc):
                    log.error("no work from bitcoind (%s): %s; miners keep their last job until a node answers",
                              reason, first_line(exc))
                self.last_error = first_line(exc)
                return False
            if self.last_error is not None:
                log.info("bitcoind gives work again")
                self.last_error = None
            clean = template.previousblockhash != self.tip
            if not clean and reason in NEW_BLOCK_TRIGGERS:
                self.template_at = time.monotonic()
                return True     # told of a block this template already builds on (or not yet): nothing to send
            try:
                job = self.make_job(template, clean)
            except PplnsUnavailable as exc:
                log.error("no PPLNS split (%s): no new work until the window can be read", exc)
                self.last_error = f"PPLNS: {exc}"
                return False
            self.template, self.template_at, self.tip = template, time.monotonic(), template.previousblockhash
            self.metrics.chain_height = template.height - 1
            self.job_stream.push(job)
            if clean:
                learnt = self.tip_learnt_at
                log.info("new block %s at height %d (%s): clean job %s, %d transactions, built in %.1f ms%s%s",
                         template.previousblockhash, template.height - 1, reason, job.job_id, len(template.txids),
                         (time.perf_counter() - started) * 1000,
                         f" (PPLNS split {self.last_split_ms:.1f} ms)" if self.payouts is not None else "",
                         f", {(time.perf_counter() - learnt) * 1000:.1f} ms after the node announced it"
                         if learnt is not None else "")
            return True

    # -- triggers -----------------------------------------------------------------------------------------------
    def tip_changed(self, reason: str) -> None:
        if self.tip_learnt_at is None:
            self.tip_learnt_at = time.perf_counter()
        self._reason = reason
        self._wake.set()

    def _refresher(self) -> None:
        """One greenlet fetches templates: triggers that arrive while it works coalesce into the next round."""
        next_refresh = time.monotonic() + self.template_refresh
        while True:
            woken = self._wake.wait(timeout=max(0.0, next_refresh - time.monotonic()))
            self._wake.clear()
            reason = self._reason if woken else "refresh"
            ok = self.refresh(reason)
            self.tip_learnt_at = None
            next_refresh = time.monotonic() + (self.template_refresh if ok else min(self.block_poll, 1.0))

    def _poll(self) -> None:
        """Every block_poll seconds, the health check of every node (`getbestblockhash`, each node in its own
        greenlet with a generous timeout): the new-block path that cannot go quiet (the answer of the node that
        gives work), and what marks nodes down after repeated failures and up again. Without usable work, a retry."""
        while True:
            gevent.sleep(self.block_poll)
            self.nodes.probe(self._on_best)
            if self.template is None or self.last_error is not None:
                self.tip_changed("retry")

    def _on_best(self, client, best: str) -> None:
        if client is self.nodes.current and best != self.tip:
            self.tip_changed("poll")

    def _zmq(self, endpoint: str) -> None:
        import zmq.green as zmq

        context = zmq.Context.instance()
        while True:
            sock = context.socket(zmq.SUB)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
            sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 30)
            sock.setsockopt(zmq.SUBSCRIBE, b"hashblock")
            sock.connect(endpoint)
            try:
                while True:
                    parts = sock.recv_multipart()
                    if len(parts) >= 2 and parts[0] == b"hashblock":
                        if parts[1].hex() != self.tip:
                            if self.payouts is not None:    # is it ours? asked beside the template fetch
                                self.payouts.prefetch_tip(parts[1].hex())
                            self.tip_changed("zmq")
            except zmq.ZMQError as exc:
                log.warning("ZMQ %s: %s; reconnecting", endpoint, exc)
                gevent.sleep(1.0)
            finally:
                sock.close(linger=0)

    def _on_blocknotify(self, message: dict) -> None:
        self.tip_changed("blocknotify")

    def _on_balances(self, message: dict) -> None:
        self.payouts.heard(message)
        if not message.get("pending"):      # balances moved: the job is rebuilt with them
            self.tip_changed("balances")

    def start(self) -> None:
        """First template before miners are accepted (when a node answers); then the loops. An invalid payout
        address stops start-up here (ValueError); an unreachable node does not: work comes when it answers."""
        try:
            self._resolve_payout()
        except (NodeUnavailable, NodeError) as exc:
            log.error("bitcoind not reachable at start (%s); waiting for it, no work meanwhile", first_line(exc))
        self.refresh("start")
        self._loops = [self.loops.spawn("node-refresh", self._refresher), self.loops.spawn("node-poll", self._poll)]
        self._loops += [self.loops.spawn(f"zmq-{e}", self._zmq, e) for e in self.zmq_endpoints]

    def stop(self) -> None:
        for loop in self._loops:
            loop.stop()
        self.nodes.stop_probes()


def script_from_node(nodes: Nodes, address: str) -> tuple[bytes, str]:
    """The payout address checked by the node itself (`validateaddress`, network-aware): (script, chain). A clear
    ValueError naming the address and the node's chain when it is not valid there."""
    chain = nodes.call("getblockchaininfo", timeout=10.0)["chain"]
    answer = nodes.call("validateaddress", address, timeout=10.0)
    if not answer.get("isvalid"):
        reason = answer.get("error") or "not an address"
        raise PayoutAddressInvalid(f"--payout-address {address!r} is not valid on the node's chain {chain!r}: "
                                   f"{reason}")
    return bytes.fromhex(answer["scriptPubKey"]), chain
