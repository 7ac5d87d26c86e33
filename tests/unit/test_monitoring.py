"""Alert rules and the Grafana dashboard of charts/hftpipe-stack against promtool and the code.

- ``promtool check rules`` and ``promtool test rules`` on the one rules file the
  chart embeds (promtool: Debian's ``prometheus`` package, ``make system-deps``);
- every alert has a firing and a non-firing promtool case, ``summary`` and
  ``description`` annotations and a ``severity`` label;
- every metric name in the rules and in every dashboard query is exported by the
  workers (:mod:`hftpipe_workers.observability`) or the operator
  (:mod:`hftpipe_operator.metrics`): names are read from their collectors and out
  of the PromQL by a tokenizer, never listed by hand;
- every dashboard panel queries the templated Prometheus data source, and every
  dashboard query is valid PromQL (promtool parses it as a recording rule).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from hftpipe_devstack import install
from hftpipe_operator import metrics as operator_metrics
from hftpipe_workers import observability

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "hftpipe-stack"
RULES = CHART / "files" / "prometheus-rules.yaml"
RULE_TESTS = CHART / "tests" / "prometheus-rules.test.yaml"
DASHBOARD = CHART / "files" / "dashboards" / "hftpipe.json"

DATASOURCE: Final = {"type": "prometheus", "uid": "${datasource}"}
"""What every panel and query names as its data source: the dashboard's variable."""

SEVERITIES: Final = frozenset({"info", "warning", "critical"})

# ------------------------------------------------------------ the code's metric names

# Sample-name suffixes of each metric type (OpenMetrics; prometheus_client exposes
# `_created` for counters, histograms and summaries).
_SUFFIXES: Final[dict[str, tuple[str, ...]]] = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}

METRIC_MODULES: Final[tuple[ModuleType, ...]] = (observability, operator_metrics)


def collectors(module: ModuleType) -> list[MetricWrapperBase]:
    """The metric objects a module defines (its module-level attributes)."""
    return [value for value in vars(module).values() if isinstance(value, MetricWrapperBase)]


def sample_names(collector: MetricWrapperBase) -> set[str]:
    """Every sample name ``collector`` can expose, series or not yet."""
    return {
        family.name + suffix for family in collector.collect() for suffix in _SUFFIXES[family.type]
    }


@cache
def exported_names() -> frozenset[str]:
    """Every sample name the workers and the operator export."""
    return frozenset(
        name for module in METRIC_MODULES for c in collectors(module) for name in sample_names(c)
    )


def test_metric_modules_define_metrics() -> None:
    for module in METRIC_MODULES:
        assert collectors(module), f"{module.__name__} defines no metrics"
    assert "hftpipe_records_in_total" in exported_names()
    assert "hftpipe_operator_jobs" in exported_names()


def test_workers_registry_holds_exactly_the_module_metrics() -> None:
    """observability says every worker metric is defined in it, in its own registry."""
    from_registry = {f.name for f in observability.REGISTRY.collect()}
    from_module = {f.name for c in collectors(observability) for f in c.collect()}
    assert from_registry == from_module


def test_suffix_table_matches_what_prometheus_client_exposes() -> None:
    """For metrics without labels (which expose samples right away), the table is exact."""
    unlabelled = [
        c for m in METRIC_MODULES for c in collectors(m) if not getattr(c, "_labelnames", ())
    ]
    assert unlabelled, "no metric without labels to check the suffix table against"
    for collector in unlabelled:
        exposed = {s.name for family in collector.collect() for s in family.samples}
        assert exposed == sample_names(collector), collector


# --------------------------------------------------------------------- PromQL names

