"""Every Grafana panel of charts/hftpipe-stack shows data from a real Prometheus while a
real pipeline runs; every alert rule's expression is accepted by that Prometheus.

What runs, all of it real and local:

- Debian's ``prometheus``, scraping every second with a config generated here that
  labels each target as the PodMonitors of the operator and of the chart do in a
  cluster (``namespace``, ``pod``, ``container``, ``endpoint``, the ``podTargetLabels``
  and their ``job``, with ``honor_labels``), so a panel or rule that groups by a label
  that only exists in a cluster still finds it;
- ``hftpipe-operator`` against the stack's API server, reconciling a ReplayJob (no
  kubelet: its pods never start, so the job stays Pending), for the operator panels;
- ``hftpipe produce | process | load`` as the pods of that ReplayJob would run them
  (same job, same namespace), the producer paced over the shipped BTC sample into
  which bad rows of two kinds were written, so the dead-letter panel has data.

Panels are queried as Grafana's timeseries panels query them: ``query_range`` over
the run, the dashboard's variables resolved first with ``label_values`` as Grafana
does, and a panel has data when one of its series has a finite, non-zero point.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from kubernetes import client

from hftpipe_devstack import install
from hftpipe_devstack.procs import ProcessTable, free_port, tail
from hftpipe_devstack.testing import CLI, wait_for
from hftpipe_operator import crd, labels
from hftpipe_operator.naming import Names
from hftpipe_workers.contract import Topics, job_id
from hftpipe_workers.observability import ERROR_REASONS

REPO: Final = Path(__file__).resolve().parents[2]
CHART: Final = REPO / "charts" / "hftpipe-stack"
DASHBOARD: Final = CHART / "files" / "dashboards" / "hftpipe.json"
RULES: Final = CHART / "files" / "prometheus-rules.yaml"
SAMPLE: Final = REPO / "workers/src/hftpipe_workers/sample_data/btcusdt_1h_binance.csv.gz"
OPERATOR: Final = str(Path(sys.executable).parent / "hftpipe-operator")

SYMBOL: Final = "BTCUSDT"
RATE: Final = 2000
"""Bars per second: the sample's 55,765 bars take about 28 s."""
BAD_EVERY: Final = 4000
"""Every so many data rows one is bad, the kinds alternating: a kind every 4 s at RATE."""

SCRAPE_S: Final = 1
INTERVAL_S: Final = 5
"""Grafana's ``$__interval`` for the dashboard's default range (1 h) on a panel ~800
points wide: 3600 s / 800 = 4.5 s, which Grafana rounds to 5 s."""
RATE_INTERVAL_S: Final = max(INTERVAL_S + SCRAPE_S, 4 * SCRAPE_S)
"""Grafana's ``$__rate_interval`` when the data source's scrape interval is SCRAPE_S."""

OPERATOR_NAMESPACE: Final = "hftpipe-system"
RUN_DEADLINE_S: Final = 240.0

EXPECTED_GAPS: Final[Mapping[str, str]] = {
    # hftpipe_errors_total{worker, job, reason} exists from each worker's start at 0
    # (observability.declare_series) and nothing fails in this healthy run: the panel
    # shows flat zeros, one per declared reason of the three workers this run starts.
    "Worker errors per second, by reason [A]": (
        f"{sum(len(reasons) for reasons in ERROR_REASONS.values())} series, only 0 or NaN"
    ),
}
"""Panel queries (``title [refId]``) without data in this healthy run, and what they
show instead: the test fails when that changes, either way."""


# ------------------------------------------------------------------ Prometheus API


class PrometheusError(Exception):
    """Prometheus answered a request with ``status: error``."""


def prom_get(base: str, path: str, params: Mapping[str, str | list[str]]) -> Any:
    """``data`` of a Prometheus HTTP API answer; PrometheusError with its message if not."""
    url = f"{base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - 127.0.0.1
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            message = json.loads(text).get("error", text)
        except ValueError:
            message = text
        raise PrometheusError(f"HTTP {exc.code}: {message}") from exc
    if body.get("status") != "success":
        raise PrometheusError(str(body))
    return body["data"]


def instant(base: str, promql: str, at: float | None = None) -> list[dict[str, Any]]:
    params = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
    result: list[dict[str, Any]] = prom_get(base, "/api/v1/query", params)["result"]
    return result


