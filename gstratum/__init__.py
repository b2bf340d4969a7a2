"""gstratum: a Stratum V1 mining pool server on gevent, recording what happens in PostgreSQL."""

__version__ = "0.2.0"
