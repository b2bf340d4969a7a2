#!/usr/bin/env python3
"""Bare share validation throughput on one core, in memory (no sockets, no database): V1, a JSON line through
Session (parse, hex, job lookup, ntime, duplicate ledger, coinbase + merkle + header double SHA-256, target, row,
the encoded reply); V2, the same shares as encrypted SubmitSharesStandard frames through the Noise transport, the
codec and Sv2Session (decrypt, decode, the same core; acknowledged in batches of --ack-batch, each Success encoded
and encrypted). The same core does the same work for both: the difference is each protocol's own cost.

    .venv/bin/python scripts/bench_validation.py --shares 50000 --fake-txs 8 --protocol both --ack-batch 1
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import ujson  # noqa: E402

from gstratum.mining.channel import MiningCore  # noqa: E402
from gstratum.mining.jobs import JobBook, RandomJobSource  # noqa: E402
from gstratum.mining.ledger import ShareLedger  # noqa: E402
from gstratum.ops.metrics import Metrics  # noqa: E402
from gstratum.ops.stats import PoolStats  # noqa: E402
from gstratum.protocol.session import Services, Session, handle_line  # noqa: E402
from gstratum.storage.allocator import MemoryAllocator  # noqa: E402
from gstratum.storage.records import Recorder  # noqa: E402
from gstratum.storage.resumption import Subscriptions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shares", type=int, default=100_000)
    parser.add_argument("--fake-txs", type=int, default=8, help="merkle branch of log2(N+1) steps")
    parser.add_argument("--protocol", choices=["v1", "v2", "both"], default="v1")
    parser.add_argument("--ack-batch", type=int, default=10, help="V2: shares acknowledged by one Success")
    parser.add_argument("--channel", choices=["standard", "extended", "both"], default="both",
                        help="V2: the channel kind (standard: the root is hashed once per job; extended: per share)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="rounds, the variants interleaved; the best round is reported (a shared VM's noise "
                             "only ever adds time)")
    args = parser.parse_args()
    variants = []
    if args.protocol in ("v1", "both"):
        variants.append(("V1", lambda: bench_v1(args)))
    if args.protocol in ("v2", "both"):
        for channel in (["standard", "extended"] if args.channel == "both" else [args.channel]):
            variants.append((f"V2 {channel} channel, one Success per {args.ack_batch}",
                             lambda extended=channel == "extended": bench_v2(args, extended)))
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in variants}
    for _ in range(args.repeat):
        for name, run in variants:
            results[name].append(run())
    branch = len(RandomJobSource(fake_txs=args.fake_txs).next_job(True).merkle_branch)
    print(f"{args.shares} shares per round, merkle branch {branch} steps, best of {args.repeat} rounds:")
    for name, rounds in results.items():
        rate, cpu = max(rounds, key=lambda r: r[0])[0], min(r[1] for r in rounds)
        median = sorted(r[1] for r in rounds)[len(rounds) // 2]
        print(f"  {name}: {rate:,.0f} shares/s, {cpu:.1f} us CPU per share (median round {median:.1f})")


def core_for(args):
    rows = []

    book = JobBook()
    source = RandomJobSource(fake_txs=args.fake_txs)
    book.add(source.next_job(True))
    core = MiningCore(jobs=book, ledger=ShareLedger(book.prevhashes), recorder=Recorder(rows.append, "b"),
                      metrics=Metrics(), stats=PoolStats())
    return core, book, Services(core=core, difficulty=1e-12)   # every hash meets it: the full accept path each time


def bench_v2(args, extended: bool) -> None:
    from gstratum.protocol.sv2 import codec
    from gstratum.protocol.sv2.certificate import ServerIdentity
    from gstratum.protocol.sv2.noise import NoiseInitiator, NoiseResponder
    from gstratum.protocol.sv2.session import Sv2Session

    core, book, services = core_for(args)
    session = Sv2Session(services, "0" * 32)
    initiator, responder = NoiseInitiator(None), NoiseResponder(ServerIdentity.create(bytes(31) + b"\1", 0))
    initiator.receive(responder.receive(initiator.start()))
    miner, pool = initiator.connection(), responder.connection()
    session.receive(codec.SetupConnection(0, 2, 2, 0, "", 0, "", "", "", ""))
    if extended:
        opened = session.receive(codec.OpenExtendedMiningChannel(1, "w", 0.0, b"\xff" * 32, 4))
    else:
        opened = session.receive(codec.OpenStandardMiningChannel(1, "w", 0.0, b"\xff" * 32))
    session.complete_open(opened.pending, 7)
    job = book.current
    wire = [miner.encrypt(codec.encode_frame(
        codec.SubmitSharesExtended(1, i, job.seq, i * 7, job.ntime_int, job.version_int, i.to_bytes(4, "big"))
        if extended else codec.SubmitSharesStandard(1, i, job.seq, i * 7, job.ntime_int, job.version_int)))
        for i in range(args.shares)]
    start_cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    started = time.perf_counter()
    feed, decode, receive, take_acks, encrypt = pool.feed, codec.decode, session.receive, session.take_acks, \
        pool.encrypt
    shares = acks = 0
    for index, data in enumerate(wire):
        for frame in feed(data):
            shares += len(receive(decode(frame)).rows)
        if index % args.ack_batch == args.ack_batch - 1:
            for ack in take_acks():
                encrypt(ack)
                acks += 1
    elapsed = time.perf_counter() - started
    cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime - start_cpu
    assert shares == args.shares and acks == args.shares // args.ack_batch, (shares, acks)
    return args.shares / elapsed, cpu / args.shares * 1e6


def bench_v1(args) -> None:

    core, book, services = core_for(args)
    session = Session(services, "0" * 32)
    resolve = Subscriptions(MemoryAllocator()).resolve
    handle_line(session, b'{"id":1,"method":"mining.subscribe","params":[]}', resolve)
    handle_line(session, b'{"id":2,"method":"mining.authorize","params":["w","x"]}', resolve)
    job = book.current
    lines = [ujson.dumps({"id": 4, "method": "mining.submit",
                          "params": ["w", job.job_id, f"{i:08x}", job.ntime, f"{i * 7:08x}"]}).encode()
             for i in range(args.shares)]
    start_cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    started = time.perf_counter()
    receive = session.receive_line
    shares = 0
    for line in lines:
        output = receive(line)
        shares += len(output.rows)
    elapsed = time.perf_counter() - started
    cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime - start_cpu
    assert b'"result":true' in output.send[0], output.send
    assert shares == args.shares
    return args.shares / elapsed, cpu / args.shares * 1e6


if __name__ == "__main__":
    main()