def range_query(base: str, promql: str, start: float, end: float) -> list[dict[str, Any]]:
    params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "1"}
    result: list[dict[str, Any]] = prom_get(base, "/api/v1/query_range", params)["result"]
    return result


REBALANCE_REASONS: Final = frozenset({"lost_partition", "commit"})
"""``hftpipe_errors_total`` reasons a consumer-group rebalance causes (the processor
creating the metrics topic while the loader runs starts one): part of a healthy run
now and then, so their points do not count as data."""


def verdict(series: list[dict[str, Any]]) -> str:
    """``data`` if a series has a finite non-zero point, else what Grafana would draw."""
    if not series:
        return "no series"
    points = [
        float(value)
        for s in series
        if s["metric"].get("reason") not in REBALANCE_REASONS
        for _, value in s["values"]
    ]
    if any(math.isfinite(p) and p != 0 for p in points):
        return "data"
    return f"{len(series)} series, only 0 or NaN"


# ------------------------------------------------------------------ the dashboard


@dataclass(frozen=True)
class PanelQuery:
    key: str
    """``title [refId]``."""
    expr: str


def panel_queries() -> list[PanelQuery]:
    """Every target of every panel, rows' nested panels included."""
    dashboard = json.loads(DASHBOARD.read_text())
    out: list[PanelQuery] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                if not target.get("hide"):
                    out.append(PanelQuery(f"{panel['title']} [{target['refId']}]", target["expr"]))

    walk(dashboard["panels"])
    assert out, f"no panel query in {DASHBOARD}"
    return out


