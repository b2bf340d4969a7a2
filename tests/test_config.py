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
