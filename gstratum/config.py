"""Typed, validated server configuration from the environment (GSTRATUM_*, DATABASE_URL) and CLI flags.

Precedence: command-line flag > environment variable > default. Every value is checked once here, so the rest of
the code can trust it; a bad value stops start-up with a ConfigError naming the setting.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path


class ConfigError(ValueError):
    """A setting has a value the server cannot run with."""


@dataclass(frozen=True)
class Config:
    host: str = "0.0.0.0"
    port: int = 3333
    database_url: str | None = None
    pgdata: Path = Path(".gstratum/pgdata")
    notify_interval: float = 30.0
    difficulty: float = 1.0
    min_difficulty: float = 1e-8
    max_difficulty: float = 2.0**40
    extranonce2_size: int = 4
    max_line: int = 16 * 1024
    max_connections: int = 20_000
    send_timeout: float = 10.0
    max_pending_output: int = 256 * 1024
    extranonce_block: int = 1000
    subscribe_wait: float = 5.0
    writer_batch: int = 5000
    writer_interval: float = 0.05
    writer_queue: int = 200_000
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        _check(0 <= self.port <= 65535, "port", "must be 0..65535")
        _check(self.notify_interval > 0, "notify_interval", "must be > 0")
        _check(1e-8 <= self.min_difficulty <= self.max_difficulty, "min_difficulty", "must be in [1e-8, max_difficulty]")
        _check(self.min_difficulty <= self.difficulty <= self.max_difficulty, "difficulty",
               "must be within [min_difficulty, max_difficulty]")
        _check(2 <= self.extranonce2_size <= 8, "extranonce2_size", "must be 2..8")
        _check(self.max_line >= 1024, "max_line", "must be >= 1024")
        _check(self.max_connections >= 1, "max_connections", "must be >= 1")
        _check(self.send_timeout > 0, "send_timeout", "must be > 0")
        _check(self.extranonce_block >= 1, "extranonce_block", "must be >= 1")
        _check(self.writer_batch >= 1 and self.writer_queue >= self.writer_batch, "writer_queue",
               "must be >= writer_batch >= 1")
        _check(self.database_url is None or self.database_url.startswith(("postgres://", "postgresql://")),
               "database_url", "must be a postgresql:// URL")


def _check(ok: bool, name: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"invalid setting {name}: {why}")




def _convert(name: str, kind, raw):
    converter = {"int": int, "float": float, "str": str, "Path": Path, "str | None": str}.get(str(kind), str)
    try:
        return converter(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid setting {name}: {raw!r} ({exc})") from None


def from_sources(flags: argparse.Namespace | None = None, env: dict | None = None) -> Config:
    """Build a Config: defaults, overridden by GSTRATUM_<NAME> / DATABASE_URL, overridden by non-None flags."""
    env = os.environ if env is None else env
    values = {}
    for field in fields(Config):
        env_name = "DATABASE_URL" if field.name == "database_url" else f"GSTRATUM_{field.name.upper()}"
        raw = getattr(flags, field.name, None) if flags is not None else None
        if raw is None:
            raw = env.get(env_name) or None
        if raw is not None:
            values[field.name] = _convert(field.name, field.type, raw)
    return Config(**values)


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """The `run` sub-command's flags; defaults stay None so the environment can fill them."""
    add = parser.add_argument
    add("--host", help="address to listen on (default 0.0.0.0)")
    add("--port", type=int, help="Stratum TCP port (default 3333)")
    add("--database-url", dest="database_url",
        help="postgresql:// URL; without it an embedded PostgreSQL is started in --pgdata")
    add("--pgdata", type=Path, help="data folder of the embedded PostgreSQL (default .gstratum/pgdata)")
    add("--notify-interval", dest="notify_interval", type=float, help="seconds between new jobs (default 30)")
    add("--difficulty", type=float, help="starting share difficulty of every miner (default 1)")
    add("--min-difficulty", dest="min_difficulty", type=float, help="lowest difficulty (default 1e-8)")
    add("--max-difficulty", dest="max_difficulty", type=float, help="highest difficulty")
    add("--max-connections", dest="max_connections", type=int, help="connection cap (default 20000)")
    add("--max-line", dest="max_line", type=int, help="longest accepted request line in bytes (default 16384)")
    add("--log-level", dest="log_level", help="DEBUG, INFO, WARNING (default INFO)")
