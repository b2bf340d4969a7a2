"""`python -m gstratum client`: connect, subscribe, authorize, validate every reply, print notifications."""
from __future__ import annotations

import argparse
import socket
import sys
import time

from .client import ProtocolViolation, StratumClient, StratumRejected, parse_url


def add_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--url", default="stratum+tcp://127.0.0.1:3333", help="server, stratum+tcp://host:port")
    add("--user", default="worker1", help="worker name to authorize")
    add("--password", default="x")
    add("--notifications", type=int, default=1, help="exit after this many mining.notify (0: run until --duration)")
    add("--duration", type=float, default=60.0, help="give up / stop after this many seconds")
    add("--timeout", type=float, default=10.0, help="seconds to wait for each reply")


def _print(message: dict) -> None:
    print(f"<- {message.get('method')} {message.get('params')}", flush=True)


def run(args: argparse.Namespace) -> int:
    try:
        host, port = parse_url(args.url)
    except ValueError as exc:
        print(f"client: {exc}", file=sys.stderr)
        return 2
    try:
        with StratumClient(host, port, timeout=args.timeout) as client:
            sub = client.subscribe()
            print(f"subscribed: extranonce1={sub.extranonce1} extranonce2_size={sub.extranonce2_size} "
                  f"session={sub.session_id}", flush=True)
            client.authorize(args.user, args.password)
            print(f"authorized: {args.user}", flush=True)
            for message in client.state.notifications:
                _print(message)
            shown = len(client.state.notifications)
            deadline = time.monotonic() + args.duration
            while args.notifications == 0 or client.state.jobs_received < args.notifications:
                left = deadline - time.monotonic()
                if left <= 0:
                    if args.notifications:
                        print(f"client: only {client.state.jobs_received} of {args.notifications} mining.notify "
                              f"within {args.duration}s", file=sys.stderr)
                        return 1
                    break
                try:
                    client.read_message(left)
                except socket.timeout:
                    continue
                for message in client.state.notifications[shown:]:
                    _print(message)
                shown = len(client.state.notifications)
    except ProtocolViolation as exc:
        print(f"client: protocol violation: {exc}", file=sys.stderr)
        return 3
    except StratumRejected as exc:
        print(f"client: server refused: {exc.error}", file=sys.stderr)
        return 3
    except (OSError, ConnectionError) as exc:
        print(f"client: connection failed: {exc}", file=sys.stderr)
        return 1
    print("ok", flush=True)
    return 0