_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    | (?P<variable>\$\{[^}]*\}|\$\w+)
    | (?P<duration>(?:\d+(?:ms|[smhdwy]))+)
    | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],@])
    """,
    re.VERBOSE,
)

# PromQL's reserved words (aggregation operators, their and the binary operators'
# modifiers, set operators): fixed by the language, not by our metrics.
_KEYWORDS: Final = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
        "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
        "and", "or", "unless", "atan2", "offset", "inf", "nan",
    }
)  # fmt: skip
_LABEL_LISTS: Final = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


def tokenize(expr: str) -> list[Token]:
    """PromQL tokens, whitespace dropped; raises on a character no token starts with."""
    tokens, pos = [], 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot tokenize {expr[pos : pos + 20]!r} in {expr!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(Token(kind, match.group()))
        pos = match.end()
    return tokens


def metric_names(expr: str) -> set[str]:
    """Metric names used by a PromQL expression.

    Skips string literals, Grafana variables, label names (inside ``{...}`` and the
    label lists of ``by``/``without``/``on``/``ignoring``/``group_*``), functions (an
    identifier followed by ``(``) and keywords.
    """
    tokens = tokenize(expr)
    names: set[str] = set()
    braces = 0
    skip_list = False  # inside a label list's parentheses
    for i, token in enumerate(tokens):
        following = tokens[i + 1].text if i + 1 < len(tokens) else ""
        if token.text == "{":
            braces += 1
        elif token.text == "}":
            braces -= 1
        elif skip_list:
            skip_list = token.text != ")"
        elif token.kind == "ident":
            lowered = token.text.lower()
            if lowered in _LABEL_LISTS and following == "(":
                skip_list = True
            elif braces or lowered in _KEYWORDS or following == "(":
                continue
            else:
                names.add(token.text)
    return names


def test_tokenizer_skips_labels_functions_keywords_and_strings() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, job) (rate(a_bucket{job=~"$job", x="b_c"}'
        "[$__rate_interval]))) > 2 and on (job) group_left (worker) "
        "max without (pod) (b offset 5m) unless count(c{d!~'e'}) == bool 1 or ${var} * inf"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}
    assert metric_names("absent(hftpipe_x)") == {"hftpipe_x"}
    assert metric_names("sum(rate(m[1h30m])) by (label)") == {"m"}


# ------------------------------------------------------------------------ the rules


def rule_groups() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    groups = data["groups"]
    assert isinstance(groups, list)
    return groups


def alerts() -> list[dict[str, Any]]:
    return [r for g in rule_groups() for r in g["rules"] if "alert" in r]


def promtool() -> str:
    try:
        return install.promtool()
    except install.InstallError as err:
        pytest.fail(f"promtool is needed to test the alert rules: {err}")


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, check=False, cwd=CHART
    )


def test_promtool_check_rules() -> None:
    proc = run_promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in proc.stdout


def test_promtool_test_rules() -> None:
    proc = run_promtool("test", "rules", str(RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_the_promtool_tests_use_the_charts_rules_file() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert [(RULE_TESTS.parent / f).resolve() for f in tests["rule_files"]] == [RULES.resolve()]


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    for alert in alerts():
        name = alert["alert"]
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c.get("exp_alerts") for c in mine), f"{name}: no promtool case where it fires"
        assert any(not c.get("exp_alerts") for c in mine), f"{name}: no case where it stays quiet"
    unknown = {c["alertname"] for c in cases} - {a["alert"] for a in alerts()}
    assert not unknown, f"promtool cases for alerts that do not exist: {unknown}"


def test_every_alert_has_summary_description_and_severity() -> None:
    assert alerts()
    for alert in alerts():
        name = alert["alert"]
        annotations = alert.get("annotations") or {}
        for key in ("summary", "description"):
            assert str(annotations.get(key, "")).strip(), f"{name}: no {key} annotation"
        severity = (alert.get("labels") or {}).get("severity")
        assert severity in SEVERITIES, f"{name}: severity {severity!r} not in {SEVERITIES}"


def test_job_alerts_read_the_operators_phase_of_the_job() -> None:
    """A failed job is named, and stalls count only while the operator says Running."""
    by_name = {a["alert"]: a["expr"] for a in alerts()}
    assert 'hftpipe_operator_job_phase{phase="Failed"}' in by_name["HftpipeReplayJobFailed"]
    for stall in ("HftpipeConsumerStalled", "HftpipeReplayStalled"):
        assert 'hftpipe_operator_job_phase{phase="Running"}' in by_name[stall], stall
        assert "on (namespace, job)" in by_name[stall], stall


def test_alert_names_are_unique() -> None:
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names))


def test_rules_use_only_exported_metrics() -> None:
    for group in rule_groups():
        for rule in group["rules"]:
            used = metric_names(rule["expr"])
            assert used, f"{rule.get('alert')}: no metric found in {rule['expr']!r}"
            unknown = used - exported_names()
            assert not unknown, (
                f"{group['name']}/{rule.get('alert') or rule.get('record')} uses {sorted(unknown)}"
                ", which no collector of hftpipe_workers.observability or "
                "hftpipe_operator.metrics exports"
            )


# -------------------------------------------------------------------- the dashboard


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included."""
    for panel in container.get("panels", []):
        yield panel
        yield from panels(panel)


def query_panels() -> list[dict[str, Any]]:
    return [p for p in panels(dashboard()) if p.get("type") != "row"]


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of every panel."""
    return [(p["title"], t["expr"]) for p in query_panels() for t in p.get("targets", [])]


_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<selector>.+),)?\s*(?P<label>\w+)\s*\)\s*$")


def variable_queries() -> list[tuple[str, str]]:
    """(variable, PromQL selector) of every query variable (``label_values(sel, label)``)."""
    out = []
    for var in dashboard()["templating"]["list"]:
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = _LABEL_VALUES.match(query)
        assert match, f"variable {var['name']}: unexpected query {query!r}"
        assert match["selector"], f"variable {var['name']}: label_values without a metric"
        out.append((var["name"], match["selector"]))
    return out


def test_dashboard_has_the_expected_panels() -> None:
    used = {name for _, expr in panel_queries() for name in metric_names(expr)}
    for needed in (
        "hftpipe_records_in_total",
        "hftpipe_records_out_total",
        "hftpipe_consumer_lag",
        "hftpipe_event_to_redis_seconds_bucket",
        "hftpipe_dead_letters_total",
        "hftpipe_operator_jobs",
        "hftpipe_latest_vwap",
    ):
        assert needed in used, f"no dashboard panel queries {needed}"
    quantiles = [e for _, e in panel_queries() if "hftpipe_event_to_redis_seconds_bucket" in e]
    assert all(e.startswith("histogram_quantile(") for e in quantiles)


def test_price_panel_plots_every_exported_close_gauge() -> None:
    """Every close-price gauge the workers export is plotted against the VWAP."""
    closes = {n for n in exported_names() if "close" in n}
    vwap_panels = [
        p for p in query_panels() if any("hftpipe_latest_vwap" in t["expr"] for t in p["targets"])
    ]
    assert vwap_panels
    assert "hftpipe_latest_close" in closes
    for close in closes:
        assert any(close in t["expr"] for p in vwap_panels for t in p["targets"]), (
            f"{close} is exported: plot it against the VWAP"
        )


def test_every_panel_queries_the_templated_prometheus_datasource() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    source = variables.get("datasource")
    assert source is not None, "the dashboard needs a `datasource` variable"
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    assert query_panels()
    for panel in query_panels():
        assert panel.get("datasource") == DATASOURCE, panel["title"]
        assert panel.get("targets"), f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE, var["name"]


def test_dashboard_queries_use_only_exported_metrics() -> None:
    for where, expr in [*panel_queries(), *variable_queries()]:
        used = metric_names(expr)
        assert used, f"{where}: no metric found in {expr!r}"
        unknown = used - exported_names()
        assert not unknown, f"dashboard {where!r} uses {sorted(unknown)}, which nothing exports"


def test_dashboard_panel_ids_are_unique() -> None:
    ids = [p["id"] for p in panels(dashboard())]
    assert len(ids) == len(set(ids))


# Grafana's variables, as Prometheus would see them after Grafana substitutes them.
_GRAFANA_VARIABLES: Final = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
}


def _as_promql(expr: str) -> str:
    for variable, value in _GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)  # dashboard variables are all regexes (=~)


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every query, written as a recording rule."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": _as_promql(expr)}
        for i, (_, expr) in enumerate([*panel_queries(), *variable_queries()])
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run_promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------- series that exist from the start


def _sample(registry: Any, name: str, labels: dict[str, str]) -> float | None:
    value = registry.get_sample_value(name, labels)
    return None if value is None else float(value)


def test_every_error_reason_in_the_code_is_declared_and_starts_at_zero() -> None:
    """``rate()``/``increase()`` see a first increment only from an existing series."""
    used: set[tuple[str, str]] = set()
    for path in (REPO / "workers/src/hftpipe_workers").glob("*.py"):
        for worker, reason in re.findall(
            r'ERRORS\.labels\(\s*"(\w+)",\s*self\.job,\s*"(\w+)"', path.read_text()
        ):
            used.add((worker, reason))
    declared = {(w, r) for w, reasons in observability.ERROR_REASONS.items() for r in reasons}
    assert used, "no ERRORS.labels(...) call found: the scan is broken"
    assert used <= declared, f"reasons missing from observability.ERROR_REASONS: {used - declared}"
    observability.declare_series("loader", "fresh-job", ("time",))
    registry = observability.REGISTRY
    labels = {"worker": "loader", "job": "fresh-job", "reason": "consume"}
    assert _sample(registry, "hftpipe_errors_total", labels) == 0.0
    labels = {"job": "fresh-job", "reason": "time"}
    assert _sample(registry, "hftpipe_dead_letters_total", labels) == 0.0


def test_every_rejected_row_kind_is_a_declared_dead_letter_reason() -> None:
    from hftpipe_workers import bars  # noqa: PLC0415
    from hftpipe_workers.csvformat import REJECT_KINDS  # noqa: PLC0415

    source = (REPO / "workers/src/hftpipe_workers/csvformat.py").read_text()
    literal = set(re.findall(r'kind = "(\w+)"', source))
    literal |= set(re.findall(r'text(?:_of\(\w+\))?,\s*"(\w+)",', source))
    literal |= set(re.findall(r'rejected_row\(\s*\w+,\s*"(\w+)",', source))
    codes = [*bars.NOT_FINITE, *bars.NOT_POSITIVE, bars.NEGATIVE_VOLUME, bars.HIGH_BELOW_LOW,
             bars.OPEN_OUTSIDE_RANGE, bars.CLOSE_OUTSIDE_RANGE]  # fmt: skip
    kinds = literal | {bars.reason_kind(c) for c in codes}
    assert {"fields", "time", "symbol", "duplicate_time", "time_backwards"} <= literal, literal
    assert kinds <= set(REJECT_KINDS), kinds - set(REJECT_KINDS)
    assert len(REJECT_KINDS) == len(set(REJECT_KINDS))


def test_operator_reconciliation_results_start_at_zero() -> None:
    from prometheus_client import REGISTRY  # noqa: PLC0415 - the operator's registry

    for result in ("success", "retry", "error"):
        value = _sample(REGISTRY, "hftpipe_operator_reconciliations_total", {"result": result})
        assert value is not None, f"no series for result={result}"
