"""PPLNS end to end (issue 18) against the strict fake node: three miners of different hashrates (the project's CPU
miner), every accepted block's coinbase checked satoshi by satoshi against the rule recomputed from the shares
table, balances that carry and pay out, an orphaned block that restores them, and conservation: every satoshi of
every accepted block is in a coinbase output or a balance, none twice."""
from __future__ import annotations

import os
import time
from datetime import datetime
from decimal import Decimal

import pytest

from gstratum.client import StratumClient
from gstratum.client.work import mine
from gstratum.mining import pplns

from .conftest import query, wait_until
from .nodes import FakeNode
from .test_node_mining import POOL_ADDRESS, coinbase_outputs, get as http_get

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(bool(os.environ.get("BITCOIND")), reason="sets the fake node's network difficulty")]

MINERS = {   # address (regtest, Bitcoin Core's key_io vectors) -> shares per round: three hashrates
    "bcrt1q65nhlm4hf2ptg3t264al57p7wjxj2c3s6kyt83": 4,                       # P2WPKH
    "bcrt1p39a4s4vdcw9kqa8w2t0rp7aj8kfxyw7mce5sk5d70x6wnnmpvt7skf2kxy": 2,   # P2TR
    "n4fajahJrAuKbN7uNsKjLjQkz9Qn5ewJXQ": 1,                                   # P2PKH
}
SCRIPTS = {"bcrt1q65nhlm4hf2ptg3t264al57p7wjxj2c3s6kyt83": "0014d5277feeb74a82b4456ad57bfa783e748d256230",
           "bcrt1p39a4s4vdcw9kqa8w2t0rp7aj8kfxyw7mce5sk5d70x6wnnmpvt7skf2kxy":
               "5120897b58558dc38b6074ee52de30fbb23d92623bdbc6690b51be79b4e9cf6162fd",
           "n4fajahJrAuKbN7uNsKjLjQkz9Qn5ewJXQ": "76a914fdeca3b08e38af53d7c4c60e3ad208ce5066441088ac",
           POOL_ADDRESS: "00146f58bac9506f9bfb821d62e69330410bb56f0085"}
NETWORK_BITS = "1e0d0548"          # network difficulty 0.0003: about 30 shares of 0.00001 per block
WINDOW = Decimal("0.00012")        # 12 shares of 0.00001: the window always trims
FEE = "1.5"
MIN_OUTPUT = 10_000
MAX_OUTPUTS = 2                    # three miners, two outputs: the smallest due is carried, until it is not


def get(server, path: str):
    status, body = http_get(server, path)
    assert status == 200, (path, body)
    return body


def accepted_blocks(db, cluster: str) -> list[tuple]:
    return query(db, "SELECT block_hash, status, reward, window_start, window_end, balances_applied FROM blocks "
                     "WHERE cluster = %s AND status IN ('submitted', 'confirmed') ORDER BY found_at", cluster)


def payouts_of(db, block_hash: str) -> list[tuple]:
    return query(db, "SELECT address, fee, weight, credit, balance, paid, position FROM block_payouts "
                     "WHERE block_hash = %s ORDER BY position NULLS LAST, address", block_hash)


def window_weights(db, workers: list[str], start: datetime, end: datetime) -> dict[str, Decimal]:
    """The window recomputed from the shares table: accepted shares of this pool's workers in (start, end]."""
    rows = query(db, "SELECT worker, difficulty FROM shares WHERE submitted_at > %s AND submitted_at <= %s "
                     "AND accepted AND worker = ANY(%s)", start, end, workers)
    weights: dict[str, Decimal] = {}
    for worker, difficulty in rows:
        address = worker.split(".", 1)[0]
        weights[address] = weights.get(address, Decimal(0)) + pplns.exact_difficulty(difficulty)
    return weights


