#!/usr/bin/env python3
"""Fuzz a live gstratum server with random and mutated Stratum traffic, for a bounded time, on loopback only.

Each round opens a connection, sends a burst of mutated requests split at random points (sometimes closing
half-way), and reads whatever comes back. A bystander miner must keep being answered throughout; at the end the
server's log must hold no traceback or internal error, and its resident memory must not have run away.

    .venv/bin/python scripts/fuzz_live.py --seconds 60             # starts its own server (embedded PostgreSQL)
    .venv/bin/python scripts/fuzz_live.py --port 3333 --pid 1234   # against a running one
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gstratum.client import StratumClient  # noqa: E402

METHODS = ["mining.subscribe", "mining.authorize", "mining.submit", "mining.configure", "mining.suggest_difficulty",
           "mining.suggest_target", "mining.extranonce.subscribe", "mining.get_transactions", "client.get_version",
           "mining.nonexistent", "", "mining.submit\x00"]
ODD_VALUES = [None, True, False, 0, -1, 2**63, 2**64 + 1, 1e308, -1e-308, "", "x" * 300, "00000000", "ffffffff",
              "zzzzzzzz", "\u0000", "\ud7ff", [], {}, [[[]]], {"a": {"b": []}}, "1fffe000", 3.5, "0" * 64]


def seed_request(rng: random.Random) -> object:
    method = rng.choice(METHODS)
    params: object = [rng.choice(ODD_VALUES) for _ in range(rng.randint(0, 7))]
    if method == "mining.submit" and rng.random() < 0.5:
        params = ["w", f"{rng.getrandbits(36):x}", f"{rng.getrandbits(32):08x}", f"{int(time.time()):08x}",
                  f"{rng.getrandbits(32):08x}"]
    if method == "mining.configure" and rng.random() < 0.5:
        params = [["version-rolling", "minimum-difficulty", "subscribe-extranonce", "x"],
                  {"version-rolling.mask": rng.choice(["1fffe000", "ffffffff", "xyz", 5]),
                   "minimum-difficulty.value": rng.choice(ODD_VALUES)}]
    request: dict = {"id": rng.choice([rng.randint(0, 10**6), None, "s", 1.5, [1], {"a": 1}]), "method": method,
                     "params": params}
    if rng.random() < 0.1:
        request = rng.choice([[request], [], "text", 12, None])
    return request


def mutate(rng: random.Random, line: bytes) -> bytes:
    choice = rng.random()
    data = bytearray(line)
    if choice < 0.15 and data:
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif choice < 0.25 and data:
        del data[rng.randrange(len(data)):]
    elif choice < 0.3:
        data = bytearray(b"[" * rng.randint(100, 3000) + b"]" * rng.randint(0, 3000))
    elif choice < 0.35:
        data = bytearray(os.urandom(rng.randint(1, 500)).replace(b"\n", b""))
    elif choice < 0.4:
        data += b"\r"
    return bytes(data).replace(b"\n", b"") + b"\n"


def round_trip(rng: random.Random, host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=5) as sock:
        payload = b"".join(mutate(rng, json.dumps(seed_request(rng)).encode()) for _ in range(rng.randint(1, 40)))
        cuts = sorted(rng.sample(range(len(payload)), min(len(payload) - 1, rng.randint(0, 5)))) if len(payload) > 1 else []
        try:
            for a, b in zip([0] + cuts, cuts + [len(payload)]):
                sock.sendall(payload[a:b])
                if rng.random() < 0.05:
                    return   # half-way close
            sock.shutdown(socket.SHUT_WR)   # the server answers what it got, sees EOF and closes
            sock.settimeout(2.0)
            while sock.recv(65536):
                pass
        except (OSError, TimeoutError):
            pass


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="fuzz a running server (default: start one)")
    parser.add_argument("--pid", type=int, help="its pid, to watch memory")
    parser.add_argument("--log", type=Path, help="its log, to check for tracebacks")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-rss-growth-kib", type=int, default=64 * 1024)
    args = parser.parse_args()
    if not ipaddress.ip_address(socket.gethostbyname(args.host)).is_loopback:
        print("fuzz_live: only loopback targets are allowed", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    server = None
    if args.port is None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            args.port = probe.getsockname()[1]
        workdir = Path(tempfile.mkdtemp(prefix="gstratum-fuzz-"))
        args.log = workdir / "server.log"
        server = subprocess.Popen([sys.executable, "-m", "gstratum", "run", "--host", "127.0.0.1", "--port",
                                   str(args.port), "--notify-interval", "1", "--journal-dir", str(workdir / "j"),
                                   *(["--database-url", os.environ["DATABASE_URL"]] if "DATABASE_URL" in os.environ
                                     else ["--pgdata", str(ROOT / ".gstratum" / "fuzz-pgdata")])],
                                  cwd=ROOT, stdout=open(args.log, "wb"), stderr=subprocess.STDOUT)
        args.pid = server.pid
        deadline = time.monotonic() + 60
        while b"stratum listening" not in args.log.read_bytes():
            if server.poll() is not None or time.monotonic() > deadline:
                print(args.log.read_text(), file=sys.stderr)
                return 1
            time.sleep(0.1)
    failures: list[str] = []
    try:
        bystander = StratumClient(args.host, args.port, timeout=5)
        bystander.subscribe()
        start_rss = rss_kib(args.pid) if args.pid else 0
        rounds = 0
        started = time.monotonic()
        while time.monotonic() - started < args.seconds:
            round_trip(rng, args.host, args.port)
            rounds += 1
            if rounds % 20 == 0:
                t0 = time.monotonic()
                bystander.authorize(f"bystander-{rounds}")
                if time.monotonic() - t0 > 1.0:
                    failures.append(f"bystander waited {time.monotonic() - t0:.2f}s")
        growth = (rss_kib(args.pid) - start_rss) if args.pid else 0
        if growth > args.max_rss_growth_kib:
            failures.append(f"server RSS grew by {growth} KiB")
        bystander.close()
    except (OSError, ConnectionError) as exc:
        failures.append(f"bystander lost: {exc}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    log_text = args.log.read_text(errors="replace") if args.log else ""
    for marker in ("Traceback", "Internal error", "died"):
        if marker in log_text:
            failures.append(f"server log contains {marker!r}")
    print(json.dumps({"seed": seed, "rounds": rounds, "seconds": args.seconds, "rss_growth_kib": growth,
                      "failures": failures}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
