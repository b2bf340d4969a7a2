#!/usr/bin/env python3
"""gstratum load tool: thousands of fake miners, real shares, latency and fan-out figures.

Each of `--procs` child processes runs its share of `--miners` as greenlets in a gevent Group (one greenlet per
miner, each linked to an exception logger). A miner connects (spread over `--src-ips` loopback source addresses),
subscribes, optionally sends mining.configure, authorizes, then stays connected: it records every mining.notify
(job id, arrival time) and, at `--share-rate` shares/s, submits real shares found with the CPU miner (run the
server at a tiny difficulty, e.g. --difficulty 0.000001, so a share takes a few hashes).
The parent prints a progress line every second and ends with a report (Markdown, `--json`, `--plot`).
It only talks to the address it is given, refuses non-loopback targets unless --allow-remote, and stops by itself.

`--protocol v2` (`--port` the pool's --sv2-port): Stratum V2 miners as the Bitaxe firmware behaves (gstratum's V2
client library): the Noise handshake (each miner's key made before the ramp unless --no-prepare-keys; pinned with
--authority-pubkey), SetupConnection, one `--channel standard|extended`, real shares (versions rolled inside
1fffe000 with --configure). The report splits the handshake (TCP connect, Noise, -> SetupConnection.Success,
-> channel open), counts a job's arrival at SetNewPrevHash (keyed by the new block's hash) or at a job active at once
(keyed by its id), ends a share's round trip at the answer covering it (SubmitShares.Success may be batched), and
gives rejections by code. Both protocols report the load tool's own CPU per handshake (its processes' CPU up to the
moment all their miners were in): on a shared box the tool's cost must be known beside the server's.

    .venv/bin/python scripts/loadtest.py --port 3333 --miners 10000 --ramp 1000 --duration 60 --src-ips 8
    .venv/bin/python scripts/loadtest.py --protocol v2 --port 3336 --miners 10000 --ramp 250 --duration 60 --src-ips 8
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * (len(ordered) - 1)))))]


# ------------------------------------------------------------------------------------------------------------------
# child: the miners
# ------------------------------------------------------------------------------------------------------------------
def child_main(args: argparse.Namespace) -> int:
    from gevent import monkey

    monkey.patch_all()
    import resource

    import gevent
    import gevent.pool
    import ujson

    sys.path.insert(0, str(ROOT))
    from gstratum.mining import bitcoin
    from gstratum.client.miner import find_share
    from gstratum.mining.shares import HeaderTemplate

    def cpu_seconds() -> float:
        """This process's CPU time: the load tool's own cost, reported beside the server's."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out = sys.stdout
    templates: dict[str, HeaderTemplate] = {}
    jobs: dict[str, list] = {}          # job id -> [count, first arrival, last arrival]
    stats = {"connected": 0, "subscribed": 0, "handshakes": 0, "accepted": 0, "rejected": 0, "drops": 0,
             "errors": 0, "connect_failures": 0, "reconnects_requested": 0, "resumed_same": 0, "resumed_changed": 0}
    handshake_ms: list[float] = []
    share_ms: list[float] = []
    error_samples: list[str] = []
    rejected_codes: dict[str, int] = {}
    v2_times: dict[str, list[float]] = {"connect_ms": [], "noise_ms": [], "setup_ms": [], "noise_cpu_us": []}
    ramp_cpu: list[float] = []          # this process's CPU when its last miner had its channel open
    deadline = time.monotonic() + args.hard_deadline

    users = Path(args.users).read_text().split() if args.users else [args.worker_prefix]

    def login(index: int) -> str:
        """USER.CHILD.INDEX; with --users, the users (e.g. solo payout addresses) taken in turn."""
        return f"{users[(index * args.procs + args.child_index) % len(users)]}.{args.child_index}.{index}"

    class Reconnect(Exception):
        """The server asked for client.reconnect: leave and come back, resuming the session."""

    def left(miner) -> None:
        """The miner leaves because the server asked it to (client.reconnect / Reconnect)."""
        stats["reconnects_requested"] += 1
        stats["connected"] -= 1
        stats["subscribed"] -= 1
        miner.alive = False

    def lost(miner, exc: Exception, error: bool = False) -> None:
        """The miner's connection failed: a drop if it was up, a connect failure if it never was."""
        if error:
            stats["errors"] += 1
        if miner.alive:
            stats["drops"] += 1
            stats["connected"] -= 1
            stats["subscribed"] -= 1
        if len(error_samples) < 5:
            error_samples.append(f"{type(exc).__name__}: {exc}")
        if not miner.alive:
            stats["connect_failures"] += 1
        miner.alive = False

    class Miner:
        __slots__ = ("index", "sock", "buffer", "extranonce1", "difficulty", "job", "pending", "next_id", "en2",
                     "alive", "session_id")

        def __init__(self, index: int) -> None:
            self.index = index
            self.sock = None
            self.buffer = b""
            self.extranonce1 = b""
            self.difficulty = 1.0
            self.job = None
            self.pending: dict[int, float] = {}
            self.next_id = 10
            self.en2 = 0
            self.alive = False
            self.session_id = None

        def readline(self) -> dict:
            while b"\n" not in self.buffer:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed by server")
                self.buffer += data
            line, self.buffer = self.buffer.split(b"\n", 1)
            return ujson.loads(line)

        def on_message(self, message: dict) -> dict | None:
            method = message.get("method")
            if method == "mining.notify":
                now = time.time()
                self.job = message["params"]
                entry = jobs.get(self.job[0])
                if entry is None:
                    jobs[self.job[0]] = [1, now, now]
                else:
                    entry[0] += 1
                    entry[2] = max(entry[2], now)
                    entry[1] = min(entry[1], now)
                return None
            if method == "mining.set_difficulty":
                self.difficulty = float(message["params"][0])
                return None
            if method == "client.reconnect":
                raise Reconnect()
            if method is not None:
                return None
            sent = self.pending.pop(message.get("id"), None)
            if sent is not None:
                share_ms.append((time.perf_counter() - sent) * 1000)
                if message.get("error") is None:
                    stats["accepted"] += 1
                else:
                    stats["rejected"] += 1
                    if len(error_samples) < 5:
                        error_samples.append(str(message.get("error")))
                return None
            return message

        def call(self, request_id: int, method: str, params: list) -> dict:
            self.sock.sendall(ujson.dumps({"id": request_id, "method": method, "params": params}).encode() + b"\n")
            while True:
                reply = self.on_message(self.readline())
                if reply is not None and reply.get("id") == request_id:
                    if reply.get("error") is not None:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply

        def run(self) -> None:
            while time.monotonic() < deadline:
                try:
                    self.session()
                except Reconnect:
                    left(self)
                    self.pending.clear()
                    continue
                except (OSError, ConnectionError, RuntimeError, ValueError) as exc:
                    lost(self, exc)
                    if not args.reconnect:
                        return
                    gevent.sleep(1.0)
                finally:
                    if self.sock is not None:
                        self.sock.close()
                        self.sock = None

        def session(self) -> None:
            started = time.perf_counter()
            source = (f"127.0.0.{1 + self.index % args.src_ips}", 0) if args.src_ips > 1 else None
            self.sock = socket.create_connection((args.host, args.port), timeout=30, source_address=source)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if args.configure:
                self.call(1, "mining.configure", [["version-rolling"], {"version-rolling.mask": "1fffe000"}])
            params = ["gstratum-loadtest/1.0"] + ([self.session_id] if self.session_id else [])
            reply = self.call(2, "mining.subscribe", params)
            extranonce1 = bytes.fromhex(reply["result"][1])
            if self.session_id is not None:
                stats["resumed_same" if extranonce1 == self.extranonce1 else "resumed_changed"] += 1
            self.extranonce1 = extranonce1
            self.session_id = reply["result"][0][1][1]
            self.call(3, "mining.authorize", [login(self.index), "x"])
            handshake_ms.append((time.perf_counter() - started) * 1000)
            self.alive = True
            stats["connected"] += 1
            stats["subscribed"] += 1
            stats["handshakes"] += 1
            self.sock.settimeout(None)
            while time.monotonic() < deadline:
                self.on_message(self.readline())

        def submit(self, count: int = 1) -> None:
            """Find and send `count` shares in one write (more than one: a proxy pipelining its devices' shares)."""
            job = self.job
            if not self.alive or job is None:
                return
            template = templates.get(job[0])
            if template is None:
                template = templates[job[0]] = HeaderTemplate.from_stratum(job[1], job[2], job[3], job[4], job[5],
                                                                           job[6])
            lines = []
            worker = login(self.index)
            sent_at = time.perf_counter()
            for _ in range(count):
                self.en2 += 1
                en2 = (self.en2 & 0xFFFFFFFF).to_bytes(4, "big")
                found = find_share(template, self.extranonce1, en2, job[7], int(job[5], 16),
                                   bitcoin.target_from_difficulty(self.difficulty), max_tries=3000)
                if found is None:
                    continue
                self.next_id += 1
                self.pending[self.next_id] = sent_at
                lines.append(ujson.dumps({"id": self.next_id, "method": "mining.submit", "params": [
                    worker, job[0], en2.hex(), job[7], found[0]]}).encode() + b"\n")
            if not lines:
                return
            try:
                self.sock.sendall(b"".join(lines))
            except OSError:
                for request_id in range(self.next_id - len(lines) + 1, self.next_id + 1):
                    self.pending.pop(request_id, None)

    class V2Miner:
        """A Stratum V2 miner as the Bitaxe firmware behaves: one channel (standard: REQUIRES_STANDARD_JOBS; extended:
        flags 0), nothing sent but shares. A job arrival is a SetNewPrevHash after the channel's first one (a new
        block, keyed by its prevhash) or a job active at once (keyed by its id); the job and prevhash sent right
        after the channel opens are not broadcasts and are not counted. A share's round trip ends when the answer
        covering it arrives (a batched SubmitShares.Success covers several)."""

        __slots__ = ("index", "client", "channel", "work", "alive", "initiator")

        def __init__(self, index: int) -> None:
            self.index = index
            self.client = None
            self.channel = None
            self.work = None
            self.alive = False
            self.initiator = None       # the Noise key, prepared before the ramp (see ramp())

        def prepare(self) -> None:
            self.initiator = NoiseInitiator(authority_key)

        def run(self) -> None:
            while time.monotonic() < deadline:
                try:
                    self.session()
                except Reconnect:
                    left(self)
                    continue
                except (OSError, ConnectionError, RuntimeError, ValueError, Sv2Rejected,
                        Sv2ProtocolViolation) as exc:
                    lost(self, exc, error=isinstance(exc, Sv2ProtocolViolation))
                    if not args.reconnect or isinstance(exc, Sv2ProtocolViolation):
                        return
                    gevent.sleep(1.0)
                finally:
                    if self.client is not None:
                        self.client.close()
                        self.client = None

        def session(self) -> None:
            source = (f"127.0.0.{1 + self.index % args.src_ips}", 0) if args.src_ips > 1 else None
            initiator, self.initiator = self.initiator or NoiseInitiator(authority_key), None
            self.client = client = Sv2Client.connect(args.host, args.port, timeout=30, source_address=source,
                                                     initiator=initiator)
            times = client.times
            client.setup_connection(0 if extended else SetupConnectionFlags.REQUIRES_STANDARD_JOBS,
                                    vendor="gstratum-loadtest")
            setup_done = time.monotonic()
            user = login(self.index)
            self.channel = channel = (client.open_extended_channel(user, args.nominal_hashrate) if extended
                                      else client.open_standard_channel(user, args.nominal_hashrate))
            self.work = ChannelWork(channel, version_rolling=args.configure)
            handshake_ms.append((time.monotonic() - times.started_at) * 1000)
            v2_times["connect_ms"].append(times.connect * 1000)
            v2_times["noise_ms"].append(times.noise * 1000)
            v2_times["setup_ms"].append((setup_done - times.started_at) * 1000)
            v2_times["noise_cpu_us"].append(times.noise_cpu * 1e6)
            self.alive = True
            stats["connected"] += 1
            stats["subscribed"] += 1
            stats["handshakes"] += 1
            client.timeout = None           # from here on a read waits as long as it takes
            job_messages = (codec.NewMiningJob, codec.NewExtendedMiningJob)
            while time.monotonic() < deadline:
                message = client.read_message()
                if isinstance(message, codec.SetNewPrevHash):
                    if channel.activations > 1:
                        arrived(f"block {message.prev_hash[::-1].hex()[:16]}")
                elif isinstance(message, job_messages):
                    if message.min_ntime is not None:
                        arrived(f"job {message.job_id}")
                elif client.state.reconnect is not None:
                    raise Reconnect()
                if client.outcomes:
                    for outcome in client.take_outcomes():
                        share_ms.append(outcome.round_trip * 1000)
                        if outcome.accepted:
                            stats["accepted"] += 1
                        else:
                            stats["rejected"] += 1
                            rejected_codes[outcome.error_code] = rejected_codes.get(outcome.error_code, 0) + 1

        @property
        def pending(self) -> dict:
            return self.channel.pending if self.channel is not None and self.alive else {}

        def submit(self, count: int = 1) -> None:
            """Find and send `count` shares in one write (more than one: a proxy pipelining its devices' shares)."""
            if not self.alive or self.channel.active is None:
                return
            try:
                with self.client.batch():
                    for _ in range(count):
                        share, _ = self.work.search(3000)
                        if share is not None:
                            submit_share(self.client, share)
            except OSError:
                pass

    def arrived(key: str) -> None:
        now = time.time()
        entry = jobs.get(key)
        if entry is None:
            jobs[key] = [1, now, now]
        else:
            entry[0] += 1
            entry[2] = max(entry[2], now)
            entry[1] = min(entry[1], now)

    if args.protocol == "v2":
        from gstratum.client.sv2 import Sv2Client, Sv2ProtocolViolation, Sv2Rejected
        from gstratum.client.sv2work import ChannelWork, submit as submit_share
        from gstratum.protocol.sv2 import codec
        from gstratum.protocol.sv2.codec import SetupConnectionFlags
        from gstratum.protocol.sv2.keys import decode_authority_public_key
        from gstratum.protocol.sv2.noise import NoiseInitiator

        authority_key = decode_authority_public_key(args.authority_pubkey) if args.authority_pubkey else None
        extended = args.channel == "extended"

    def on_failure(greenlet) -> None:
        stats["errors"] += 1
        if len(error_samples) < 5:
            error_samples.append(repr(greenlet.exception))

    group = gevent.pool.Group()
    miners = [(V2Miner if args.protocol == "v2" else Miner)(i) for i in range(args.child_miners)]
    prepare_cpu = cpu_seconds()
    if args.protocol == "v2" and args.prepare_keys:
        # each miner's Noise key (secret + ElligatorSwift encoding, ~90 us) made before the ramp: the ramp then
        # pays only the two ECDHs (and the certificate check with --authority-pubkey)
        for miner in miners:
            miner.prepare()
    prepare_cpu = cpu_seconds() - prepare_cpu

    def ramp() -> None:
        interval = 1.0 / args.child_ramp if args.child_ramp > 0 else 0
        for miner in miners:
            if time.monotonic() > deadline:
                return
            group.spawn(miner.run).link_exception(on_failure)
            if interval:
                gevent.sleep(interval)

    def ramp_watch() -> None:
        """This process's CPU when all its miners are in: the load tool's own cost per handshake."""
        while stats["handshakes"] < len(miners):
            gevent.sleep(0.05)
        ramp_cpu.append(cpu_seconds())

    def submitter() -> None:
        rate = args.share_rate * len(miners)
        if rate <= 0:
            return
        position = 0
        tick = 0.05
        while time.monotonic() < deadline:
            for _ in range(max(1, int(rate * tick / args.pipeline))):
                miners[position % len(miners)].submit(args.pipeline)
                position += 1
            gevent.sleep(tick)

    def reporter() -> None:
        while True:
            newest = max(jobs.items(), key=lambda item: item[1][1], default=None)   # (job id, [count, first, last])
            out.write(json.dumps({"type": "progress", **stats, "last_job": newest, "cpu_s": cpu_seconds()}) + "\n")
            out.flush()
            gevent.sleep(1.0)

    rep = gevent.spawn(reporter)       # progress during the ramp too
    rep.link_exception(on_failure)
    cpu_before_ramp = cpu_seconds()
    watcher = gevent.spawn(ramp_watch)
    watcher.link_exception(on_failure)
    ramper = gevent.spawn(ramp)
    ramper.link_exception(on_failure)
    ramper.join()
    run_until = time.monotonic() + args.duration
    sub = gevent.spawn(submitter)
    sub.link_exception(on_failure)
    while time.monotonic() < min(run_until, deadline):
        gevent.sleep(0.2)
    sub.kill()
    settle = time.monotonic() + 5.0      # let the replies to shares in flight arrive, so the counts are exact
    while any(m.pending for m in miners) and time.monotonic() < settle:
        gevent.sleep(0.05)
    rep.kill()
    watcher.kill()
    final_stats = dict(stats)
    final_stats["unanswered"] = sum(len(m.pending) for m in miners)
    group.kill(timeout=5)
    out.write(json.dumps({"type": "final", **final_stats, "handshake_ms": handshake_ms,
                          "share_ms": share_ms[-200_000:], "jobs": jobs, "errors_sample": error_samples,
                          "rejected_codes": rejected_codes, "cpu_s": cpu_seconds(),
                          "ramp_cpu_s": ramp_cpu[0] - cpu_before_ramp if ramp_cpu else None,
                          "prepare_cpu_s": prepare_cpu,
                          **({"v2": v2_times} if args.protocol == "v2" else {})}) + "\n")
    out.flush()
    return 0


