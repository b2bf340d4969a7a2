#!/usr/bin/env python3
"""Benchmarks of mining against a node (scripts/fake_bitcoind.py on regtest, loopback only; stops by itself).

    .venv/bin/python scripts/bench_node.py newblock --miners 10000 --blocks 8            # ZMQ path
    .venv/bin/python scripts/bench_node.py newblock --miners 10000 --blocks 8 --no-zmq   # poll path (1 s)
    .venv/bin/python scripts/bench_node.py newblock --miners 5000 --blocks 8 --protocol both   # V1 and V2 miners
    .venv/bin/python scripts/bench_node.py template --txs 4000                           # build time, loop stall
    .venv/bin/python scripts/bench_node.py submit --blocks 10                            # found block -> submitblock
    .venv/bin/python scripts/bench_node.py solo --miners 10000 --addresses 1000          # solo fan-out vs pool

newblock: the node learns a block (its `fake_mine` returns; timed from just before the call, so the figure
includes that RPC) and the clean job reaches the first and the last miner of the load tool. `--protocol v2`: Stratum
V2 miners on the pool's --sv2-port, where the arrival is the SetNewPrevHash of the new block; `both`: --miners V1
miners and --miners V2 miners on the same process at the same time, the same blocks measured at both.
template: a probe miner asks `client.get_version` every 2 ms while new blocks bring 4,000-transaction templates;
its longest reply beside the median is the event loop's stall.
"""
from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

POOL_ADDRESS = "bcrt1qdavt4j2sd7dlhqsavtnfxvzppw6k7qy97tmnu9"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bech32_address(hrp: str, program: bytes) -> str:
    """A witness v0 address (BIP173's reference encoder), for solo logins."""
    charset = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"

    def polymod(values):
        chk = 1
        for v in values:
            top = chk >> 25
            chk = (chk & 0x1FFFFFF) << 5 ^ v
            for i, g in enumerate((0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)):
                chk ^= g if (top >> i) & 1 else 0
        return chk

    data, acc, bits = [0], 0, 0
    for byte in program:
        acc, bits = acc << 8 | byte, bits + 8
        while bits >= 5:
            bits -= 5
            data.append(acc >> bits & 31)
    if bits:
        data.append(acc << (5 - bits) & 31)
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    check = polymod(expanded + data + [0] * 6) ^ 1
    return hrp + "1" + "".join(charset[d] for d in data + [check >> 5 * (5 - i) & 31 for i in range(6)])


class Pool:
    """The fake node, the embedded PostgreSQL and one gstratum process against them."""

    def __init__(self, work: Path, node_args=(), server_args=(), zmq: bool = True, seed=None,
                 sv2: bool = False) -> None:
        from gstratum.storage.embedded_pg import EmbeddedPostgres
        from nodes import FakeNode

        self.embedded = EmbeddedPostgres(ROOT / ".gstratum" / "bench-pgdata").start()
        self.cluster = f"b{uuid.uuid4().hex[:8]}"
        if seed is not None:
            seed(self.embedded.url, self.cluster)
        self.node = FakeNode(work / "node", *node_args)
        self.port = free_port()
        self.http_port = free_port()
        self.log_path = work / "server.log"
        log = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "gstratum", "run", "--host", "127.0.0.1", "--port", str(self.port),
               "--http-port", str(self.http_port), "--database-url", self.embedded.url, "--cluster", self.cluster,
               "--journal-dir", str(work / "journal"), "--bitcoind", self.node.url, "--bitcoind-cookie",
               str(self.node.cookie_path), "--payout-address", POOL_ADDRESS, "--vardiff", "0",
               "--difficulty", "0.00001", "--min-difficulty", "1e-9", *server_args]
        if zmq:
            cmd += ["--zmq-hashblock", self.node.zmq_endpoint]
        self.sv2_port = free_port() if sv2 else None
        if sv2:
            cmd += ["--sv2-port", str(self.sv2_port), "--sv2-authority-key", str(work / "authority.key")]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        ready = "http listening" if sv2 else "stratum listening"     # the HTTP port opens after every mining port
        while ready not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()          # never leave the node or the database behind
                raise SystemExit(f"server did not start:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def load(self, miners: int, seconds: float, out: Path, *extra: str, protocol: str = "v1",
             ramp: float = 1000) -> subprocess.Popen:
        port = self.sv2_port if protocol == "v2" else self.port
        return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "loadtest.py"), "--port", str(port),
                                 "--miners", str(miners), "--procs", "2", "--ramp", str(ramp), "--duration",
                                 str(seconds), "--src-ips", "8", "--json", str(out), "--protocol", protocol, *extra],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_subscribed(self, count: int, timeout: float) -> int:
        """Wait until `count` miners are subscribed (V1) or have a channel open (V2), by the server's own gauge, so
        no block is mined while the load tool is still ramping; returns how many were (the caller reports it)."""
        import urllib.request

        deadline = time.monotonic() + timeout
        subscribed = 0
        while subscribed < count and time.monotonic() < deadline:
            time.sleep(0.5)
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10).read().decode()
            found = re.search(r"^gstratum_miners_subscribed (\S+)$", text, re.M)
            subscribed = int(float(found.group(1))) if found else 0
        return subscribed

    def loop_lag(self) -> dict[float, int]:
        """The server's event-loop lag histogram (gstratum_event_loop_lag_seconds): bound -> cumulative count."""
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10).read().decode()
        return {float(le): float(n) for le, n in
                re.findall(r'gstratum_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)', text)}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)
        self.node.stop()
        self.embedded.release()


