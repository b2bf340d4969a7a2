"""Operators: HTTP API, metrics, logs, statistics, operator commands, process tuning."""
