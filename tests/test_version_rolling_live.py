"""Version rolling when the node signals a soft fork inside the rolling mask (issue 17, item 8), end to end: a
template version of 0x30000000 (a deployment on bit 28, inside BIP310's 1fffe000, as a real Bitcoin Core v31
regtest past height 144 serves), miners of both conventions (BIP310's masked bits, and the Bitaxe firmware's
bits-it-changed), every share accepted and every block taken by the strict fake node with bit 28 still set."""
from __future__ import annotations

import os
import time

import pytest

from gstratum.client import StratumClient
from gstratum.client.work import mine

from .conftest import wait_until
from .nodes import FakeNode
from .test_node_mining import POOL_ADDRESS, _display_prevhash, node_flags

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(bool(os.environ.get("BITCOIND")), reason="sets the fake node's template version")]
SIGNALLING = 0x30000000


@pytest.mark.parametrize("convention", ["delta", "bip310"])
def test_miners_of_either_convention_mine_blocks_on_a_signalling_template(tmp_path, start_server, convention):
    with FakeNode(tmp_path / "node", "--template-version", f"{SIGNALLING:08x}") as node:
        server = start_server(*node_flags(node, "--payout-address", POOL_ADDRESS))
        worker = f"roll.{convention}{time.time_ns()}"
        with StratumClient(server.host, server.port, timeout=10) as client:
            assert client.configure_version_rolling() == 0x1FFFE000
            client.subscribe()
            client.authorize(worker)
            job = client.wait_for("mining.notify")["params"]
            assert int(job[5], 16) == SIGNALLING
            for _ in range(3):   # one block at a time: at regtest's target every share is a block
                tip = node.rpc("getbestblockhash")
                report = mine(client, worker, duration=30, max_shares=1, version_rolling=convention)
                assert report.accepted == 1, report
                new_tip = wait_until(lambda: node.rpc("getbestblockhash"), lambda h: h != tip)
                assert new_tip != tip
                header = node.rpc("getblockheader", new_tip)
                assert header["version"] & (1 << 28) and header["version"] != SIGNALLING   # rolled, bit 28 kept
                wait_until(lambda: (client.poll(), client.state.job)[1], lambda j: _display_prevhash(j[1]) == new_tip)
