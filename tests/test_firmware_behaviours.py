"""What the Bitaxe firmware (ESP-Miner) does on connect, played over a real socket: mining.configure before
subscribe, the whole handshake in one write, set_difficulty before the first job, a job in the first read after
subscribe + authorize, and its own resubmission of a share right after connecting answered with 22 (duplicate)."""
from __future__ import annotations

import socket
import time

import pytest
import ujson

from gstratum.client.miner import find_share
from gstratum.mining import bitcoin
from gstratum.mining.shares import HeaderTemplate

pytestmark = pytest.mark.integration


def read_lines(sock: socket.socket, until, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    buffer = b""
    messages: list[dict] = []
    while not until(messages):
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        data = sock.recv(65536)
        assert data, "closed"
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        messages += [ujson.loads(line) for line in lines if line.strip()]
    return messages


def test_the_firmware_handshake_in_one_write(start_server):
    server = start_server("--difficulty", "0.0001", "--notify-interval", "30", "--vardiff", "0")
    worker = f"bc1qbitaxe.rig{time.time_ns()}"
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        requests = [
            {"id": 1, "method": "mining.configure",
             "params": [["version-rolling"], {"version-rolling.mask": "ffffffff", "version-rolling.min-bit-count": 16}]},
            {"id": 2, "method": "mining.subscribe", "params": ["bitaxe/BM1370/v2.9.0"]},
            {"id": 3, "method": "mining.authorize", "params": [worker, "x"]},
            {"id": 4, "method": "mining.suggest_difficulty", "params": [0.0001]},
        ]
        sock.sendall(b"".join(ujson.dumps(r).encode() + b"\n" for r in requests))
        messages = read_lines(sock, lambda m: any(x.get("method") == "mining.notify" for x in m)
                              and any(x.get("id") == 4 for x in m))
        replies = {m["id"]: m for m in messages if m.get("id") is not None}
        assert replies[1]["result"]["version-rolling"] is True
        assert replies[1]["result"]["version-rolling.mask"] == "1fffe000"
        assert replies[3]["result"] is True and replies[4]["result"] is True
        methods = [m.get("method") for m in messages if m.get("method")]
        assert methods.index("mining.set_difficulty") < methods.index("mining.notify")
        subscribe = replies[2]["result"]
        extranonce1, size = bytes.fromhex(subscribe[1]), subscribe[2]
        job = [m for m in messages if m.get("method") == "mining.notify"][-1]["params"]
        difficulty = [m for m in messages if m.get("method") == "mining.set_difficulty"][-1]["params"][0]
        template = HeaderTemplate.from_stratum(job[1], job[2], job[3], job[4], job[5], job[6])
        en2 = bytes(size - 1) + b"\x01"
        nonce, _ = find_share(template, extranonce1, en2, job[7], int(job[5], 16),
                              bitcoin.target_from_difficulty(difficulty), max_tries=10_000_000)
        submit = {"id": 5, "method": "mining.submit", "params": [worker, job[0], en2.hex(), job[7], nonce]}
        # the firmware resends what it submitted just before a reconnect: the second copy is a duplicate
        sock.sendall((ujson.dumps(submit) + "\n" + ujson.dumps({**submit, "id": 6}) + "\n").encode())
        answers = {m["id"]: m for m in read_lines(sock, lambda m: sum(x.get("id") in (5, 6) for x in m) == 2)
                   if m.get("id") in (5, 6)}
        assert answers[5]["result"] is True
        assert answers[6]["error"][0] == 22