def listen_hashblock(endpoint: str) -> dict[str, float]:
    """A ZMQ subscriber of our own beside the pool's: block hash -> when the node's hashblock reached us. That is
    the moment the node announced the block, so the figures do not include the fake node's own mining work."""
    import zmq

    arrivals: dict[str, float] = {}
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"hashblock")
    sock.connect(endpoint)

    def run():
        while True:
            topic, body, _ = sock.recv_multipart()
            arrivals[body.hex()] = time.time()

    threading.Thread(target=run, daemon=True).start()
    return arrivals


def clean_jobs(log: str) -> dict[str, str]:
    """block hash -> the clean job made for it, from the server's log."""
    return dict(re.findall(r"new block (\w+) at height \d+ \(\w[\w ]*\): clean job (\w+)", log))


def median(values):
    return statistics.median(values) if values else float("nan")


def seed_pplns(shares: int, payees: int, addresses_file: Path, skewed: bool):
    """A PPLNS pool's history before the server starts: `shares` accepted shares of difficulty 1 over `payees`
    addresses (every one in the window) and balances. Uniform (the worst case: every miner has the same weight
    and a balance, so every one could be among the payees) or skewed as pools are (shares fall to miner
    floor(payees x u^3) for u spread over [0, 1): a few big miners, a long tail of small ones, and small balances
    carried for the tail)."""
    import hashlib

    import psycopg2

    addresses = [bech32_address("bcrt", hashlib.sha256(f"pplns{i}".encode()).digest()[:20]) for i in range(payees)]
    addresses_file.write_text("\n".join(addresses))

    def seed(url: str, cluster: str) -> None:
        from gstratum.storage.db import Database

        database = Database(url)
        database.apply_schema()
        database.close()
        started = time.monotonic()
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            pick = ("least(floor(%s * power(((g::bigint * 7919) %% 1000003)::float8 / 1000003, 3))::int, %s - 1)"
                    if skewed else "g %% %s + 0 * %s")
            cur.execute("INSERT INTO pplns_shares (cluster, submitted_at, share_id, address, worker, difficulty) "
                        f"SELECT %s, now() - (%s - g) * interval '1 microsecond', gen_random_uuid(), "
                        f"(%s::text[])[1 + {pick}], 'seed', 1 FROM generate_series(1, %s) AS g",
                        (cluster, shares, addresses, payees, payees, shares))
            cur.execute("INSERT INTO balances (cluster, address, balance, updated_at) SELECT %s, a, "
                        "1000 + (i * 37) %% 9000, now() FROM unnest(%s::text[]) WITH ORDINALITY AS u(a, i) "
                        "WHERE NOT %s OR i > 100", (cluster, addresses, skewed))
        print(f"seeded {shares} shares over {payees} addresses in {time.monotonic() - started:.1f} s")

    return seed