# ------------------------------------------------------------------------------------------------------------------
# parent: processes, progress, report
# ------------------------------------------------------------------------------------------------------------------
def server_cpu(pid: int | None) -> float:
    """utime + stime of a process, in seconds, from /proc/<pid>/stat (0 when no pid is given)."""
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def last_fanout(progress: Iterable[dict]) -> str:
    """The newest job any child has seen: how many miners got it so far, first to last arrival across children."""
    newest = [m["last_job"] for m in progress if m.get("last_job")]
    if not newest:
        return "last fan-out -"
    job_id = max(newest, key=lambda item: item[1][1])[0]
    parts = [entry for jid, entry in newest if jid == job_id]
    reached = sum(entry[0] for entry in parts)
    spread = max(entry[2] for entry in parts) - min(entry[1] for entry in parts)
    return f"last fan-out {reached} miners in {spread * 1000:.0f} ms"


def report(finals: list[dict], args: argparse.Namespace, timeline: list[dict], elapsed: float) -> dict:
    handshakes = [v for f in finals for v in f["handshake_ms"]]
    shares = [v for f in finals for v in f["share_ms"]]
    jobs: dict[str, list] = {}
    for f in finals:
        for job_id, (count, first, last) in f["jobs"].items():
            entry = jobs.setdefault(job_id, [0, first, last])
            entry[0] += count
            entry[1] = min(entry[1], first)
            entry[2] = max(entry[2], last)
    subscribed = sum(f["subscribed"] for f in finals)
    # V1: the first job each miner sees is the one sent with its subscribe: only broadcasts measure fan-out. V2
    # miners never count the job and prevhash sent with their channel.
    broadcasts = sorted(jobs.items(), key=lambda item: item[1][1])[1 if args.protocol == "v1" else 0:]
    fanout = [{"job_id": j, "reached": c, "fraction": round(c / subscribed, 4) if subscribed else 0.0,
               "spread_ms": round((last - first) * 1000, 2), "first_at": first, "last_at": last}
              for j, (c, first, last) in broadcasts]
    full = [f for f in fanout if f["fraction"] >= 0.999]
    spreads = [f["spread_ms"] for f in full]
    result = {
        "miners": args.miners, "procs": args.procs, "duration_s": args.duration, "elapsed_s": round(elapsed, 1),
        "subscribed": subscribed, "handshakes": sum(f["handshakes"] for f in finals),
        "handshake_ms": {"p50": percentile(handshakes, 50), "p99": percentile(handshakes, 99),
                         "max": max(handshakes) if handshakes else None},
        "shares_accepted": sum(f["accepted"] for f in finals), "shares_rejected": sum(f["rejected"] for f in finals),
        "shares_per_second": round(sum(f["accepted"] for f in finals) / max(args.duration, 1e-9), 1),
        "share_rtt_ms": {"p50": percentile(shares, 50), "p99": percentile(shares, 99)},
        "jobs": fanout, "jobs_reaching_all": len(full),
        "fanout_spread_ms": {"p50": percentile(spreads, 50), "p99": percentile(spreads, 99),
                             "max": max(spreads) if spreads else None},
        "drops": sum(f["drops"] for f in finals), "errors": sum(f["errors"] for f in finals),
        "unanswered_shares": sum(f.get("unanswered", 0) for f in finals),
        "reconnects_requested": sum(f["reconnects_requested"] for f in finals),
        "resumed_same_extranonce1": sum(f["resumed_same"] for f in finals),
        "resumed_changed_extranonce1": sum(f["resumed_changed"] for f in finals),
        "connect_failures": sum(f["connect_failures"] for f in finals),
        "errors_sample": [e for f in finals for e in f["errors_sample"]][:10], "timeline": timeline,
        "protocol": args.protocol,
    }
    codes: dict[str, int] = {}
    for f in finals:
        for code, count in f.get("rejected_codes", {}).items():
            codes[code] = codes.get(code, 0) + count
    result["rejected_by_code"] = codes
    # the load tool's own CPU: all of it, and per handshake up to the moment each process had all its miners in
    result["client_cpu_s"] = round(sum(f["cpu_s"] for f in finals), 3)
    ramps = [f["ramp_cpu_s"] for f in finals]
    if ramps and None not in ramps and result["handshakes"]:
        per_handshake = sum(ramps) / result["handshakes"]
        result["client_cpu_us_per_handshake"] = round(per_handshake * 1e6, 1)
        result["client_handshakes_per_cpu_second"] = round(1 / per_handshake) if per_handshake else None
    if args.protocol == "v2":
        result["channel"] = args.channel
        result["client_prepare_cpu_s"] = round(sum(f["prepare_cpu_s"] for f in finals), 3)
        for name in ("connect_ms", "noise_ms", "setup_ms", "noise_cpu_us"):
            values = [v for f in finals for v in f["v2"][name]]
            result[name] = {"p50": percentile(values, 50), "p99": percentile(values, 99),
                            "max": max(values) if values else None}
    return result


