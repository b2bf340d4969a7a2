"""The Stratum V2 client against the real server (`run --sv2-port`) and the strict fake node: standard and extended
channels mine blocks the node accepts in pool, solo and PPLNS modes; a V1 and a V2 miner side by side on one pool;
every share error code; the restart hand-over's Reconnect; the load tool's V2 mode.

These need the V2 server front end (issue 19), written beside this client: until it is on the branch, every test
here is skipped with that reason (the layer-free tests of the client are in test_sv2_client.py). The contract they
hold the server to is the one the client was written against: see gstratum/client/sv2.py."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pytest

from gstratum.client import StratumClient
from gstratum.client.sv2 import Channel, Sv2Client, Sv2Rejected
from gstratum.client.sv2work import mine as mine_v2
from gstratum.client.work import mine as mine_v1
from gstratum.mining import pplns
from gstratum.protocol.sv2.codec import SetupConnectionFlags

from .conftest import ROOT, free_port, process_alive, query, wait_rows, wait_until
from .nodes import FakeNode, start_node
from .test_node_mining import (MINER_ADDRESS, MINER_SCRIPT, POOL_ADDRESS, POOL_SCRIPT, coinbase_outputs,
                               node_flags, pool_blocks)


def _server_has_v2() -> bool:
    """The V2 front end is there when the server's flags name --sv2-port (read from the source: no process)."""
    return any("--sv2-port" in path.read_text() for path in (ROOT / "gstratum").rglob("*.py")
               if "client" not in path.parts)


pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not _server_has_v2(), reason="the V2 server (run --sv2-port) is not on this branch "
                                                              "yet: these tests wait for it")]
fake_only = pytest.mark.skipif(bool(os.environ.get("BITCOIND")), reason="uses the fake node's test controls")


@dataclass
class V2Pool:
    """A server with its V2 port, and the authority key miners pin (as `gstratum sv2-key` prints it)."""

    server: object
    port: int
    authority_key: str

    def connect(self, **options) -> Sv2Client:
        return Sv2Client.connect("127.0.0.1", self.port, authority_public_key=self.authority_key, **options)

    def miner(self, user: str, channel: str = "standard", **options) -> tuple[Sv2Client, Channel]:
        """Connected, set up as the firmware does for that channel kind, channel open, first job in."""
        client = self.connect(**options)
        try:
            client.setup_connection(SetupConnectionFlags.REQUIRES_STANDARD_JOBS if channel == "standard" else 0)
            opened = (client.open_standard_channel(user) if channel == "standard"
                      else client.open_extended_channel(user, min_extranonce_size=2))
            client.wait_for_job(opened)
        except BaseException:
            client.close()
            raise
        return client, opened


