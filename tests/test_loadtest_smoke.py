"""A short run of the load tool (scripts/loadtest.py) against a real server; the full runs live in the README."""
import json
import subprocess
import sys

from .conftest import ROOT

import pytest

pytestmark = pytest.mark.integration

TOOL = str(ROOT / "scripts" / "loadtest.py")


def test_loadtest_smoke(start_server, tmp_path):
    # no new block during the run: a share in flight when clean_jobs arrives is rightly stale (21)
    server = start_server("--difficulty", "0.000001", "--notify-interval", "1", "--clean-every", "1000")
    out = tmp_path / "report.json"
    result = subprocess.run([sys.executable, TOOL, "--port", str(server.port), "--miners", "200", "--procs", "2",
                             "--ramp", "400", "--duration", "4", "--share-rate", "0.5", "--configure",
                             "--src-ips", "2", "--json", str(out), "--server-pid", str(server.proc.pid)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["subscribed"] == 200 and report["handshakes"] == 200
    assert report["errors"] == 0 and report["drops"] == 0 and report["connect_failures"] == 0
    assert report["shares_accepted"] > 0 and report["shares_rejected"] == 0
    assert report["jobs_reaching_all"] >= 1
    assert report["handshake_ms"]["p99"] is not None and report["server_cpu_us_per_op"] > 0
    assert "| miners subscribed | 200 / 200 |" in result.stdout


def test_loadtest_refuses_non_loopback_targets():
    # 192.0.2.0/24 is TEST-NET-1: never reachable; the refusal must come before any connection attempt
    result = subprocess.run([sys.executable, TOOL, "--host", "192.0.2.1", "--miners", "1", "--duration", "1"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "not a loopback address" in result.stderr
