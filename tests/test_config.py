"""Configuration: flags over environment over defaults, and clear errors."""
import argparse

import pytest

from gstratum.config import Config, ConfigError, add_server_flags, from_sources


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_server_flags(parser)
    return parser.parse_args(argv)


def test_defaults():
    cfg = from_sources(parse(), env={})
    assert cfg.port == 3333 and cfg.host == "0.0.0.0" and cfg.notify_interval == 30 and cfg.database_url is None


def test_flag_beats_environment_beats_default():
    env = {"GSTRATUM_PORT": "4000", "GSTRATUM_DIFFICULTY": "0.5", "DATABASE_URL": "postgresql://u@h/d"}
    cfg = from_sources(parse("--port", "5000"), env=env)
    assert cfg.port == 5000 and cfg.difficulty == 0.5 and cfg.database_url == "postgresql://u@h/d"


@pytest.mark.parametrize("env, name", [
    ({"GSTRATUM_PORT": "seventy"}, "port"),
    ({"GSTRATUM_PORT": "70000"}, "port"),
    ({"GSTRATUM_DIFFICULTY": "0"}, "difficulty"),
    ({"GSTRATUM_NOTIFY_INTERVAL": "-1"}, "notify_interval"),
    ({"DATABASE_URL": "mysql://x"}, "database_url"),
    ({"GSTRATUM_NBITS": "xyz"}, "nbits"),
])
def test_bad_values_name_the_setting(env, name):
    with pytest.raises(ConfigError, match=name):
        from_sources(parse(), env=env)


def test_fractional_difficulty_is_not_clamped():
    assert Config(difficulty=1e-8).difficulty == 1e-8


# -- the TOML config file (issue 14) ----------------------------------------------------------------------------
import subprocess as _subprocess  # noqa: E402
import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

from gstratum import config as _config  # noqa: E402

_ROOT = _Path(__file__).resolve().parent.parent


def test_the_example_file_loads_and_keeps_its_values():
    cfg = _config.from_sources(None, env={"GSTRATUM_CONFIG": str(_ROOT / "etc" / "gstratum.example.toml")})
    assert cfg.port == 3333 and cfg.notify_interval == 30.0 and cfg.solo == 0 and cfg.vardiff == 1
    assert cfg.min_difficulty == 1e-10 and cfg.journal_dir == _Path(".gstratum/journal")


def test_precedence_flags_over_environment_over_file_over_defaults(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('notify_interval = 7\ndifficulty = 2.5\nbitcoind = ["http://a:1", "http://b:2"]\n'
                    'payout_address = "bcrt1q"\n')
    flags = type("Flags", (), {"config": path, "difficulty": 4.0})()
    cfg = _config.from_sources(flags, env={"GSTRATUM_NOTIFY_INTERVAL": "9"})
    assert cfg.difficulty == 4.0                   # flag
    assert cfg.notify_interval == 9.0              # environment over file
    assert cfg.bitcoind == ("http://a:1", "http://b:2") and cfg.max_line == 16384   # file, default
    masked = _config.effective(cfg)
    assert masked["bitcoind"] == ["***", "***"] and masked["notify_interval"] == 9.0


def test_bad_files_name_the_file_the_key_and_the_reason(tmp_path):
    import pytest

    cases = {'notify_intervall = 3\n': "unknown key 'notify_intervall'",
             'port = "3333"\n': "port must be an integer",
             'port = true\n': "port must be an integer",
             'port = 99999\n': "invalid setting port",
             'port = \n': "not valid TOML"}
    for text, fragment in cases.items():
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(_config.ConfigError) as info:
            _config.from_sources(None, env={"GSTRATUM_CONFIG": str(path)})
        assert str(path) in str(info.value) and fragment in str(info.value), (text, info.value)


def test_a_server_runs_from_the_file_alone(schema, tmp_path):
    from gstratum.client import StratumClient

    from .conftest import free_port, new_cluster_name, wait_until

    port = free_port()
    path = tmp_path / "pool.toml"
    path.write_text(f'host = "127.0.0.1"\nport = {port}\nhttp_port = 0\ndatabase_url = "{schema}"\n'
                    f'cluster = "{new_cluster_name()}"\njournal_dir = "{tmp_path / "journal"}"\n'
                    f'difficulty = 0.5\nnotify_interval = 60\n')
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = _subprocess.Popen([_sys.executable, "-m", "gstratum", "run", "--config", str(path)], cwd=_ROOT,
                                 stdout=out, stderr=_subprocess.STDOUT)
    try:
        assert "stratum listening" in wait_until(log.read_text, lambda t: "stratum listening" in t, timeout=30)
        with StratumClient("127.0.0.1", port) as client:
            client.subscribe()
            assert client.wait_for("mining.set_difficulty")["params"] == [0.5]
    finally:
        proc.terminate()
        proc.wait(30)


def test_proxy_from_defaults_to_loopback_and_comes_from_flags_environment_or_file(tmp_path):
    assert from_sources(parse(), env={}).proxy_from == ("127.0.0.0/8", "::1/128")
    cfg = from_sources(parse("--proxy-from", "10.0.0.0/24", "--proxy-from", "192.0.2.7"), env={})
    assert cfg.proxy_from == ("10.0.0.0/24", "192.0.2.7")
    assert from_sources(parse(), env={"GSTRATUM_PROXY_FROM": "10.1.0.0/16, fd00::/8"}).proxy_from == (
        "10.1.0.0/16", "fd00::/8")
    path = tmp_path / "p.toml"
    path.write_text('proxy_protocol = true\nproxy_from = ["10.2.0.0/16"]\n')
    cfg = from_sources(parse("--config", str(path)), env={})
    assert cfg.proxy_protocol == 1 and cfg.proxy_from == ("10.2.0.0/16",)
    with pytest.raises(ConfigError, match="proxy_from"):
        from_sources(parse("--proxy-from", "10.0.0.0/33"), env={})
    path.write_text('proxy_protocol = true\nproxy_from = []\n')
    with pytest.raises(ConfigError, match="proxy_from"):
        from_sources(parse("--config", str(path)), env={})


def test_secrets_travel_as_environment_variables():
    cfg = Config(database_url="postgresql://u:pw@h/d", bitcoind=("http://a:pw@n1:8332", "http://n2:8332"),
                 payout_address="bcrt1qdavt4j2sd7dlhqsavtnfxvzppw6k7qy97tmnu9", admin_token="t0ken")
    env = _config.secret_environment(cfg)
    assert env == {"DATABASE_URL": "postgresql://u:pw@h/d", "GSTRATUM_BITCOIND": "http://a:pw@n1:8332,http://n2:8332",
                   "GSTRATUM_ADMIN_TOKEN": "t0ken"}
    back = from_sources(parse(), env=dict(env, GSTRATUM_PAYOUT_ADDRESS=cfg.payout_address))   # read back the same
    assert back.bitcoind == cfg.bitcoind and back.database_url == cfg.database_url