@pytest.fixture
def start_v2(start_server, tmp_path):
    def start(*flags: str, cluster: str | None = None) -> V2Pool:
        port = free_port()
        key_file = tmp_path / f"authority-{port}.key"
        server = start_server(*flags, "--sv2-port", str(port), "--sv2-authority-key", str(key_file), cluster=cluster)
        printed = subprocess.run([sys.executable, "-m", "gstratum", "sv2-key", "--sv2-authority-key", str(key_file)],
                                 cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
        return V2Pool(server, port, printed.stdout.strip())
    return start


@pytest.fixture
def node(tmp_path):
    with start_node(tmp_path / "node") as started:
        yield started


def display(prev_hash: bytes) -> str:
    """A header-order prev_hash as the node displays block hashes."""
    return prev_hash[::-1].hex()


def mine_blocks(node, client: Sv2Client, channel: Channel, blocks: int) -> None:
    """One block at a time (at regtest's target every share is a block): mine one share, see the node's tip move,
    then wait for the SetNewPrevHash on the new tip before mining the next."""
    for _ in range(blocks):
        tip = node.rpc("getbestblockhash")
        report = mine_v2(client, channel, duration=30, max_shares=1)
        assert (report.accepted, report.rejected, report.blocks) == (1, {}, 1), report
        new_tip = wait_until(lambda: node.rpc("getbestblockhash"), lambda h: h != tip)
        assert new_tip != tip
        client.wait_until(lambda: display(channel.prevhash.prev_hash) == new_tip, timeout=10,
                          what="the SetNewPrevHash of the new tip")
        assert channel.active.prevhash is channel.prevhash and channel.active.future


# --- blocks --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["standard", "extended"])
def test_pool_mode_channels_mine_blocks_the_node_accepts(node, start_v2, db, kind):
    pool = start_v2(*node_flags(node, "--payout-address", POOL_ADDRESS))
    start_height = node.rpc("getblockcount")
    user = f"pool.v2{kind}{time.time_ns()}"
    client, channel = pool.miner(user, kind, firmware_limits=True)
    with client:
        assert client.certificate is not None              # pinned: the key `sv2-key` printed verified it
        if kind == "extended":
            assert channel.extranonce_size == 4 and len(channel.extranonce_prefix) == 8
        else:
            assert len(channel.extranonce_prefix) == 12
        mine_blocks(node, client, channel, 3)
    assert node.rpc("getblockcount") == start_height + 3
    rows = wait_until(lambda: [r for r in pool_blocks(db, user) if r[1] == "submitted"], lambda r: len(r) == 3,
                      timeout=20)
    assert len(rows) == 3, pool_blocks(db, user)
    for block_hash, _, results, reward, _ in rows:
        assert node.rpc("getblockheader", block_hash)["confirmations"] >= 1
        paid = [value for value, script in coinbase_outputs(node, block_hash) if script == POOL_SCRIPT]
        assert paid == [reward] and reward > 0 and "accepted" in results


@pytest.mark.parametrize("kind", ["standard", "extended"])
def test_solo_mode_pays_the_channels_address_and_refuses_a_bad_one(node, start_v2, db, kind):
    pool = start_v2(*node_flags(node, "--solo", "--solo-fee", "2", "--payout-address", POOL_ADDRESS))
    with pool.connect() as refused:
        refused.setup_connection()
        with pytest.raises(Sv2Rejected) as error:
            refused.open_standard_channel("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4.rig")   # a mainnet address
        assert error.value.error_code == "unknown-user"
        assert not refused.state.channels
    user = f"{MINER_ADDRESS}.v2{kind}{time.time_ns()}"
    client, channel = pool.miner(user, kind)
    with client:
        mine_blocks(node, client, channel, 1)
    rows = wait_until(lambda: [r for r in pool_blocks(db, user) if r[1] == "submitted"], timeout=20)
    assert len(rows) == 1, pool_blocks(db, user)
    outputs = {script: value for value, script in coinbase_outputs(node, rows[0][0])}
    total = outputs[MINER_SCRIPT] + outputs[POOL_SCRIPT]
    assert outputs[POOL_SCRIPT] == total * 2 // 100 and rows[0][4] == MINER_ADDRESS


@fake_only
def test_pplns_pays_v2_miners_from_the_shares_table(tmp_path, start_v2, db):
    """Two V2 miners (a standard and an extended channel) and a V1 miner share a PPLNS pool; every accepted block's
    coinbase is the rule recomputed from the shares table, as in test_pplns_live."""
    from .conftest import new_cluster_name
    from .test_pplns_live import NETWORK_BITS, SCRIPTS, accepted_blocks, payouts_of, window_weights

    cluster = new_cluster_name()
    fee, min_output, max_outputs = "1.5", 10_000, 3
    addresses = list(SCRIPTS)[:3]
    rig = f"v2rig{time.time_ns()}"
    workers = [f"{address}.{rig}" for address in addresses]
    with FakeNode(tmp_path / "node", "--bits", NETWORK_BITS) as node:
        pool = start_v2("--bitcoind", node.url, "--bitcoind-cookie", str(node.cookie_path), "--zmq-hashblock",
                        node.zmq_endpoint, "--difficulty", "0.00001", "--min-difficulty", "1e-9", "--vardiff", "0",
                        "--pplns", "--payout-address", POOL_ADDRESS, "--pplns-window-difficulty", "0.00012",
                        "--pool-fee", fee, "--pplns-min-output", str(min_output), "--pplns-max-outputs",
                        str(max_outputs), cluster=cluster)
        standard = pool.miner(workers[0], "standard")
        extended = pool.miner(workers[1], "extended")
        v1 = StratumClient(pool.server.host, pool.server.port, timeout=15)
        try:
            v1.subscribe()
            v1.authorize(workers[2])
            deadline = time.monotonic() + 240
            while len(accepted_blocks(db, cluster)) < 3 and time.monotonic() < deadline:
                for client, channel in (standard, extended):
                    mine_v2(client, channel, duration=60, max_shares=3)
                mine_v1(v1, workers[2], duration=60, max_shares=1)
        finally:
            for client, _ in (standard, extended):
                client.close()
            v1.close()
        blocks = wait_until(lambda: accepted_blocks(db, cluster), lambda rows: len(rows) >= 3 and all(
            r[5] for r in rows), timeout=30)
        assert len(blocks) >= 3, blocks
        balances: dict[str, int] = {}
        paid_for: set[str] = set()
        for block_hash, _, reward, start, end, _ in blocks:
            rows = payouts_of(db, block_hash)
            outputs = [(a, paid) for a, _, _, _, _, paid, position in rows if position is not None]
            assert [(v, s) for v, s in coinbase_outputs(node, block_hash) if v] == \
                [(paid, SCRIPTS[a]) for a, paid in outputs]
            weights = window_weights(db, workers, start, end)
            assert set(weights) <= set(addresses)
            paid_for |= set(weights)
            expected = pplns.split(reward, fee, weights, balances, min_output, max_outputs,
                                   payout_address=POOL_ADDRESS)
            assert [(o.address, o.amount) for o in expected.outputs] == outputs
            for address, delta in expected.deltas.items():
                balances[address] = balances.get(address, 0) + delta
        assert set(addresses[:2]) <= paid_for          # both V2 miners' shares were in some block's window
        credited = query(db, "SELECT worker, count(*) FROM shares WHERE worker = ANY(%s) AND accepted GROUP BY 1",
                         workers)
        assert {worker for worker, _ in credited} == set(workers)


# --- V1 and V2 on one pool -----------------------------------------------------------------------------------------

@fake_only
def test_a_v1_and_a_v2_miner_side_by_side_get_their_shares_accepted(tmp_path, start_v2, db):
    with FakeNode(tmp_path / "node", "--bits", "1d00ffff") as node:       # difficulty 1: no share is a block
        pool = start_v2("--bitcoind", node.url, "--bitcoind-cookie", str(node.cookie_path), "--zmq-hashblock",
                        node.zmq_endpoint, "--difficulty", "0.00001", "--min-difficulty", "1e-9", "--vardiff", "0",
                        "--payout-address", POOL_ADDRESS, "--template-refresh", "1")
        rig = time.time_ns()
        v1_worker, v2_worker = f"side.v1-{rig}", f"side.v2-{rig}"
        reports = {}

        def v1_miner() -> None:
            with pool.server.miner(v1_worker) as client:
                reports["v1"] = mine_v1(client, v1_worker, duration=4)

        thread = threading.Thread(target=v1_miner, daemon=True)
        thread.start()
        client, channel = pool.miner(v2_worker, "extended")
        with client:
            reports["v2"] = mine_v2(client, channel, duration=4)
        thread.join(30)
    assert reports["v1"].accepted > 0 and reports["v1"].rejected_total == 0, reports["v1"]
    assert reports["v2"].accepted > 0 and reports["v2"].rejected == {} and reports["v2"].unanswered == 0, reports["v2"]
    for worker, report in ((v1_worker, reports["v1"]), (v2_worker, reports["v2"])):
        rows = wait_rows(db, "SELECT count(*) FROM shares WHERE worker = %s AND accepted", worker,
                         expect=[(report.accepted,)])
        assert rows == [(report.accepted,)], worker


# --- errors --------------------------------------------------------------------------------------------------------

@fake_only
def test_every_share_error_code(tmp_path, start_v2):
    """Each refusal the server promises, provoked by a miner that knows what it is doing, on a standard channel;
    a share found twice (the firmware's first-job rebuild) is a duplicate; a share of the last block's job sent
    after the new block's SetNewPrevHash is stale."""
    from gstratum.client.sv2work import ChannelWork

    with FakeNode(tmp_path / "node", "--bits", "1d00ffff") as node:       # difficulty 1: no share is a block
        pool = start_v2("--bitcoind", node.url, "--bitcoind-cookie", str(node.cookie_path), "--zmq-hashblock",
                        node.zmq_endpoint, "--difficulty", "0.00001", "--min-difficulty", "1e-9", "--vardiff", "0",
                        "--payout-address", POOL_ADDRESS)
        client, channel = pool.miner("errors.rig", "standard")
        with client:
            work = ChannelWork(channel)

            def find():
                found = None
                while found is None:
                    found, _ = work.search(100_000)
                return found

            def answer(sequence: int):
                outcome = client.wait_until(lambda: next((o for o in client.outcomes if o.sequence_number == sequence
                                                          and o.channel_id in (channel.channel_id, 99)), None),
                                            timeout=5, what=f"the answer to share {sequence}")
                client.outcomes.remove(outcome)
                return outcome.error_code

            share, job = find(), channel.active
            submit = client.submit_standard
            answers = {
                "valid": answer(submit(channel.channel_id, job.job_id, share.nonce, share.ntime, share.version)),
                "again (the firmware's rebuild)": answer(submit(channel.channel_id, job.job_id, share.nonce,
                                                                share.ntime, share.version)),
                "unknown job": answer(submit(channel.channel_id, job.job_id + 1000, share.nonce, share.ntime,
                                             share.version)),
                "unknown channel": answer(submit(99, job.job_id, share.nonce, share.ntime, share.version)),
            }
            low = next(n for n in range(share.nonce + 1, 1 << 32) if _hash(job, n, share) > channel.target)
            answers["above the target"] = answer(submit(channel.channel_id, job.job_id, low, share.ntime,
                                                        share.version))
            answers["version outside 1fffe000"] = answer(submit(channel.channel_id, job.job_id, share.nonce,
                                                                share.ntime, share.version ^ 0x40000000))
            late = find()
            activations = channel.activations
            node.mine(1)
            client.wait_until(lambda: channel.activations > activations, timeout=10, what="the new block")
            answers["after a new block"] = answer(submit(channel.channel_id, late.job_id, late.nonce, late.ntime,
                                                         late.version))
    assert answers == {"valid": None, "again (the firmware's rebuild)": "duplicate-share",
                       "unknown job": "invalid-job-id", "unknown channel": "invalid-channel-id",
                       "above the target": "difficulty-too-low", "version outside 1fffe000": "invalid-share",
                       "after a new block": "stale-share"}


def _hash(job, nonce: int, share) -> int:
    from gstratum.client.miner import search_nonce
    from gstratum.client.sv2work import header_prefix

    found = search_nonce(header_prefix(job, job.merkle_root, share.version, share.ntime), (1 << 256) - 1, nonce, 1)
    return found[1]


def test_setup_refusals(start_v2):
    pool = start_v2("--difficulty", "0.0001")
    with pool.connect() as client:
        with pytest.raises(Sv2Rejected) as refused:
            client.setup_connection(SetupConnectionFlags.REQUIRES_WORK_SELECTION)
        assert refused.value.error_code == "unsupported-feature-flags"
    with pool.connect() as client:
        success = client.setup_connection(SetupConnectionFlags.REQUIRES_VERSION_ROLLING)
        assert (success.used_version, success.flags) == (2, 0)
        with pytest.raises(Sv2Rejected, match="min-extranonce-size-too-large"):
            client.open_extended_channel("x.rig", min_extranonce_size=5)


# --- restart hand-over -----------------------------------------------------------------------------------------------

def test_sighup_sends_reconnect_and_the_miner_mines_on_the_successor(start_v2):
    pool = start_v2("--drain-period", "1", "--difficulty", "0.00001", "--vardiff", "0", "--notify-interval", "30")
    client, channel = pool.miner("handover.rig", "extended")
    successor = None
    try:
        with client:
            assert mine_v2(client, channel, duration=30, max_shares=1).accepted == 1
            pool.server.proc.send_signal(signal.SIGHUP)
            client.wait_until(lambda: client.state.reconnect, timeout=20, what="Reconnect")
            host, port = client.reconnect_target()
        assert (host, port) == ("127.0.0.1", pool.port)
        successor = int(wait_until(lambda: re.search(r"takeover: started successor pid (\d+)", pool.server.log()),
                                   timeout=20).group(1))
        moved = V2Pool(pool.server, port, pool.authority_key)
        again, reopened = moved.miner("handover.rig", "extended")
        with again:
            report = mine_v2(again, reopened, duration=30, max_shares=2)
        assert report.accepted == 2 and report.rejected == {}
        assert pool.server.proc.wait(30) == 0
    finally:
        if successor:
            os.kill(successor, signal.SIGTERM)
            wait_until(lambda: process_alive(successor), lambda alive: not alive, timeout=30)


# --- the load tool -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["standard", "extended"])
def test_loadtest_v2_smoke(start_v2, tmp_path, kind):
    pool = start_v2("--difficulty", "0.000001", "--notify-interval", "1", "--clean-every", "1000")
    out = tmp_path / "report.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "loadtest.py"), "--protocol", "v2", "--channel",
                             kind, "--port", str(pool.port), "--miners", "200", "--procs", "2", "--ramp", "200",
                             "--duration", "4", "--share-rate", "0.5", "--configure", "--src-ips", "2",
                             "--authority-pubkey", pool.authority_key, "--json", str(out), "--server-pid",
                             str(pool.server.proc.pid)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["subscribed"] == 200 and report["handshakes"] == 200, report["errors_sample"]
    assert report["errors"] == 0 and report["drops"] == 0 and report["connect_failures"] == 0
    assert report["shares_accepted"] > 0 and report["shares_rejected"] == 0, report["rejected_by_code"]
    assert report["unanswered_shares"] == 0
    assert report["jobs_reaching_all"] >= 1 and all(j["job_id"].startswith("job ") for j in report["jobs"])
    assert report["noise_ms"]["p99"] is not None and report["setup_ms"]["p50"] <= report["handshake_ms"]["p50"]
    assert report["client_cpu_us_per_handshake"] > 0 and report["server_cpu_us_per_op"] > 0
    assert "| miners subscribed | 200 / 200 |" in result.stdout


# --- the command line ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["standard", "extended"])
def test_the_client_command_mines_on_the_server(start_v2, kind):
    pool = start_v2("--difficulty", "0.00001", "--notify-interval", "1", "--clean-every", "1000")
    result = subprocess.run([sys.executable, "-m", "gstratum", "client", "--protocol", "v2", "--url",
                             f"stratum2+tcp://127.0.0.1:{pool.port}/{pool.authority_key}", "--user", "cli.rig",
                             "--channel", kind, "--mine", "--duration", "3", "--version-rolling", "--firmware-limits"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "authority key pinned" in result.stdout and f"channel: {kind} id=1" in result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("accepted=") and " rejected=0 " in summary and "unanswered=0" in summary, summary
