"""Several Stratum ports from the config file, each with its own difficulty, and TLS ports (stratum+ssl) whose
certificate can be replaced while miners stay connected (issue 14)."""
from __future__ import annotations

import hashlib
import os
import select
import shutil
import socket
import ssl
import subprocess
import sys
import time

import pytest

from gstratum.client import StratumClient
from gstratum.client.work import mine

from .conftest import ROOT, free_port, wait_until

pytestmark = pytest.mark.integration
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")


def make_certificate(directory, name: str) -> tuple:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def client_context(cert) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    return context


def pool_file(tmp_path, tables: str, **settings) -> str:
    path = tmp_path / "pool.toml"
    extra = "".join(f"{key} = {value}\n" for key, value in settings.items())
    path.write_text(extra + tables)
    return str(path)


def peer_certificate_digest(port: int, context: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def test_each_port_sends_its_own_difficulty(start_server, tmp_path):
    small, rental = free_port(), free_port()
    config = pool_file(tmp_path, f"""
[[listen]]
host = "127.0.0.1"
port = {small}
difficulty = 1
[[listen]]
host = "127.0.0.1"
port = {rental}
difficulty = 65536
min_difficulty = 4096
""", max_difficulty=1e12)
    start_server("--config", config)
    for port, expected in ((small, 1), (rental, 65536)):
        with StratumClient("127.0.0.1", port) as client:
            client.subscribe()
            assert client.wait_for("mining.set_difficulty")["params"] == [expected]
    with StratumClient("127.0.0.1", rental) as client:      # the port's minimum bounds a suggestion
        client.call("mining.suggest_difficulty", [1])
        client.subscribe()
        assert client.wait_for("mining.set_difficulty")["params"] == [4096]


@needs_openssl
def test_a_tls_port_mines_shares_and_renews_its_certificate_without_a_restart(start_server, tmp_path):
    cert, key = make_certificate(tmp_path, "first")
    plain, secure = free_port(), free_port()
    config = pool_file(tmp_path, f"""
[[listen]]
host = "127.0.0.1"
port = {plain}
[[listen]]
host = "127.0.0.1"
port = {secure}
tls_cert = "{cert}"
tls_key = "{key}"
""", difficulty=0.00002)
    server = start_server("--config", config)
    assert "stratum+ssl listening" in server.log()
    first = peer_certificate_digest(secure, client_context(cert))
    with StratumClient("127.0.0.1", secure, tls=client_context(cert)) as miner:
        miner.subscribe()
        miner.authorize("tls.rig")
        report = mine(miner, "tls.rig", duration=30, max_shares=3)
        assert report.accepted == 3 and report.rejected_total == 0
        # the certificate is replaced on disk (as an ACME client renews it) while this miner stays connected
        new_cert, new_key = make_certificate(tmp_path, "second")
        os.replace(new_key, key)
        os.replace(new_cert, cert)
        renewed = wait_until(lambda: peer_certificate_digest(secure, client_context(cert)), lambda d: d != first)
        assert renewed != first
        assert miner.authorize("tls.rig") is True                  # the old session carries on
    assert "TLS certificate" in server.log() and "reloaded" in server.log()
    with StratumClient("127.0.0.1", plain) as other:                # the plain port is unaffected
        other.subscribe()


@needs_openssl
def test_openssl_s_client_speaks_stratum_over_tls(start_server, tmp_path):
    cert, key = make_certificate(tmp_path, "sclient")
    secure = free_port()
    config = pool_file(tmp_path, f'[[listen]]\nhost = "127.0.0.1"\nport = {secure}\ntls_cert = "{cert}"\n'
                                 f'tls_key = "{key}"\n')
    start_server("--config", config)
    proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{secure}", "-quiet", "-CAfile",
                             str(cert), "-verify_return_error"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        proc.stdin.write(b'{"id": 7, "method": "mining.subscribe", "params": ["s_client"]}\n')
        proc.stdin.flush()
        output = b""
        deadline = time.monotonic() + 15
        while b'"id":7' not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                output += os.read(proc.stdout.fileno(), 65536)
        assert b'"id":7' in output and b'"error":null' in output and b"mining.notify" in output, output
    finally:
        proc.kill()
        proc.wait(10)


@needs_openssl
def test_a_stalled_or_bad_handshake_costs_one_connection(start_server, tmp_path):
    cert, key = make_certificate(tmp_path, "stall")
    secure = free_port()
    config = pool_file(tmp_path, f'[[listen]]\nhost = "127.0.0.1"\nport = {secure}\ntls_cert = "{cert}"\n'
                                 f'tls_key = "{key}"\n')
    server = start_server("--config", config)
    stalled = socket.create_connection(("127.0.0.1", secure), timeout=5)      # connects, never says hello
    garbage = socket.create_connection(("127.0.0.1", secure), timeout=15)
    garbage.sendall(b"GET / HTTP/1.0\r\n\r\n")
    garbage.settimeout(15)
    try:
        assert garbage.recv(100) == b""                      # refused and closed
    except ConnectionResetError:
        pass
    with StratumClient("127.0.0.1", secure, tls=client_context(cert)) as miner:   # served meanwhile
        miner.subscribe()
        assert miner.authorize("beside.the.stall") is True
    stalled.close()
    garbage.close()
    assert "TLS handshake" in server.log()


def test_an_unreadable_certificate_stops_start_up_naming_it(schema, tmp_path):
    missing = tmp_path / "missing.crt"
    config = pool_file(tmp_path, f'[[listen]]\nhost = "127.0.0.1"\nport = {free_port()}\ntls_cert = "{missing}"\n'
                                 f'tls_key = "{missing}"\n', http_port=0, database_url=f'"{schema}"')
    result = subprocess.run([sys.executable, "-m", "gstratum", "run", "--config", config], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and str(missing) in output and "Traceback" not in output, output
    assert sum("start-up failed" in line for line in output.splitlines()) == 1
