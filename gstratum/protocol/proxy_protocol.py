"""Sans-IO HAProxy PROXY protocol v1 and v2 header parser, so the miner's real address is what gets recorded
when gstratum runs behind a TCP load balancer (`--proxy-protocol`).

`parse(buffer)` returns None while more bytes are needed, or (source address or None, header length); anything
that is not a valid header raises ProxyHeaderError and the connection is closed (a connection that skips the load
balancer must not be able to claim an address).

A header is believed only from the balancers (`TrustedSources`, `--proxy-from`, loopback by default): anyone else
who can reach the port directly could send a well-formed header naming any source, and so escape the per-address
caps and have forged addresses recorded.
"""
from __future__ import annotations

import ipaddress
import struct
from typing import Iterable

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107
V2_FAMILIES = {0x11: (4, 4), 0x12: (4, 4), 0x21: (16, 16), 0x22: (16, 16)}  # TCP/UDP over IPv4/IPv6


class ProxyHeaderError(ValueError):
    pass


Address = tuple[str, int]


def parse(buffer: bytes) -> tuple[Address | None, int] | None:
    if buffer.startswith(V2_SIGNATURE[:min(len(buffer), 12)]) and (len(buffer) < 12 or buffer[:12] == V2_SIGNATURE):
        return _parse_v2(buffer) if len(buffer) >= 12 else None
    if b"PROXY "[:len(buffer)] == buffer[:6]:
        return _parse_v1(buffer) if len(buffer) >= 6 else None
    raise ProxyHeaderError("connection did not start with a PROXY protocol header")


def _parse_v1(buffer: bytes) -> tuple[Address | None, int] | None:
    end = buffer.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buffer) >= V1_MAX:
            raise ProxyHeaderError("PROXY v1 header longer than 107 bytes")
        return None
    try:
        parts = buffer[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 header is not ASCII") from None
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return None, end + 2
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("malformed PROXY v1 header")
    _, family, source, _dest, source_port, _dest_port = parts
    try:
        address = ipaddress.ip_address(source)
        port = int(source_port)
    except ValueError:
        raise ProxyHeaderError("bad address in PROXY v1 header") from None
    if (address.version == 4) != (family == "TCP4") or not 0 <= port <= 65535:
        raise ProxyHeaderError("inconsistent PROXY v1 header")
    return (str(address), port), end + 2


def _parse_v2(buffer: bytes) -> tuple[Address | None, int] | None:
    if len(buffer) < 16:
        return None
    version_command, family, length = buffer[12], buffer[13], struct.unpack("!H", buffer[14:16])[0]
    if version_command >> 4 != 2 or version_command & 0x0F not in (0, 1):
        raise ProxyHeaderError("unsupported PROXY v2 version or command")
    total = 16 + length
    if len(buffer) < total:
        return None
    if version_command & 0x0F == 0 or family not in V2_FAMILIES:   # LOCAL (health check) or unspecified family
        return None, total
    size, _ = V2_FAMILIES[family]
    if length < 2 * size + 4:
        raise ProxyHeaderError("PROXY v2 address block too short")
    body = buffer[16:total]
    source = ipaddress.ip_address(body[:size])
    port = struct.unpack("!H", body[2 * size:2 * size + 2])[0]
    return (str(source), port), total


class TrustedSources:
    """The networks whose connections may carry a PROXY header (CIDRs, or single addresses)."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(network, strict=False) for network in networks)

    def allows(self, host: str) -> bool:
        """Whether a TCP peer at `host` is one of ours (an IPv4 peer seen on a dual-stack socket as ::ffff:a.b.c.d
        counts as a.b.c.d)."""
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)