def bench_newblock(args, work: Path) -> None:
    server_args = ["--block-poll", "1"]
    load_extra: list[str] = []
    seed = None
    if args.pplns_shares:
        users = work / "payees.txt"
        seed = seed_pplns(args.pplns_shares, args.pplns_payees, users, args.pplns_skewed)
        server_args += ["--pplns", "--pplns-window-difficulty", str(args.pplns_shares)]
        load_extra += ["--users", str(users)]
    protocols = ["v1", "v2"] if args.protocol == "both" else [args.protocol]
    ramps = {"v1": 1000, "v2": 250}      # a V2 handshake costs the load tool ~2x a V1 one (Noise: two ECDHs)
    ramp_seconds = max(args.miners / ramps[p] for p in protocols)
    pool = Pool(work, server_args=server_args, zmq=not args.no_zmq, seed=seed, sv2="v2" in protocols)
    try:
        seconds = ramp_seconds * 1.5 + 10 + args.blocks * 3     # room for a ramp slower than asked
        loads = {p: pool.load(args.miners, seconds, work / f"load-{p}.json", "--share-rate", "0", *load_extra,
                              *(["--channel", args.channel] if p == "v2" else []), protocol=p, ramp=ramps[p])
                 for p in protocols}
        announced = listen_hashblock(pool.node.zmq_endpoint)
        subscribed = pool.wait_subscribed(args.miners * len(protocols), ramp_seconds + 60)   # the whole ramp
        if subscribed < args.miners * len(protocols):
            print(f"only {subscribed} of {args.miners * len(protocols)} miners subscribed; measuring those")
        time.sleep(2)                      # then quiet: the last handshakes' rows written
        mined = []
        for _ in range(args.blocks):
            (block_hash,) = pool.node.mine(1)
            time.sleep(2.5)
            mined.append((block_hash, announced[block_hash]))   # when the node published it (our own SUB socket)
        for load in loads.values():
            load.wait(seconds + 120)
        made = clean_jobs(pool.log())
        fanouts = [float(x) for x in re.findall(r"clean=True miners=\d+(?: \(v2 \d+\))? fanout=([\d.]+)ms",
                                                pool.log())][1:]
        for protocol in protocols:
            jobs = {j["job_id"]: j for j in json.loads((work / f"load-{protocol}.json").read_text())["jobs"]}
            first, last, reached = [], [], []
            for block_hash, before in mined:
                # V1: the clean job the server logged for the block; V2: the load tool keys SetNewPrevHash by block
                job = jobs.get(made.get(block_hash)) if protocol == "v1" else jobs.get(f"block {block_hash[:16]}")
                if job is None:
                    continue
                first.append((job["first_at"] - before) * 1000)
                last.append((job["last_at"] - before) * 1000)
                reached.append(job["reached"])
            print(f"{protocol}{' ' + args.channel + ' channels' if protocol == 'v2' else ''}: "
                  f"path={'poll (1 s)' if args.no_zmq else 'zmq'} miners={args.miners} "
                  f"blocks={len(first)} reached={min(reached) if reached else 0}"
                  + (f" pplns: {args.pplns_shares} shares over {args.pplns_payees} payees"
                     f"{' (skewed)' if args.pplns_skewed else ' (uniform)'}" if args.pplns_shares else ""))
            arrival = "clean job" if protocol == "v1" else "SetNewPrevHash"
            if first:
                print(f"  node announces block -> {arrival} at the first miner: median {median(first):.1f} ms, "
                      f"max {max(first):.1f} ms")
                print(f"  node announces block -> {arrival} at the last miner:  median {median(last):.1f} ms, "
                      f"max {max(last):.1f} ms")
        splits = [float(x) for x in re.findall(r"PPLNS split ([\d.]+) ms", pool.log())][1:]
        if splits:
            print(f"  the PPLNS split on the new-block path: median {median(splits):.2f} ms, max {max(splits):.2f} ms")
        print(f"  server-side fan-out of those clean jobs (all miners): median {median(fanouts):.1f} ms")
    finally:
        pool.close()


