"""Stratum V2 over real sockets (issue 19): the Noise handshake against the pinned authority key, a channel opened
with its job, and bad input — a client that is not Noise, a failed AEAD tag, an oversized frame, an unknown message,
a message out of order — closing that one connection with a log line while a V1 and a V2 bystander are served."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from gstratum.client import StratumClient
from gstratum.protocol.sv2 import codec
from gstratum.protocol.sv2.keys import decode_authority_public_key
from gstratum.protocol.sv2.noise import NoiseInitiator

from .conftest import ROOT, free_port, wait_until

pytestmark = pytest.mark.integration


class RawV2:
    """A V2 connection built from the pure pieces: handshake, then frames as the test wants them."""

    def __init__(self, port: int, authority: bytes | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        initiator = NoiseInitiator(authority)
        self.sock.sendall(initiator.start())
        data = b""
        while not initiator.receive(data):
            chunk = self.sock.recv(4096)
            assert chunk, "closed during the handshake"
            data += chunk
        self.noise = initiator.connection()
        self.messages: list = []

    def send(self, message) -> None:
        self.sock.sendall(self.noise.encrypt(codec.encode_frame(message)))

    def read(self, count: int) -> list:
        while len(self.messages) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.messages += [codec.decode(frame) for frame in self.noise.feed(chunk)]
        return self.messages[:count]

    def closed(self) -> bool:
        try:
            self.sock.settimeout(10)
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def http_get(server, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}{path}", timeout=10) as response:
        return response.read().decode()


def metrics(server) -> str:
    return http_get(server, "/metrics")


def v2_server(start_server, tmp_path):
    key = tmp_path / "authority.key"
    sv2_port = free_port()
    server = start_server("--difficulty", "0.0001", "--notify-interval", "30", "--sv2-port", str(sv2_port),
                          "--sv2-authority-key", str(key))
    printed = subprocess.run([sys.executable, "-m", "gstratum", "sv2-key", "--sv2-authority-key", str(key)],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    return server, sv2_port, decode_authority_public_key(printed)


def test_a_pinned_handshake_a_channel_and_its_job(start_server, tmp_path):
    server, port, authority = v2_server(start_server, tmp_path)
    client = RawV2(port, authority)
    client.send(codec.SetupConnection(0, 2, 2, 0, "127.0.0.1", port, "test", "cpu", "1", "dev"))
    assert client.read(1) == [codec.SetupConnectionSuccess(2, 0)]
    client.send(codec.OpenStandardMiningChannel(7, "alice.v2", 1e6, b"\xff" * 32))
    success, job, prevhash = client.read(4)[1:]
    assert isinstance(success, codec.OpenStandardMiningChannelSuccess) and success.request_id == 7
    assert job.min_ntime is None and prevhash.job_id == job.job_id
    with server.miner("alice.v1"):                     # a V2 channel counts as a miner online, as a V1 one does
        assert wait_until(lambda: "gstratum_miners_subscribed 2.0" in metrics(server), timeout=10)
        assert json.loads(http_get(server, "/api/pool"))["miners_online"] == 2
    client.close()
    with pytest.raises(Exception):
        RawV2(port, b"\x02" * 32)                                      # another authority: the certificate is refused


def test_bad_input_closes_only_that_connection(start_server, tmp_path):
    server, port, authority = v2_server(start_server, tmp_path)
    with server.miner("bystander.v1") as v1:
        v2 = RawV2(port, authority)
        v2.send(codec.SetupConnection(0, 2, 2, 0, "127.0.0.1", port, "test", "cpu", "1", "dev"))
        v2.send(codec.OpenExtendedMiningChannel(1, "bystander.v2", 1e6, b"\xff" * 32, 2))
        v2.read(4)

        not_noise = socket.create_connection(("127.0.0.1", port), timeout=10)    # a V1 miner on the V2 port
        not_noise.sendall(b'{"id": 1, "method": "mining.subscribe", "params": ["cgminer/4.12"]}\n' * 2)
        assert not_noise.recv(100) == b""

        tampered = RawV2(port, authority)
        wire = bytearray(tampered.noise.encrypt(codec.encode_frame(
            codec.SetupConnection(0, 2, 2, 0, "", 0, "", "", "", ""))))
        wire[3] ^= 1                                                    # a failed AEAD tag
        tampered.sock.sendall(bytes(wire))
        assert tampered.closed()

        oversized = RawV2(port, authority)
        header = codec.FRAME_HEADER.pack(0, 0x00, 0xFFFF, 0x0F)          # announces ~1 MB: its header alone
        oversized.sock.sendall(oversized.noise._send.encrypt(header))   # (the pure encrypt refuses to lie)
        assert oversized.closed()

        unknown = RawV2(port, authority)
        unknown.sock.sendall(unknown.noise.encrypt(codec.FRAME_HEADER.pack(0x0001, 0x42, 1, 0) + b"\0"))
        assert unknown.closed()

        early = RawV2(port, authority)
        early.send(codec.OpenStandardMiningChannel(1, "x", 1.0, b"\xff" * 32))   # before SetupConnection
        assert early.closed()

        # the bystanders are still served
        assert v1.call("client.get_version", []).startswith("gstratum/")
        v2.send(codec.UpdateChannel(1, 2e6, b"\xff" * 32))
        assert isinstance(v2.read(5)[4], codec.SetTarget)
        v2.close()
    log = wait_until(server.log, lambda text: text.count("Stratum V2") >= 4 or "handshake failed" in text)
    for reason in ("BadTag", "FrameTooLarge", "UnknownMessage", "before SetupConnection", "handshake failed"):
        assert reason in log, reason
    assert "Traceback" not in log