def markdown(result: dict) -> str:
    def fmt(value):
        return "-" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))

    rows = [("miners subscribed", f"{result['subscribed']} / {result['miners']}"),
            ("handshake p50 / p99 / max (ms)", " / ".join(fmt(result["handshake_ms"][k]) for k in ("p50", "p99", "max"))),
            ("shares accepted / rejected", f"{result['shares_accepted']} / {result['shares_rejected']}"),
            ("accepted shares/s", fmt(result["shares_per_second"])),
            ("share round trip p50 / p99 (ms)", " / ".join(fmt(result["share_rtt_ms"][k]) for k in ("p50", "p99"))),
            ("jobs broadcast / reaching every miner", f"{len(result['jobs'])} / {result['jobs_reaching_all']}"),
            ("fan-out spread p50 / p99 / max (ms)",
             " / ".join(fmt(result["fanout_spread_ms"][k]) for k in ("p50", "p99", "max"))),
            ("server CPU per operation (us)", fmt(result.get("server_cpu_us_per_op"))),
            ("server CPU per handshake, ramp (us)", fmt(result.get("server_cpu_us_per_handshake"))),
            ("server CPU per share after the ramp (us)", fmt(result.get("server_cpu_us_per_share_after_ramp"))),
            ("drops / errors / connect failures",
             f"{result['drops']} / {result['errors']} / {result['connect_failures']}"),
            ("rejected by code", ", ".join(f"{k} {v}" for k, v in sorted(result["rejected_by_code"].items())) or "-"),
            ("load tool CPU per handshake, ramp (us) / handshakes per CPU second",
             " / ".join(fmt(result.get(k)) for k in ("client_cpu_us_per_handshake",
                                                      "client_handshakes_per_cpu_second")))]
    if result["protocol"] == "v2":
        def p3(name):
            return " / ".join(fmt(result[name][k]) for k in ("p50", "p99", "max"))

        rows[1:2] = [(f"V2 {result['channel']} channel: connect -> channel open p50 / p99 / max (ms)",
                      " / ".join(fmt(result["handshake_ms"][k]) for k in ("p50", "p99", "max"))),
                     ("connect -> SetupConnection.Success p50 / p99 / max (ms)", p3("setup_ms")),
                     ("Noise handshake alone p50 / p99 / max (ms)", p3("noise_ms")),
                     ("TCP connect p50 / p99 / max (ms)", p3("connect_ms")),
                     ("load tool CPU per Noise handshake p50 / p99 / max (us)", p3("noise_cpu_us"))]
        rows[rows.index(next(r for r in rows if r[0].startswith("share round trip")))] = (
            "share round trip, to the answer covering it, p50 / p99 (ms)",
            " / ".join(fmt(result["share_rtt_ms"][k]) for k in ("p50", "p99")))
    table = "| what | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    recent = result["jobs"][-10:]
    if recent:   # per job: who got it and how far apart the first and last arrivals were (all jobs: --json)
        table += ("\n\n| job (last 10 broadcasts) | miners reached | fraction | first to last arrival (ms) |\n"
                  "|---|---|---|---|\n" + "\n".join(f"| {j['job_id']} | {j['reached']} | {j['fraction']:.4f} | "
                                                    f"{j['spread_ms']:.1f} |" for j in recent))
    return table