def bench_template(args, work: Path) -> None:
    from gstratum.client import StratumClient

    pool = Pool(work, node_args=("--mempool-txs", str(args.txs)))
    try:
        client = StratumClient("127.0.0.1", pool.port)
        client.subscribe()
        rtts: list[tuple[float, float]] = []
        stop = threading.Event()

        def probe():
            while not stop.is_set():
                started = time.perf_counter()
                client.call("client.get_version", [])
                rtts.append((time.time(), (time.perf_counter() - started) * 1000))
                time.sleep(0.002)

        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        lag_before = pool.loop_lag()
        windows = []
        for _ in range(args.blocks):
            time.sleep(1.0)
            pool.node.rpc("fake_addtxs", args.txs)       # the next template carries a full mempool again
            before = time.time()
            pool.node.mine(1)
            time.sleep(1.5)
            windows.append(before)
        lag_after = pool.loop_lag()
        stop.set()
        thread.join(5)
        lag = {bound: lag_after[bound] - lag_before.get(bound, 0) for bound in lag_after}
        ticks = lag[float("inf")]
        longest = min((b for b in sorted(lag) if lag[b] == ticks), default=float("inf"))
        builds = [float(b) for n, b in re.findall(r"(\d+) transactions, built in ([\d.]+) ms", pool.log())
                  if int(n) >= args.txs // 2]
        during = [r for t, r in rtts if any(w <= t <= w + 1.0 for w in windows)]
        quiet = [r for t, r in rtts if not any(w - 0.2 <= t <= w + 1.2 for w in windows)]
        print(f"template of {args.txs} transactions: job built in median {median(builds):.1f} ms "
              f"(max {max(builds):.1f}) from the start of getblocktemplate, {len(builds)} templates")
        print(f"  server's event loop over those {args.blocks * 2.5:.0f} s: {ticks:.0f} ticks of 5 ms, every one "
              f"within {longest * 1000:.0f} ms of its time; {ticks - lag.get(0.02, 0):.0f} later than 20 ms")
        print(f"  probe replies around new templates: max {max(during):.1f} ms, median {median(during):.2f} ms; "
              f"quiet: max {max(quiet):.1f} ms, median {median(quiet):.2f} ms ({len(rtts)} probes)")
    finally:
        pool.close()


def bench_submit(args, work: Path) -> None:
    pool = Pool(work, node_args=("--mempool-txs", str(args.txs)))
    try:
        subprocess.run([sys.executable, "-m", "gstratum", "client", "--url", f"127.0.0.1:{pool.port}", "--user",
                        "bench.submit", "--mine", "--duration", "20"], cwd=ROOT, stdout=subprocess.DEVNULL,
                       timeout=60)
        sent = [float(x) for x in re.findall(r"submitted \(.*?\), \d+ bytes, sent ([\d.]+) ms after the share",
                                             pool.log())]
        accepted = len(pool.node.rpc("fake_submissions"))
        print(f"found block -> submitblock sent ({args.txs} template transactions): median {median(sent):.1f} ms, "
              f"max {max(sent):.1f} ms over {len(sent)} accepted blocks ({accepted} submissions at the node)")
    finally:
        pool.close()


def bench_solo(args, work: Path) -> None:
    import hashlib

    addresses = [bech32_address("bcrt", hashlib.sha256(f"solo{i}".encode()).digest()[:20])
                 for i in range(args.addresses)]
    users = work / "users.txt"
    users.write_text("\n".join(addresses))
    for mode, extra, load_extra in (("pool", (), ()), ("solo", ("--solo",), ("--users", str(users)))):
        pool = Pool(work / mode, server_args=extra)
        try:
            out = work / f"{mode}.json"
            seconds = args.miners / 1000 + 8 + args.blocks * 3
            load = pool.load(args.miners, seconds, out, "--share-rate", "0", *load_extra)
            time.sleep(args.miners / 1000 + 5)
            for _ in range(args.blocks):
                pool.node.mine(1)
                time.sleep(2.5)
            load.wait(seconds + 120)
            fanouts = [(int(m), float(f), float(c)) for m, f, c in
                       re.findall(r"clean=True miners=(\d+) fanout=([\d.]+)ms cpu=([\d.]+)ms", pool.log())]
            full = [(f, c) for m, f, c in fanouts if m == args.miners]
            print(f"{mode}: {args.miners} miners{f' over {args.addresses} addresses' if mode == 'solo' else ''}: "
                  f"fan-out median {median([f for f, _ in full]):.1f} ms wall, "
                  f"{median([c for _, c in full]):.1f} ms CPU over {len(full)} blocks")
        finally:
            pool.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["newblock", "template", "submit", "solo"])
    parser.add_argument("--miners", type=int, default=10000)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--txs", type=int, default=4000)
    parser.add_argument("--addresses", type=int, default=1000)
    parser.add_argument("--no-zmq", action="store_true")
    parser.add_argument("--protocol", choices=["v1", "v2", "both"], default="v1",
                        help="newblock: V1 miners, V2 miners (on --sv2-port), or --miners of each at the same time")
    parser.add_argument("--channel", choices=["standard", "extended"], default="standard",
                        help="newblock: the V2 miners' channel (a standard channel's merkle root is its own)")
    parser.add_argument("--pplns-shares", type=int, default=0,
                        help="newblock: a PPLNS pool whose window holds this many shares (seeded in the database)")
    parser.add_argument("--pplns-payees", type=int, default=5000, help="... over this many addresses")
    parser.add_argument("--pplns-skewed", action="store_true",
                        help="a few big miners and a long tail (as pools are), instead of 5,000 equal ones")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix=f"bench-node-{args.what}-"))
    {"newblock": bench_newblock, "template": bench_template, "submit": bench_submit, "solo": bench_solo}[args.what](
        args, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