BUILTINS: Final[Mapping[str, str]] = {
    "__interval": f"{INTERVAL_S}s",
    "__interval_ms": str(INTERVAL_S * 1000),
    "__rate_interval": f"{RATE_INTERVAL_S}s",
    "__range": "3600s",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def substitute(expr: str, values: Mapping[str, list[str]]) -> str:
    """Grafana's interpolation: a variable's selected values as a regex alternation."""

    def one(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name in BUILTINS:
            return BUILTINS[name]
        if name not in values:
            raise AssertionError(f"{expr!r} uses ${name}, which this test does not resolve")
        chosen = values[name]
        return chosen[0] if len(chosen) == 1 else "(" + "|".join(chosen) + ")"

    return _VARIABLE.sub(one, expr)


_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$", re.S)


def resolve_variables(base: str, start: float, end: float) -> dict[str, list[str]]:
    """Each query variable's values, resolved in order as Grafana does (a variable may
    use the ones before it), with all values selected."""
    values: dict[str, list[str]] = {}
    for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if variable["type"] == "datasource":
            continue  # only ever in the targets' datasource uid
        assert variable["type"] == "query", f"variable {variable['name']}: unhandled type"
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        parsed = _LABEL_VALUES.match(text.strip())
        assert parsed, f"variable {variable['name']}: unhandled query {text!r}"
        selector = substitute(parsed["selector"].strip(), values)
        found: list[str] = prom_get(
            base,
            f"/api/v1/label/{parsed['label']}/values",
            {"match[]": [selector], "start": f"{start:.3f}", "end": f"{end:.3f}"},
        )
        values[variable["name"]] = sorted(found)
    return values


def alert_rules() -> list[tuple[str, str]]:
    """(name, expr) of every rule of the chart's rules file."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [(r.get("alert") or r["record"], r["expr"]) for g in groups for r in g["rules"]]
    assert rules, f"no rule in {RULES}"
    return rules


# ------------------------------------------------------------------ what runs


@dataclass(frozen=True)
class Target:
    """One scrape target and the labels its PodMonitor would give it."""

    name: str
    port: int
    labels: dict[str, str]


def _pod_label(key: str) -> str:
    """The label a PodMonitor's ``podTargetLabels`` makes of a pod label."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


@dataclass(frozen=True)
class Scene:
    namespace: str
    job: str
    workers: dict[str, Target]
    operator: Target
    web_port: int

    @property
    def job_id(self) -> str:
        return job_id(self.job, self.namespace)


@pytest.fixture(scope="module")
def scene() -> Scene:
    suffix = uuid.uuid4().hex[:6]
    namespace, job = f"dash-{suffix}", f"replay-{suffix}"
    names = Names(job)
    pods = {
        "producer": f"{names.producer}-x7k2p",  # a Job's pod
        "processor": f"{names.processor}-6d9f7c5b8-q4m2n",  # a Deployment's pods
        "loader": f"{names.loader}-7b8c9d6f5-h2j4k",
    }
    workers: dict[str, Target] = {
        worker: Target(
            worker,
            free_port(),
            {
                # As the operator's per-job PodMonitor (builders.build_workers_podmonitor)
                # labels its targets; the workers' own `job` label wins (honorLabels).
                "job": f"{namespace}/{names.pod_monitor}",
                "namespace": namespace,
                "pod": pods[worker],
                "container": worker,
                "endpoint": "metrics",
                _pod_label(labels.JOB): job,
                _pod_label(labels.COMPONENT): worker,
            },
        )
        for worker in labels.WORKERS
    }
    operator = Target(
        "operator",
        free_port(),
        {
            # As the chart's operator PodMonitor (release hftpipe-stack) labels it.
            "job": f"{OPERATOR_NAMESPACE}/hftpipe-stack-operator",
            "namespace": OPERATOR_NAMESPACE,
            "pod": "hftpipe-operator-5c6d7f8b9-w8x9z",
            "container": "operator",
            "endpoint": "metrics",
        },
    )
    return Scene(namespace, job, workers, operator, free_port())


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - 127.0.0.1
            return bool(response.status == 200)
    except OSError:
        return False


def prometheus_config(scene: Scene) -> dict[str, Any]:
    def scrape(name: str, targets: list[Target]) -> dict[str, Any]:
        return {
            "job_name": name,
            "honor_labels": True,
            "static_configs": [
                {"targets": [f"127.0.0.1:{t.port}"], "labels": t.labels} for t in targets
            ],
        }

    return {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "scrape_timeout": f"{SCRAPE_S}s"},
        "scrape_configs": [
            scrape(f"podMonitor/{scene.namespace}/workers", list(scene.workers.values())),
            scrape(f"podMonitor/{OPERATOR_NAMESPACE}/operator", [scene.operator]),
        ],
    }


@pytest.fixture(scope="module")
def prometheus(scene: Scene, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's Prometheus scraping the scene's targets; its base URL."""
    try:
        binary = install.require_tool(
            "prometheus",
            "Install Debian's prometheus package: apt-get install -y --no-install-recommends "
            "prometheus (or run: make system-deps).",
        )
    except install.InstallError as exc:
        pytest.fail(f"a real Prometheus is needed to query the dashboard: {exc}")
    root = tmp_path_factory.mktemp("prometheus")
    config = root / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(scene), sort_keys=False))
    table = ProcessTable(root / "state", tie_to_parent=True)
    base = f"http://127.0.0.1:{scene.web_port}"
    try:
        table.start(
            "prometheus",
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'tsdb'}",
                "--storage.tsdb.retention.time=1h",
                f"--web.listen-address=127.0.0.1:{scene.web_port}",
            ],
            ports=[scene.web_port],
        )
        table.wait_until(
            "prometheus", lambda: _http_ok(f"{base}/-/ready"), timeout=90, what="/-/ready"
        )
        yield base
    finally:
        table.stop_all(grace=10)


@pytest.fixture(scope="module")
def operator(
    scene: Scene,
    prometheus: str,
    api: client.ApiClient,
    kubeconfig: Path,
    crds_installed: list[dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProcessTable]:
    """``hftpipe-operator`` watching the scene's namespace, scraped by ``prometheus``."""
    client.CoreV1Api(api).create_namespace({"metadata": {"name": scene.namespace}})
    table = ProcessTable(tmp_path_factory.mktemp("operator"), tie_to_parent=True)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "KUBECONFIG": str(kubeconfig),
        "HFTPIPE_OPERATOR_NAMESPACES": scene.namespace,
        "HFTPIPE_OPERATOR_STATUS_INTERVAL": "1",
        "HFTPIPE_OPERATOR_METRICS_PORT": str(scene.operator.port),
    }
    try:
        table.start("operator", [OPERATOR], env=env, inherit_env=False)
        table.wait_until(
            "operator",
            lambda: _http_ok(f"http://127.0.0.1:{scene.operator.port}/metrics"),
            timeout=120,
            what="its /metrics",
        )
        yield table
    finally:
        table.stop_all(grace=15)


def replayjob(scene: Scene, kafka_bootstrap: str) -> dict[str, Any]:
    return {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "metadata": {"name": scene.job, "namespace": scene.namespace},
        "spec": {
            "source": {"url": str(SAMPLE), "symbol": SYMBOL},
            "pacing": {"rate": RATE},
            "kafka": {"bootstrapServers": kafka_bootstrap, "topic": {"partitions": 3}},
            "redis": {"url": "redis://127.0.0.1:6379/0"},
            "warehouse": {"duckdb": {"claimName": "warehouse"}},
        },
    }


def bars_with_bad_rows(path: Path) -> tuple[Path, int]:
    """The BTC sample, every BAD_EVERY-th row made bad: alternately a low above the
    high, and a high that is no number. Returns the file and the bad rows' count."""
    bad = 0
    with gzip.open(SAMPLE, "rt") as source, path.open("w") as out:
        out.write(next(source))
        for i, line in enumerate(source, start=1):
            if i % BAD_EVERY:
                out.write(line)
                continue
            fields = line.rstrip("\n").split(",")
            if (i // BAD_EVERY) % 2:
                fields[3] = str(float(fields[2]) + 1.0)  # low > high
            else:
                fields[2] = "n/a"  # high is not a number
            out.write(",".join(fields) + "\n")
            bad += 1
    return path, bad


@dataclass
class Run:
    prometheus: str
    scene: Scene
    start: float
    end: float
    bad_rows: int
    report: dict[str, Any]
    variables: dict[str, list[str]]
    verdicts: dict[str, str]
    """``title [refId]`` -> ``data``, or what the panel showed instead."""
    exprs: dict[str, str]
    """``title [refId]`` -> the query as sent, variables substituted."""


def _report(log: Path) -> dict[str, Any] | None:
    """The producer's final JSON report (the last line of its stdout, in its log)."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        with contextlib.suppress(ValueError):
            parsed = json.loads(line)
            if isinstance(parsed, dict) and "produced" in parsed:
                return parsed
    return None


@pytest.fixture(scope="module")
def run(
    scene: Scene,
    prometheus: str,
    operator: ProcessTable,
    api: client.ApiClient,
    stack_env: dict[str, str],
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Run]:
    """The ReplayJob reconciled and its workers run to the end, the panels' verdicts
    taken while they ran."""
    root = tmp_path_factory.mktemp("dashboard-run")
    source, bad_rows = bars_with_bad_rows(root / "bars.csv")
    operator_up = f'up{{pod="{scene.operator.labels["pod"]}"}} == 1'
    wait_for(
        lambda: (
            instant(prometheus, operator_up)
            and instant(prometheus, "hftpipe_operator_reconcile_duration_seconds_count")
        ),
        90,
        "Prometheus to scrape the operator before the ReplayJob exists",
        interval=0.5,
    )
    objects = client.CustomObjectsApi(api)
    start = time.time() - 1
    objects.create_namespaced_custom_object(
        crd.GROUP, crd.VERSION, scene.namespace, crd.PLURAL, replayjob(scene, kafka_bootstrap)
    )

    table = ProcessTable(root / "workers", tie_to_parent=True)
    env = {**stack_env, "HFTPIPE_NAMESPACE": scene.namespace, "HFTPIPE_JOB": scene.job}

    def port(worker: str) -> list[str]:
        return ["--metrics-port", str(scene.workers[worker].port)]

    queries = panel_queries()
    try:
        table.start(
            "producer",
            [*CLI, "produce", str(source), "--symbol", SYMBOL, f"--rate={RATE}", *port("producer")],
            env=env,
        )
        table.start("processor", [*CLI, "process", *port("processor")], env=env)
        # Ready once it has created the metrics topic. A loader started before that
        # counts a consume error (librdkafka: "Subscribed topic not available") in
        # hftpipe_errors_total, which would make the errors panel's content a race.
        processor = f"http://127.0.0.1:{scene.workers['processor'].port}/readyz"
        table.wait_until("processor", lambda: _http_ok(processor), timeout=90, what="/readyz")
        warehouse = f"duckdb:///{root / 'warehouse.duckdb'}"
        table.start("loader", [*CLI, "load", "--warehouse", warehouse, *port("loader")], env=env)
        variables = wait_for(
            lambda: (
                (v := resolve_variables(prometheus, start, time.time())) and all(v.values()) and v
            ),
            90,
            "every dashboard variable to have a value",
            interval=1,
        )
        exprs = {q.key: substitute(q.expr, variables) for q in queries}
        verdicts = dict.fromkeys(exprs, "not queried")
        topics = Topics.for_job(scene.job_id)

        def caught_up(n: int) -> str:
            """Non-empty once the processor and the loader have read n bars."""
            processor = f'worker="processor", job="{scene.job}"'
            loader = f'worker="loader", job="{scene.job}", topic="{topics.bars}"'
            return (
                f"sum(hftpipe_records_in_total{{{processor}}}) >= {n} and on () "
                f"sum(hftpipe_records_in_total{{{loader}}}) >= {n}"
            )

        report: dict[str, Any] | None = None
        deadline = time.monotonic() + RUN_DEADLINE_S
        while True:
            now = time.time()
            for key, expr in exprs.items():
                if verdicts[key] != "data":
                    verdicts[key] = verdict(range_query(prometheus, expr, start, now))
            code = table.exited("producer")
            if code is not None and report is None:
                log = table.log_dir / "producer.log"
                assert code == 0, f"the producer exited with {code}:\n{tail(log)}"
                report = _report(log)
                assert report is not None, f"no report from the producer:\n{tail(log)}"
            if report is not None and instant(prometheus, caught_up(report["produced"])):
                break  # the processor and the loader have every bar: the run is over
            for name in ("processor", "loader"):
                assert table.exited(name) is None, (
                    f"the {name} exited:\n{tail(table.log_dir / f'{name}.log')}"
                )
            if time.monotonic() > deadline:
                pending = {k: v for k, v in verdicts.items() if v != "data"}
                logs = "\n".join(
                    f"==> {n} <==\n{tail(table.log_dir / f'{n}.log', 15)}"
                    for n in ("producer", "processor", "loader")
                )
                raise AssertionError(
                    f"the run did not end within {RUN_DEADLINE_S:.0f} s; no data yet for "
                    f"{pending}\n{logs}"
                )
            time.sleep(1)
        end = time.time()
        # A last look over the whole run, now that every scrape of it is in.
        for key, expr in exprs.items():
            if verdicts[key] != "data":
                verdicts[key] = verdict(range_query(prometheus, expr, start, end))
        yield Run(prometheus, scene, start, end, bad_rows, report, variables, verdicts, exprs)
    finally:
        table.stop_all(grace=20)


# ------------------------------------------------------------------------- tests


def test_the_dashboard_variables_list_exactly_the_runs_values(run: Run) -> None:
    assert run.variables == {
        "namespace": [run.scene.namespace],
        "job": [run.scene.job],
        "symbol": [SYMBOL],
    }


def test_every_panel_query_has_data_while_the_pipeline_runs(run: Run) -> None:
    # The run did what the panels are about: bars through every stage, dead letters.
    assert run.report["dead_lettered"] == run.bad_rows > 0
    assert run.report["produced"] > 50_000
    gaps = {key: v for key, v in run.verdicts.items() if v != "data"}
    unexpected = {k: v for k, v in gaps.items() if EXPECTED_GAPS.get(k) != v}
    filled = sorted(set(EXPECTED_GAPS) - set(gaps))
    lines = [f"- {k}: {v}\n    {run.exprs[k]}" for k, v in sorted(unexpected.items())]
    lines += [f"- {k}: has data now; take it out of EXPECTED_GAPS" for k in filled]
    assert not lines, "panel queries without data:\n" + "\n".join(lines)


def test_every_alert_rule_expression_is_accepted_by_prometheus(run: Run) -> None:
    errors = []
    for name, expr in alert_rules():
        try:
            instant(run.prometheus, expr, at=run.end)
        except PrometheusError as exc:
            errors.append(f"- {name}: {exc}\n    {expr}")
    assert not errors, "rules Prometheus rejects:\n" + "\n".join(errors)


def test_worker_and_operator_series_join_on_namespace_and_job(run: Run) -> None:
    """The rules join the workers' series with hftpipe_operator_job_phase on
    (namespace, job): with the scrape labels of a cluster, they meet."""
    joined = range_query(
        run.prometheus,
        "max by (namespace, job) (hftpipe_ready) and on (namespace, job) "
        "max by (namespace, job) (hftpipe_operator_job_phase) == 1",
        run.start,
        run.end,
    )
    assert [s["metric"] for s in joined] == [
        {"namespace": run.scene.namespace, "job": run.scene.job}
    ]
