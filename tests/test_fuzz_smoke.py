"""A short run of the live fuzzer (scripts/fuzz_live.py): random and mutated traffic, a bystander served, no
traceback in the server log, memory bounded. Longer runs: `scripts/fuzz_live.py --seconds 600`."""
import json
import subprocess
import sys

from .conftest import ROOT

import pytest

pytestmark = pytest.mark.integration


def test_live_fuzz_smoke(server):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz_live.py"), "--port", str(server.port),
                             "--pid", str(server.proc.pid), "--log", str(server.log_path), "--seconds", "8"],
                            capture_output=True, text=True, timeout=120)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, (report, result.stderr[-2000:])
    assert report["rounds"] > 50 and report["failures"] == []
