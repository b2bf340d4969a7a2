"""`pip install .` gives a working `gstratum` program that carries what it needs (schema, dashboard)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.integration


def test_pip_install_gives_a_working_gstratum_command(tmp_path):
    import shutil

    source = tmp_path / "source"     # setuptools builds inside the project folder: never in the checkout itself
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", ".gstratum", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"))
    target = tmp_path / "site"
    # --no-deps: the dependencies are the ones this venv already has (requirements.txt); what is checked here is
    # the package itself: its modules, data files and console script
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                             "--target", str(target), str(source)], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    installed = target / "gstratum"
    assert (installed / "storage" / "schema" / "001_schema.sql").is_file()
    assert (installed / "storage" / "schema" / "002_app_role.sql").is_file()
    assert (installed / "ops" / "static" / "index.html").is_file()
    script = target / "bin" / "gstratum"
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=60)
    assert out.returncode == 0 and "run the pool server" in out.stdout, out.stderr
    where = subprocess.run([sys.executable, "-c", "import gstratum, sys; print(gstratum.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert where.stdout.strip().startswith(str(target))          # the installed copy, not the source tree