def plot(result: dict, path: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install -r scripts/requirements-scripts.txt") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [p["t"] for p in result["timeline"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot(t, [p["connected"] for p in result["timeline"]], label="connected miners")
    top.set_ylabel("miners")
    top.legend()
    bottom.plot(t, [p["accepted_per_s"] for p in result["timeline"]], label="accepted shares/s")
    bottom.plot(t, [p["handshakes_per_s"] for p in result["timeline"]], label="handshakes/s")
    bottom.set_xlabel("seconds")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path)


def parent_main(args: argparse.Namespace) -> int:
    try:
        address = ipaddress.ip_address(socket.gethostbyname(args.host))
    except (OSError, ValueError):
        print(f"loadtest: cannot resolve {args.host}", file=sys.stderr)
        return 2
    if not address.is_loopback and not args.allow_remote:
        print(f"loadtest: {args.host} is not a loopback address; refusing (use --allow-remote for your own hosts)",
              file=sys.stderr)
        return 2
    ramp_seconds = args.miners / args.ramp if args.ramp > 0 else 0
    hard = ramp_seconds + args.duration + 30
    per_proc = [args.miners // args.procs + (1 if i < args.miners % args.procs else 0) for i in range(args.procs)]
    children = []
    for index, count in enumerate(per_proc):
        if count == 0:
            continue
        cmd = [sys.executable, __file__, "--child-index", str(index), "--child-miners", str(count),
               "--child-ramp", str(args.ramp / args.procs if args.ramp > 0 else 0), "--hard-deadline", str(hard),
               "--host", str(address), "--port", str(args.port), "--duration", str(args.duration),
               "--share-rate", str(args.share_rate), "--pipeline", str(args.pipeline), "--src-ips", str(args.src_ips),
               "--worker-prefix", args.worker_prefix, "--protocol", args.protocol, "--channel", args.channel,
               "--prepare-keys" if args.prepare_keys else "--no-prepare-keys", "--nominal-hashrate",
               str(args.nominal_hashrate)]
        cmd += ["--authority-pubkey", args.authority_pubkey] if args.authority_pubkey else []
        cmd += (["--users", args.users] if args.users else []) + (["--configure"] if args.configure else []) + (
            ["--reconnect"] if args.reconnect else [])
        children.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
    cpu_before = server_cpu(args.server_pid)
    selector = selectors.DefaultSelector()
    for child in children:
        selector.register(child.stdout, selectors.EVENT_READ, child)
    latest: dict[int, dict] = {}
    finals: dict[int, dict] = {}
    timeline: list[dict] = []
    started = time.monotonic()
    last_print = started
    previous = {"handshakes": 0, "accepted": 0}
    ramp_cpu: tuple[float, int, float] | None = None     # server CPU, handshakes and shares when all had subscribed
    while len(finals) < len(children) and time.monotonic() - started < hard + 15:
        for key, _ in selector.select(timeout=0.5):
            child = key.data
            line = child.stdout.readline()
            if not line:
                selector.unregister(child.stdout)
                finals.setdefault(child.pid, None)
                continue
            message = json.loads(line)
            if message["type"] == "final":
                finals[child.pid] = message
            else:
                latest[child.pid] = message
        now = time.monotonic()
        if now - last_print >= 1.0:
            total = {k: sum(m[k] for m in latest.values()) for k in ("connected", "handshakes", "accepted",
                                                                      "rejected", "drops", "errors")}
            dt = now - last_print
            point = {"t": round(now - started, 1), "connected": total["connected"],
                     "handshakes_per_s": round((total["handshakes"] - previous["handshakes"]) / dt, 1),
                     "accepted_per_s": round((total["accepted"] - previous["accepted"]) / dt, 1)}
            timeline.append(point)
            if args.server_pid and ramp_cpu is None and total["handshakes"] >= args.miners:
                ramp_cpu = (server_cpu(args.server_pid) - cpu_before, total["handshakes"], total["accepted"])
            previous = total
            last_print = now
            print(f"\r[{point['t']:6.1f}s] connected {total['connected']:6d}  handshakes/s {point['handshakes_per_s']:7.1f}"
                  f"  shares/s {point['accepted_per_s']:8.1f} acc, rejected {total['rejected']}  drops {total['drops']}"
                  f"  errors {total['errors']}  {last_fanout(latest.values())}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    for child in children:
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
    usable = [f for f in finals.values() if f]
    if len(usable) < len(children):
        print(f"loadtest: {len(children) - len(usable)} child process(es) gave no report", file=sys.stderr)
    result = report(usable, args, timeline, time.monotonic() - started)
    if args.server_pid:
        cpu = server_cpu(args.server_pid) - cpu_before
        ops = result["handshakes"] + result["shares_accepted"] + result["shares_rejected"]
        result["server_cpu_s"] = round(cpu, 3)
        result["server_cpu_us_per_op"] = round(cpu / ops * 1e6, 1) if ops else None
        if ramp_cpu is not None:
            # Split the server's CPU: up to the moment every miner had subscribed (sampled once a second, so it
            # includes up to a second of whatever followed), and after it (shares, notifies, the final disconnects).
            ramp_seconds, ramp_handshakes, ramp_shares = ramp_cpu
            result["server_cpu_us_per_handshake"] = round(ramp_seconds / ramp_handshakes * 1e6, 1)
            shares_after = result["shares_accepted"] - ramp_shares
            if shares_after > 0:
                result["server_cpu_us_per_share_after_ramp"] = round((cpu - ramp_seconds) / shares_after * 1e6, 1)
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(result, args.plot)
    return 0 if len(usable) == len(children) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3333)
    parser.add_argument("--miners", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ramp", type=float, default=1000.0, help="new miners per second, all processes (0: all at once)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to stay connected after the ramp")
    parser.add_argument("--share-rate", type=float, default=0.0, help="shares per second per miner")
    parser.add_argument("--pipeline", type=int, default=1,
                        help="shares per write (1: a miner; more: a proxy sending its devices' shares together)")
    parser.add_argument("--configure", action="store_true", help="send mining.configure (version rolling) first")
    parser.add_argument("--reconnect", action="store_true", help="reconnect when the server drops a miner")
    parser.add_argument("--src-ips", type=int, default=1, help="spread miners over 127.0.0.1..N source addresses")
    parser.add_argument("--worker-prefix", default="load")
    parser.add_argument("--users", help="a file of user names (e.g. solo payout addresses), one per line, used in turn "
                                        "instead of --worker-prefix")
    parser.add_argument("--protocol", choices=["v1", "v2"], default="v1",
                        help="v2: Stratum V2 miners (Noise, binary frames) on the server's --sv2-port (as --port)")
    parser.add_argument("--channel", choices=["standard", "extended"], default="standard",
                        help="V2: the channel each miner opens (--configure: roll versions inside 1fffe000)")
    parser.add_argument("--nominal-hashrate", type=float, default=0.0,
                        help="V2: the hashrate each channel announces (0, the default: the port's difficulty, as V1 "
                             "miners get; the firmware announces 1e12, which vardiff turns into its difficulty)")
    parser.add_argument("--authority-pubkey", help="V2: pin the pool's authority key (costs a Schnorr check per miner)")
    parser.add_argument("--prepare-keys", action=argparse.BooleanOptionalAction, default=True,
                        help="V2: make each miner's Noise key before the ramp (default), so the ramp measures the "
                             "handshake, not the key generation")
    parser.add_argument("--json", help="write the report as JSON to this file")
    parser.add_argument("--plot", help="write a PNG plot (needs matplotlib)")
    parser.add_argument("--server-pid", type=int, help="report this server process's CPU time per operation")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback target (your own hosts)")
    parser.add_argument("--child-index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-miners", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-ramp", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--hard-deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_index is not None:
        return child_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
