#!/usr/bin/env python3
"""The floor to compare gstratum with: a bare gevent Stratum responder, no database, no validation, no bookkeeping.

It answers mining.subscribe (a counter as extranonce1), mining.authorize and mining.submit (always true, after
parsing the JSON) and broadcasts a job every `--notify-interval` seconds with a plain loop of non-blocking `send`
on the raw sockets, logging each fan-out's wall and CPU time. Drive it with scripts/loadtest.py exactly as gstratum
(`--server-pid` its pid): the difference between the two runs is what gstratum's own work costs, on the same
machine at the same moment, which is the only fair comparison on a shared, noisy box.

    .venv/bin/python scripts/bench_baseline.py --port 5555 --notify-interval 5
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import itertools  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import ujson  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from gstratum.mining.jobs import RandomJobSource  # noqa: E402  (well-formed jobs, so the load tool can mine real shares)
from gstratum.protocol.notify import notify_line  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5555)
    parser.add_argument("--notify-interval", type=float, default=5.0)
    parser.add_argument("--difficulty", type=float, default=1e-10)
    args = parser.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    source = RandomJobSource()
    job = [source.next_job(True)]
    subscribed: dict[int, object] = {}         # fd -> raw socket
    extranonce = itertools.count(1)
    difficulty_line = ujson.dumps({"id": None, "method": "mining.set_difficulty",
                                   "params": [args.difficulty]}).encode() + b"\n"

    def handle(sock, address) -> None:
        raw = sock._sock
        buffer = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                buffer += data
                out = []
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    message = ujson.loads(line)
                    method = message.get("method")
                    if method == "mining.subscribe":
                        n = next(extranonce)
                        out.append(ujson.dumps({"id": message["id"], "error": None, "result": [
                            [["mining.set_difficulty", f"{n:x}d"], ["mining.notify", f"{n:x}"]], f"{n:016x}", 4]})
                            .encode() + b"\n" + difficulty_line + notify_line(job[0], True))
                        subscribed[raw.fileno()] = raw
                    else:
                        out.append(ujson.dumps({"id": message.get("id"), "result": True, "error": None}).encode()
                                   + b"\n")
                if out:
                    sock.sendall(b"".join(out))
        except (OSError, ValueError):
            return
        finally:
            subscribed.pop(raw.fileno(), None)

    def broadcast_forever() -> None:
        made = 1
        while True:
            gevent.sleep(args.notify_interval)
            job[0] = source.next_job(made % 4 == 0, job[0])
            made += 1
            line = notify_line(job[0])
            started, cpu_started = time.perf_counter(), time.process_time()
            for raw in list(subscribed.values()):
                try:
                    raw.send(line)
                except OSError:
                    pass
            print(f"notify miners={len(subscribed)} fanout={(time.perf_counter() - started) * 1000:.1f}ms "
                  f"cpu={(time.process_time() - cpu_started) * 1000:.1f}ms", flush=True)

    gevent.spawn(broadcast_forever).link_exception(lambda g: print(f"broadcast failed: {g.exception!r}",
                                                                   file=sys.stderr))
    gc.collect()
    gc.freeze()
    print(f"baseline listening on {args.host}:{args.port} pid {os.getpid()}", flush=True)
    StreamServer((args.host, args.port), handle, backlog=4096).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
