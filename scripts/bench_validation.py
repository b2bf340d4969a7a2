#!/usr/bin/env python3
"""Bare share validation throughput on one core: Session.submit end to end in memory (parse, job lookup, ntime,
duplicate check, coinbase + merkle + header double SHA-256, target compare, row built), no sockets, no database.

    .venv/bin/python scripts/bench_validation.py --shares 100000 --fake-txs 8
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
    args = parser.parse_args()
    rows = []
    book = JobBook()
    source = RandomJobSource(fake_txs=args.fake_txs)
    book.add(source.next_job(True))
    core = MiningCore(jobs=book, ledger=ShareLedger(book.prevhashes), recorder=Recorder(rows.append, "b"),
                      metrics=Metrics(), stats=PoolStats())
    services = Services(core=core, difficulty=1e-12)  # every hash meets it: the full accept path runs each time
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
    print(f"{args.shares} shares (branch {len(job.merkle_branch)} steps): {args.shares / elapsed:,.0f} shares/s, "
          f"{cpu / args.shares * 1e6:.1f} us CPU per share")


if __name__ == "__main__":
    main()
