#!/usr/bin/env python3
"""The Stratum V2 floor to compare gstratum with: a bare gevent V2 responder, no database, no share validation.

The V2 twin of scripts/bench_baseline.py. Per connection it runs the real Noise NX responder (one ServerIdentity
for all, as gstratum signs one certificate per window), answers SetupConnection and one channel open (standard or
extended) with the job as a future job and SetNewPrevHash, acknowledges every share (at once, or with
`--ack-delay` in one SubmitShares.Success per connection per delay: the batched form), and every
`--block-interval` seconds sends every channel a new block (future job + SetNewPrevHash) in a plain loop of
non-blocking `send` on the raw sockets, each connection's frames encrypted for it (Noise leaves no shared bytes
to encode once). Drive it with scripts/loadtest.py --protocol v2 exactly as gstratum's --sv2-port (`--server-pid`
its pid): the difference is what gstratum's own work costs, on the same machine at the same moment.

    .venv/bin/python scripts/bench_baseline_sv2.py --port 5556 --block-interval 5
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import hashlib  # noqa: E402
import itertools  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from gstratum.mining import bitcoin  # noqa: E402
from gstratum.protocol.sv2 import codec  # noqa: E402
from gstratum.protocol.sv2.certificate import ServerIdentity  # noqa: E402
from gstratum.protocol.sv2.datatypes import int_to_u256  # noqa: E402
from gstratum.protocol.sv2.errors import Sv2Error  # noqa: E402
from gstratum.protocol.sv2.keys import authority_public_key_string  # noqa: E402
from gstratum.protocol.sv2.noise import NoiseResponder  # noqa: E402

REGTEST_NBITS = 0x207FFFFF


class Block:
    """A well-formed template (real coinbase split around a 12-byte extranonce, a short merkle branch), so the load
    tool's miners hash real work."""

    def __init__(self, height: int) -> None:
        self.prev_hash = hashlib.sha256(b"block %d" % height).digest()
        script = bytes.fromhex("0014") + bytes(20)
        self.coinb1, self.coinb2 = bitcoin.build_coinbase_parts(height, b"/baseline/", 12, [(50 * 10**8, script)])
        self.branch = tuple(hashlib.sha256(b"tx %d %d" % (height, i)).digest() for i in range(3))


class Conn:
    __slots__ = ("sock", "raw", "noise", "channel_id", "extended", "prefix", "acks")

    def __init__(self, sock) -> None:
        self.sock = sock
        self.raw = sock._sock
        self.noise = None
        self.channel_id = None
        self.extended = False
        self.prefix = b""
        self.acks: list[int] = []        # sequence numbers awaiting the batched Success


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5556)
    parser.add_argument("--block-interval", type=float, default=5.0)
    parser.add_argument("--difficulty", type=float, default=1e-10)
    parser.add_argument("--ack-delay", type=float, default=0.0, help="batch acknowledgements per this many seconds")
    args = parser.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    authority = hashlib.sha256(b"baseline authority").digest()
    identity = ServerIdentity.create(authority, int(time.time()), validity=86400)
    target = int_to_u256(bitcoin.target_from_difficulty(args.difficulty))
    channels = itertools.count(1)
    job_ids = itertools.count(1)
    state = {"block": Block(1), "job_id": next(job_ids), "height": 1}
    live: dict[int, Conn] = {}

    def job_frames(conn: Conn) -> list[codec.Message]:
        block, job_id = state["block"], state["job_id"]
        if conn.extended:
            job = codec.NewExtendedMiningJob(conn.channel_id, job_id, None, 0x20000000, True, block.branch,
                                             block.coinb1, block.coinb2)
        else:
            root = bitcoin.merkle_root_from_branch(bitcoin.sha256d(block.coinb1 + conn.prefix + block.coinb2),
                                                   list(block.branch))
            job = codec.NewMiningJob(conn.channel_id, job_id, None, 0x20000000, root)
        return [job, codec.SetNewPrevHash(conn.channel_id, job_id, block.prev_hash, int(time.time()), REGTEST_NBITS)]

    def wire(conn: Conn, messages) -> bytes:
        return b"".join(conn.noise.encrypt(codec.encode_frame(m)) for m in messages)

    def handle(sock, address) -> None:
        conn = Conn(sock)
        responder = NoiseResponder(identity)
        try:
            while not responder.done:
                data = sock.recv(64)
                if not data:
                    return
                answer = responder.receive(data)
                if answer:
                    sock.sendall(answer)
            conn.noise = responder.connection()
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                out = []
                for frame in conn.noise.feed(data):
                    message = codec.decode(frame)
                    if isinstance(message, (codec.SubmitSharesStandard, codec.SubmitSharesExtended)):
                        if args.ack_delay:
                            conn.acks.append(message.sequence_number)
                        else:
                            out.append(codec.SubmitSharesSuccess(conn.channel_id, message.sequence_number, 1, 1))
                    elif isinstance(message, codec.SetupConnection):
                        out.append(codec.SetupConnectionSuccess(2, 0))
                    elif isinstance(message, (codec.OpenStandardMiningChannel, codec.OpenExtendedMiningChannel)):
                        conn.channel_id = next(channels)
                        conn.extended = isinstance(message, codec.OpenExtendedMiningChannel)
                        conn.prefix = conn.channel_id.to_bytes(12, "big")
                        if conn.extended:
                            out.append(codec.OpenExtendedMiningChannelSuccess(
                                message.request_id, conn.channel_id, target, 4, conn.prefix[:8], 0))
                        else:
                            out.append(codec.OpenStandardMiningChannelSuccess(
                                message.request_id, conn.channel_id, target, conn.prefix, 0))
                        out += job_frames(conn)
                        live[id(conn)] = conn
                if out:
                    sock.sendall(wire(conn, out))
        except (OSError, Sv2Error):
            return
        finally:
            live.pop(id(conn), None)
            sock.close()

    def acker() -> None:
        while True:
            gevent.sleep(args.ack_delay)
            for conn in list(live.values()):
                if conn.acks:
                    acks, conn.acks = conn.acks, []
                    try:
                        conn.sock.sendall(wire(conn, [codec.SubmitSharesSuccess(conn.channel_id, acks[-1],
                                                                                len(acks), len(acks))]))
                    except OSError:
                        pass

    def blocks() -> None:
        while True:
            gevent.sleep(args.block_interval)
            state["height"] += 1
            state["block"] = Block(state["height"])
            state["job_id"] = next(job_ids)
            started, cpu = time.perf_counter(), time.process_time()
            sent = 0
            for conn in list(live.values()):
                data = wire(conn, job_frames(conn))
                try:
                    done = conn.raw.send(data)          # a few hundred bytes: nearly always taken at once
                except BlockingIOError:
                    done = 0
                except OSError:
                    continue
                if done < len(data):
                    gevent.spawn(conn.sock.sendall, data[done:])
                sent += 1
            print(f"block {state['height']}: {sent} channels in {(time.perf_counter() - started) * 1e3:.1f} ms "
                  f"(cpu {(time.process_time() - cpu) * 1e3:.1f} ms)", flush=True)

    server = StreamServer((args.host, args.port), handle, backlog=4096)
    server.start()
    gevent.spawn(blocks)
    if args.ack_delay:
        gevent.spawn(acker)
    print(f"bench_baseline_sv2 listening on {args.host}:{args.port} pid {os.getpid()} authority "
          f"{authority_public_key_string(authority)}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
