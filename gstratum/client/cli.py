"""`python -m gstratum client`: connect, subscribe, authorize, validate every reply, print notifications."""
from __future__ import annotations

import argparse
import socket
import sys
import time
from typing import Callable

from gstratum.client import ProtocolViolation, StratumClient, StratumRejected, parse_url


def add_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--url", help="server: stratum+tcp://host:port (V1, default stratum+tcp://127.0.0.1:3333); V2: host:port "
                      "or stratum2+tcp://host:port[/AUTHORITY_PUBKEY]")
    add("--user", default="worker1", help="worker name to authorize")
    add("--password", default="x")
    add("--notifications", type=int, default=1, help="exit after this many mining.notify (0: run until --duration)")
    add("--duration", type=float, default=60.0, help="give up / stop after this many seconds")
    add("--timeout", type=float, default=10.0, help="seconds to wait for each reply")
    add("--mine", action="store_true", help="mine the jobs with a CPU miner for --duration seconds and submit shares")
    add("--bad-shares", dest="bad_shares", action="store_true",
        help="send each kind of invalid share and check the server's error codes")
    add("--suggest-difficulty", dest="suggest_difficulty", type=float, help="send mining.suggest_difficulty first")
    add("--version-rolling", dest="version_rolling", choices=["bip310", "delta"], nargs="?", const="bip310",
        help="negotiate BIP310 and roll header versions while mining, submitting version_bits as cgminer does "
             "(bip310) or as the Bitaxe firmware does (delta: only the bits changed); with --protocol v2: roll "
             "inside 1fffe000 where the pool allows it (the value does not matter)")
    add("--protocol", choices=["v1", "v2"], default="v1",
        help="Stratum V1 (default) or Stratum V2 (Noise-encrypted; --url host:port or stratum2+tcp://host:port/KEY)")
    add("--channel", choices=["standard", "extended"], default="standard",
        help="V2: the channel to open (standard: SetupConnection flag REQUIRES_STANDARD_JOBS, as the firmware does)")
    add("--authority-pubkey", dest="authority_pubkey",
        help="V2: pin the pool's authority public key (what `gstratum sv2-key` prints); default: accept any")
    add("--nominal-hashrate", dest="nominal_hashrate", type=float, default=0.0,
        help="V2: the hashrate the channel announces (0, the default: the port's difficulty, as a proxy with no "
             "device yet; the Bitaxe firmware announces 1e12, which a pool with vardiff turns into its difficulty)")
    add("--firmware-limits", dest="firmware_limits", action="store_true",
        help="V2: refuse what breaks the Bitaxe firmware (frames over 8,192 bytes, more than 20 merkle path entries)")


def _print(message: dict) -> None:
    print(f"<- {message.get('method')} {message.get('params')}", flush=True)


def outcome(session: Callable[[], int | None], violations: tuple, refusals: tuple) -> int:
    """Run one client session for the command line: its failures become messages and exit codes (3 for a party
    that broke or refused the protocol, 1 for the connection), a session that returns no code of its own ends 'ok'."""
    try:
        code = session()
    except violations as exc:
        print(f"client: protocol violation: {exc}", file=sys.stderr)
        return 3
    except refusals as exc:
        print(f"client: pool refused: {getattr(exc, 'error', exc)}", file=sys.stderr)
        return 3
    except (OSError, ConnectionError) as exc:
        print(f"client: connection failed: {exc}", file=sys.stderr)
        return 1
    if code is not None:
        return code
    print("ok", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.protocol == "v2":
        from gstratum.client.sv2cli import run_v2

        return run_v2(args)
    try:
        host, port = parse_url(args.url or "stratum+tcp://127.0.0.1:3333")
    except ValueError as exc:
        print(f"client: {exc}", file=sys.stderr)
        return 2

    def session() -> int | None:
        with StratumClient(host, port, timeout=args.timeout) as client:
            if args.version_rolling:
                print(f"version rolling: mask {client.configure_version_rolling():08x}", flush=True)
            sub = client.subscribe()
            print(f"subscribed: extranonce1={sub.extranonce1} extranonce2_size={sub.extranonce2_size} "
                  f"session={sub.session_id}", flush=True)
            if args.suggest_difficulty:
                client.call("mining.suggest_difficulty", [args.suggest_difficulty])
            client.authorize(args.user, args.password)
            print(f"authorized: {args.user}", flush=True)
            if args.bad_shares:
                return _bad_shares(client, args.user, host, port)
            if args.mine:
                return _mine(client, args)
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

    return outcome(session, violations=(ProtocolViolation,), refusals=(StratumRejected,))


def _mine(client: StratumClient, args: argparse.Namespace) -> int:
    from gstratum.client.work import mine

    def show(share, outcome):
        verdict = "accepted" if outcome is True else f"REJECTED ({outcome})"
        print(f"share job={share.job_id} nonce={share.nonce} difficulty={client.state.difficulty:g}: {verdict}",
              flush=True)

    report = mine(client, args.user, args.duration, on_result=show, version_rolling=args.version_rolling)
    rate = report.hashes / report.seconds if report.seconds else 0.0
    print(f"accepted={report.accepted} rejected={report.rejected_total} {report.rejected or ''} "
          f"hashrate={rate / 1e3:.0f}kH/s over {report.seconds:.1f}s", flush=True)
    return 0 if report.accepted and not report.rejected_total else 1


def _bad_shares(client: StratumClient, worker: str, host: str, port: int) -> int:
    from gstratum.client.work import DifficultyTooHigh, bad_share_checks

    try:
        checks = bad_share_checks(client, worker, host, port)
    except DifficultyTooHigh as exc:
        print(f"client: {exc}", file=sys.stderr)
        return 2
    failures = 0
    for kind, (expected, got) in checks.items():
        ok = expected == got
        failures += not ok
        want = "accepted" if expected is None else f"error {expected}"
        have = "accepted" if got is None else f"error {got}"
        print(f"{'ok  ' if ok else 'FAIL'} {kind}: expected {want}, got {have}", flush=True)
    return 1 if failures else 0