def test_pplns_pays_the_window_from_every_coinbase_and_balances_carry(tmp_path, start_server, db):
    from .conftest import new_cluster_name

    cluster = new_cluster_name()
    with FakeNode(tmp_path / "node", "--bits", NETWORK_BITS) as node:
        server = start_server("--bitcoind", node.url, "--bitcoind-cookie", str(node.cookie_path),
                              "--zmq-hashblock", node.zmq_endpoint, "--difficulty", "0.00001", "--min-difficulty",
                              "1e-9", "--vardiff", "0", "--pplns", "--payout-address", POOL_ADDRESS,
                              "--pplns-window-difficulty", str(WINDOW), "--pool-fee", FEE,
                              "--pplns-min-output", str(MIN_OUTPUT), "--pplns-max-outputs", str(MAX_OUTPUTS),
                              "--block-keeper-interval", "1", cluster=cluster)
        with StratumClient(server.host, server.port) as refused:
            refused.subscribe()
            with pytest.raises(Exception) as bad:
                refused.authorize("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4.rig")    # a mainnet address
            assert "Invalid payout address" in str(bad.value)
        clients = {}
        rig = f"rig{time.time_ns()}"          # worker names of this run only: the shares table is the database's
        workers = [f"{address}.{rig}" for address in MINERS]
        for address in MINERS:
            client = StratumClient(server.host, server.port, timeout=15)
            client.subscribe()
            client.authorize(f"{address}.{rig}")
            clients[address] = client
        try:
            deadline = time.monotonic() + 240
            while len(accepted_blocks(db, cluster)) < 5 and time.monotonic() < deadline:
                for address, shares in MINERS.items():      # one round: 4 + 2 + 1 shares
                    mine(clients[address], f"{address}.{rig}", duration=60, max_shares=shares)
        finally:
            for client in clients.values():
                client.close()
        blocks = wait_until(lambda: accepted_blocks(db, cluster), lambda rows: len(rows) >= 5 and all(
            r[5] for r in rows), timeout=30)
        assert len(blocks) >= 5, blocks

        api = {b["block_hash"]: b for b in get(server, "/api/blocks")["blocks"]}
        balances: dict[str, int] = {}
        carried_and_paid = set()
        total_reward = paid_out = 0
        for block_hash, status, reward, start, end, applied in blocks:
            rows = payouts_of(db, block_hash)
            outputs = [(a, paid) for a, fee, _, _, _, paid, position in rows if position is not None]
            # the node's own view of the coinbase is what the pool recorded, output by output
            assert [(value, script) for value, script in coinbase_outputs(node, block_hash) if value] == \
                [(paid, SCRIPTS[a]) for a, paid in outputs]
            # ... and what the API shows for it: the outputs, and the window as ISO 8601
            assert [(o["address"], o["amount"]) for o in api[block_hash]["payouts"]] == outputs
            # (always with microseconds: the epoch, a window's start while every share counts, included)
            assert api[block_hash]["window"]["start"] == start.isoformat(timespec="microseconds") and \
                api[block_hash]["window"]["end"] == end.isoformat(timespec="microseconds")
            # the window is the shares table's: accepted shares in (start, end]
            weights = window_weights(db, workers, start, end)
            assert {a: Decimal(w) for a, fee, w, *_ in rows if not fee and Decimal(w)} == weights
            # the split is the rule's, satoshi by satoshi, with the balances earlier accepted blocks left
            expected = pplns.split(reward, FEE, weights, balances, MIN_OUTPUT, MAX_OUTPUTS,
                                   payout_address=POOL_ADDRESS)
            assert expected.conserves()
            assert [(o.address, o.amount) for o in expected.outputs] == outputs, (block_hash, balances)
            for address, delta in expected.deltas.items():
                balances[address] = balances.get(address, 0) + delta
                if expected.paid.get(address) and expected.balances.get(address):
                    carried_and_paid.add(address)
            total_reward += reward
            paid_out += sum(amount for _, amount in outputs)
        # the database's balances are the rule's, and every satoshi is somewhere, once
        stored = dict(query(db, "SELECT address, balance FROM balances WHERE cluster = %s AND balance <> 0", cluster))
        assert stored == {a: b for a, b in balances.items() if b}
        assert {b["address"]: b["balance"] for b in get(server, "/api/balances")} == stored
        assert total_reward == paid_out       # the coinbases paid all of R (the fee output holds fee + carried)
        assert sum(balances.values()) >= 0 and any(balances.values())       # something is carried
        assert carried_and_paid, "no carried balance was ever paid out"

        # an accepted block orphaned by the node: its balance changes are reversed
        last_hash = blocks[-1][0]
        before = dict(stored)
        reversed_deltas = {a: c - p for a, fee, _, c, _, p, _ in payouts_of(db, last_hash) if not fee}
        node.rpc("invalidateblock", last_hash)
        node.mine(2)                           # another block at its height, and one on top: the chain moved on
        status = wait_until(lambda: query(db, "SELECT status FROM blocks WHERE block_hash = %s", last_hash),
                            lambda rows: rows == [("orphaned",)], timeout=30)
        assert status == [("orphaned",)]
        restored = dict(query(db, "SELECT address, balance FROM balances WHERE cluster = %s", cluster))
        for address in set(before) | set(reversed_deltas):
            assert restored.get(address, 0) == before.get(address, 0) - reversed_deltas.get(address, 0)


def test_every_process_of_the_pool_pays_the_same_window(tmp_path, start_server, db):
    """Two processes of one pool on one node: a miner on each. The window is the database's: each process's jobs
    pay the other process's miner too, and once nobody mines, both pay exactly the same split."""
    from .conftest import new_cluster_name

    cluster = new_cluster_name()
    with FakeNode(tmp_path / "node", "--bits", "1d00ffff") as node:        # difficulty 1: no share is a block
        flags = ("--bitcoind", node.url, "--bitcoind-cookie", str(node.cookie_path), "--zmq-hashblock",
                 node.zmq_endpoint, "--difficulty", "0.00001", "--min-difficulty", "1e-9", "--vardiff", "0",
                 "--pplns", "--payout-address", POOL_ADDRESS, "--pplns-window-difficulty", "0.00005",
                 "--template-refresh", "1")
        first, second = start_server(*flags, cluster=cluster), start_server(*flags, cluster=cluster)
        rig = f"rig{time.time_ns()}"
        on_first, on_second = list(MINERS)[:2]
        with first.miner(f"{on_first}.{rig}") as a, second.miner(f"{on_second}.{rig}") as b:
            assert mine(a, f"{on_first}.{rig}", duration=60, max_shares=3).accepted == 3
            assert mine(b, f"{on_second}.{rig}", duration=60, max_shares=4).accepted == 4
            credited = wait_until(lambda: query(db, "SELECT count(*) FROM pplns_shares WHERE cluster = %s",
                                                cluster), lambda rows: rows == [(7,)])
            assert credited == [(7,)]

            def latest_coinb2(client):
                client.poll()
                return client.state.job[3]

            def pays_both(coinb2: str) -> bool:
                return SCRIPTS[on_first] in coinb2 and SCRIPTS[on_second] in coinb2

            # each process's newest job pays both miners: the window holds the other process's shares too
            a_job = wait_until(lambda: latest_coinb2(a), pays_both, timeout=20)
            b_job = wait_until(lambda: latest_coinb2(b), lambda c: pays_both(c) and c == latest_coinb2(a), timeout=20)
            assert pays_both(a_job) and pays_both(b_job)
            assert b_job == latest_coinb2(a)            # the same moment, the same split, to the satoshi
