"""The Grafana dashboard (etc/grafana/gstratum.json) queries only metrics a running server exports: a metric renamed
in gstratum/ops/metrics.py, or misspelled in the dashboard, fails here instead of leaving an empty panel."""
from __future__ import annotations

import json
import re
import urllib.request

from .conftest import ROOT

DASHBOARD = ROOT / "etc" / "grafana" / "gstratum.json"
# identifiers outside string literals that name one of our series (PromQL functions, keywords and label names
# never start with these prefixes)
METRIC = re.compile(r"(?<![A-Za-z0-9_:])((?:gstratum|process)_[A-Za-z0-9_:]*)")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
SAMPLE = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# what the dashboard is for: these series must keep a panel
REQUIRED = {"gstratum_miners_connected", "gstratum_miners_subscribed", "gstratum_accepted_difficulty_total",
            "gstratum_shares_total", "gstratum_notify_fanout_seconds_bucket", "gstratum_db_write_seconds_bucket",
            "gstratum_writer_queue_rows", "gstratum_journal_bytes", "gstratum_template_age_seconds",
            "gstratum_chain_height", "gstratum_node_up", "gstratum_blocks_submitted_total",
            "gstratum_blocks_found_total", "gstratum_getblocktemplate_seconds_bucket",
            "gstratum_miners_dropped_total", "gstratum_gc_pause_seconds_bucket", "process_cpu_seconds_total",
            "gstratum_blocks_pending", "gstratum_block_resubmissions_total",
            "process_resident_memory_bytes"}


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def expressions(dashboard: dict) -> list[str]:
    """Every PromQL the dashboard runs: panel targets and template variable queries."""
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if t.get("expr")]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        exprs.append(query.get("query", "") if isinstance(query, dict) else query or "")
    return exprs


def metric_names(expr: str) -> set[str]:
    return set(METRIC.findall(STRING.sub('""', expr)))


def balanced(expr: str) -> bool:
    """Brackets nest properly outside string literals (the cheap half of a PromQL syntax check)."""
    stack, pairs = [], {")": "(", "]": "[", "}": "{"}
    for char in STRING.sub('""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def exported(text: str) -> tuple[set[str], set[str]]:
    """(every series and family name in an exposition, the histogram families among them)."""
    names, histograms = set(), set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                histograms.add(name)
        elif line and not line.startswith("#"):
            names.add(SAMPLE.match(line).group())
    return names, histograms


def missing(exprs: list[str], text: str) -> set[str]:
    """The metric names used in `exprs` that the exposition `text` does not have."""
    names, histograms = exported(text)
    out = set()
    for name in set().union(*map(metric_names, exprs)):
        if name in names:
            continue
        base = next((name[:-len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), None)
        if base not in histograms:
            out.add(name)
    return out


def test_the_dashboard_is_an_importable_grafana_dashboard():
    dashboard = load()
    assert dashboard["schemaVersion"] >= 36
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    panels = dashboard["panels"]
    assert len(panels) >= 15
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        exprs = [t.get("expr") for t in panel.get("targets", [])]
        assert exprs and all(exprs), f"panel {panel['title']!r} has a target without an expr"
        assert all(metric_names(e) for e in exprs), f"panel {panel['title']!r} queries no gstratum metric"
        assert all(balanced(e) for e in exprs), f"panel {panel['title']!r}: unbalanced brackets in {exprs}"
    used = set().union(*map(metric_names, expressions(dashboard)))
    assert REQUIRED <= used, REQUIRED - used
    hashrate = [e for e in expressions(dashboard) if "gstratum_accepted_difficulty_total" in e]
    assert hashrate and all("rate(" in e and "* 4294967296" in e for e in hashrate), hashrate


def test_metric_names_are_read_from_promql():
    expr = ('histogram_quantile(0.99, sum by (le) (rate(gstratum_db_write_seconds_bucket{job=~"gstratum_x"}[5m])))'
            " / on(instance) process_open_fds + sum(gstratum_journal_bytes)")
    assert metric_names(expr) == {"gstratum_db_write_seconds_bucket", "process_open_fds", "gstratum_journal_bytes"}
    assert balanced(expr) and not balanced("sum(rate(gstratum_journal_bytes[5m])") and not balanced("x{a=\"(\"}]")


def test_every_metric_the_dashboard_queries_is_exported(start_server):
    server = start_server("--notify-interval", "30")
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    exprs = expressions(load())
    assert missing(exprs, text) == set()
    # the check itself: a misspelled name, a counter without its _total, a suffix on a non-histogram are caught
    assert missing(["rate(gstratum_no_such_metric[5m])"], text) == {"gstratum_no_such_metric"}
    assert missing(["rate(gstratum_shares[1m])"], text) == {"gstratum_shares"}
    assert missing(["gstratum_journal_bytes_count"], text) == {"gstratum_journal_bytes_count"}
    assert missing(['gstratum_build_info{version="x"}'], text) == set()
