"""`python -m gstratum client --protocol v2`: the Noise handshake, SetupConnection, one channel as the Bitaxe
firmware opens it (standard: REQUIRES_STANDARD_JOBS; extended: flags 0, min_extranonce_size 2), every pool message
validated and printed; with --mine, the CPU miner on the channel's jobs, following a Reconnect."""
from __future__ import annotations

import argparse
import socket
import sys
import time

from gstratum.client.cli import outcome
from gstratum.client.sv2 import Channel, Sv2Client, Sv2ProtocolViolation, Sv2Rejected, parse_sv2_url
from gstratum.protocol.sv2 import codec
from gstratum.protocol.sv2.codec import SetupConnectionFlags
from gstratum.protocol.sv2.errors import KeyFormatError


def describe(message: codec.Message) -> str:
    """One line for a message: its name and fields, bytes as hex (long ones shortened)."""
    parts = []
    for name, _ in message.FIELDS:
        value = getattr(message, name)
        if isinstance(value, bytes):
            text = value.hex()
            value = text if len(text) <= 64 else f"{text[:24]}…{text[-8:]} ({len(value)} bytes)"
        elif isinstance(value, tuple):
            value = f"[{len(value)} entries]"
        parts.append(f"{name}={value}")
    return f"<- {message.NAME} " + " ".join(parts)


def _open(args: argparse.Namespace, host: str, port: int, key: bytes | str | None) -> tuple[Sv2Client, Channel]:
    client = Sv2Client.connect(host, port, timeout=args.timeout, authority_public_key=key,
                               firmware_limits=args.firmware_limits)
    try:
        certificate = client.certificate
        print(f"noise: handshake {client.times.noise * 1e3:.1f} ms ({client.times.noise_cpu * 1e3:.2f} ms CPU), "
              f"certificate valid {certificate.valid_from}..{certificate.not_valid_after}, "
              f"authority key {'pinned' if key else 'not pinned'}", flush=True)
        flags = SetupConnectionFlags.REQUIRES_STANDARD_JOBS if args.channel == "standard" else 0
        success = client.setup_connection(flags)
        print(f"setup: version {success.used_version} flags {success.flags:#x}", flush=True)
        if args.channel == "standard":
            channel = client.open_standard_channel(args.user, args.nominal_hashrate)
        else:
            channel = client.open_extended_channel(args.user, args.nominal_hashrate, min_extranonce_size=2)
        print(f"channel: {channel.kind} id={channel.channel_id} target={channel.target:064x} "
              f"extranonce_prefix={channel.extranonce_prefix.hex()} extranonce_size={channel.extranonce_size}",
              flush=True)
        return client, channel
    except BaseException:
        client.close()
        raise


def run_v2(args: argparse.Namespace) -> int:
    if not args.url:
        print("client: --protocol v2 needs --url host:port (the pool's --sv2-port)", file=sys.stderr)
        return 2
    try:
        host, port, url_key = parse_sv2_url(args.url)
    except (ValueError, KeyFormatError) as exc:
        print(f"client: {exc}", file=sys.stderr)
        return 2
    key = args.authority_pubkey or url_key

    def session() -> int | None:
        client, channel = _open(args, host, port, key)
        with client:
            if args.mine:
                return _mine(args, client, channel, key)
            deadline = time.monotonic() + args.duration
            while args.notifications == 0 or channel.jobs_received < args.notifications:
                left = deadline - time.monotonic()
                if left <= 0:
                    if args.notifications:
                        print(f"client: only {channel.jobs_received} of {args.notifications} jobs within "
                              f"{args.duration}s", file=sys.stderr)
                        return 1
                    break
                try:
                    print(describe(client.read_message(left)), flush=True)
                except socket.timeout:
                    continue

    return outcome(session, violations=(Sv2ProtocolViolation, KeyFormatError), refusals=(Sv2Rejected,))


def _mine(args: argparse.Namespace, client: Sv2Client, channel: Channel, key) -> int:
    from gstratum.client.sv2work import Sv2MiningReport, mine

    def show(share, outcome):
        verdict = "accepted" if outcome.accepted else f"REJECTED ({outcome.error_code})"
        extranonce = "" if share.extranonce is None else f" extranonce={share.extranonce.hex()}"
        print(f"share job={share.job_id} seq={share.sequence_number} nonce={share.nonce:08x} "
              f"version={share.version:08x}{extranonce}{' BLOCK' if share.block else ''} "
              f"in {outcome.round_trip * 1e3:.1f} ms: {verdict}", flush=True)

    total = Sv2MiningReport()
    deadline = time.monotonic() + args.duration
    while True:
        report = mine(client, channel, max(deadline - time.monotonic(), 0.0), on_result=show,
                      version_rolling=bool(args.version_rolling))
        for name in ("accepted", "hashes", "seconds", "submitted", "blocks", "unanswered"):
            setattr(total, name, getattr(total, name) + getattr(report, name))
        for code, count in report.rejected.items():
            total.rejected[code] = total.rejected.get(code, 0) + count
        total.round_trips += report.round_trips
        if report.stopped != "reconnect" or time.monotonic() >= deadline:
            break
        host, port = client.reconnect_target()
        print(f"reconnect -> {host}:{port}", flush=True)
        client.close()
        client, channel = _open(args, host, port, key)
    client.close()
    rate = total.hashes / total.seconds if total.seconds else 0.0
    trips = sorted(total.round_trips)
    median = f" round trip p50 {trips[len(trips) // 2] * 1e3:.1f} ms" if trips else ""
    print(f"accepted={total.accepted} rejected={total.rejected_total} {total.rejected or ''} blocks={total.blocks} "
          f"unanswered={total.unanswered} hashrate={rate / 1e3:.0f}kH/s over {total.seconds:.1f}s{median}"
          f"{' (' + report.stopped + ')' if report.stopped else ''}", flush=True)
    return 0 if total.accepted and not total.rejected_total and not total.unanswered else 1
