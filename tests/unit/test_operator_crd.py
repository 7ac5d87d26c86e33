"""The ReplayJob CRD: structural, complete, and one source with the pydantic models.

The API server's own verdicts are in tests/integration/test_crd.py; here the
CRD is checked as data: every node typed, every status field declared, every
CEL rule naming fields that exist, and the CRD's defaults equal to pydantic's.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pytest
import yaml
from pydantic import ValidationError

from hftpipe_operator import crd, naming
from hftpipe_operator.apimodel import parse_timestamp
from hftpipe_operator.spec import (
    NAMED_TIME_FORMATS,
    Layout,
    ReplayJob,
    ReplayJobSpec,
    SaslMechanism,
)
from hftpipe_operator.status import ReplayJobStatus
from hftpipe_workers import cli
from hftpipe_workers.bars import parse_utc
from hftpipe_workers.csvformat import KNOWN_LAYOUTS, TIME_FORMATS
from hftpipe_workers.metrics import parse_window
from hftpipe_workers.settings import KafkaSettings, RedisSettings

CRD = crd.build_crd()
VERSION = CRD["spec"]["versions"][0]
ROOT = VERSION["schema"]["openAPIV3Schema"]
SPEC = ROOT["properties"]["spec"]
STATUS = ROOT["properties"]["status"]

MINIMAL: dict[str, Any] = {
    "source": {"url": "https://example.com/bars.csv.gz"},
    "kafka": {"bootstrapServers": "kafka:9092"},
    "redis": {"url": "redis://redis:6379/0"},
}


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _nodes(schema["items"], f"{path}[]")


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """The API server's structural defaulting, for plain JSON values."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for name, sub in schema["properties"].items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = apply_defaults(sub, out[name])
        return out
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], v) for v in value]
    return value


# ------------------------------------------------------------------ identity


def test_names_group_version_and_scope() -> None:
    assert CRD["metadata"]["name"] == "replayjobs.hftpipe.io"
    spec = CRD["spec"]
    assert spec["group"] == "hftpipe.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "ReplayJob"
    assert spec["names"]["plural"] == "replayjobs"
    assert spec["names"]["shortNames"] == ["rj"]
    assert [v["name"] for v in spec["versions"]] == ["v1alpha1"]
    assert VERSION["served"] is True
    assert VERSION["storage"] is True
    assert VERSION["subresources"] == {"status": {}}


def test_printer_columns_show_phase_progress_lag_and_age_from_declared_fields() -> None:
    columns = {c["name"]: c for c in VERSION["additionalPrinterColumns"]}
    assert [c["name"] for c in VERSION["additionalPrinterColumns"] if not c.get("priority")] == [
        "Phase",
        "Progress",
        "Lag",
        "Age",
    ]
    assert columns["Age"]["jsonPath"] == ".metadata.creationTimestamp"
    declared = {path for path, _ in _nodes(ROOT)}
    for column in columns.values():
        if column["jsonPath"].startswith(".status"):
            assert column["jsonPath"] in declared, column


def test_yaml_is_the_same_crd() -> None:
    text = crd.crd_yaml()
    assert text.startswith("# Generated")
    assert yaml.safe_load(text) == CRD


# --------------------------------------------------------------- structural


def test_every_node_is_typed_and_structural() -> None:
    for path, node in _nodes(ROOT):
        assert not {"$ref", "allOf", "oneOf", "not"} & set(node), path
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, (
            path
        )
        assert not ("properties" in node and "additionalProperties" in node), path
        if node["type"] == "array":
            assert "items" in node, path
        if node["type"] == "string" and path.startswith(".spec"):
            # CEL cost estimates need bounded strings.
            assert "maxLength" in node or "enum" in node, path


def test_only_raw_kubernetes_objects_and_kopf_keep_unknown_fields() -> None:
    preserved = [p for p, n in _nodes(ROOT) if n.get("x-kubernetes-preserve-unknown-fields")]
    volume = ".spec.source.volume.volumeSource"
    assert preserved == [
        f"{volume}.persistentVolumeClaim",
        f"{volume}.configMap",
        f"{volume}.nfs",
        f"{volume}.ephemeral",
        ".status.kopf",
    ]
    for path, node in _nodes(ROOT):
        if node.get("type") == "object" and path not in (*preserved, ".metadata"):
            assert node.get("properties") or node.get("additionalProperties"), path


def test_every_status_field_is_declared() -> None:
    props = STATUS["properties"]
    assert set(props) == {
        "phase",
        "conditions",
        "observedGeneration",
        "startTime",
        "completionTime",
        "restarts",
        "lastFailure",
        "progress",
        "source",
        "outputs",
        "kopf",
    }
    assert props["phase"]["enum"] == ["Pending", "Running", "Succeeded", "Failed", "Suspended"]
    condition = props["conditions"]["items"]
    assert set(condition["properties"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    assert props["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in condition["required"]
    assert {
        "rowsTotal",
        "rowsProduced",
        "rowsProcessed",
        "rowsLoaded",
        "lag",
        "percent",
        "etaSeconds",
        "rowsSetAside",
        "rowsOutOfRange",
    } <= set(props["progress"]["properties"])
    assert set(props["source"]["properties"]) == {
        "format",
        "layout",
        "time",
        "timeZone",
        "firstEventTime",
        "lastEventTime",
    }
    assert props["kopf"] == {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "description": props["kopf"]["description"],
    }
    assert all("default" not in node for _, node in _nodes(STATUS))


def test_timestamps_are_date_time_strings() -> None:
    for path in (
        ".spec.source.start",
        ".spec.source.end",
        ".status.startTime",
        ".status.source.firstEventTime",
        ".status.source.lastEventTime",
    ):
        node = dict(_nodes(ROOT))[path]
        assert node["type"] == "string"
        assert node["format"] == "date-time"


def test_no_field_can_hold_a_secret_value() -> None:
    secretish = re.compile(r"password|passphrase|privatekey|token|credential", re.IGNORECASE)
    for path, node in _nodes(SPEC, ".spec"):
        name = path.rsplit(".", 1)[-1]
        if secretish.search(name) and node.get("type") != "object":
            # Only the *name* of a key in a Secret, e.g. passwordKey.
            assert name.endswith("Key"), path
    assert "@" not in SPEC["properties"]["redis"]["properties"]["url"].get("default", "")


def test_required_fields() -> None:
    assert ROOT["required"] == ["spec"]
    assert SPEC["required"] == ["source", "kafka", "redis"]
    # One of url and urls (a rule: an OpenAPI schema cannot say "exactly one").
    source = SPEC["properties"]["source"]
    assert "required" not in source
    assert "has(self.url) != has(self.urls)" in [
        r["rule"] for r in source["x-kubernetes-validations"]
    ]


# ------------------------------------------------------------------ rules


def _rules() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for path, node in _nodes(ROOT):
        for rule in node.get("x-kubernetes-validations") or ():
            yield path, node, rule


def test_every_cel_rule_names_fields_that_exist() -> None:
    seen = 0
    for path, node, rule in _rules():
        seen += 1
        assert rule["message"], path
        for match in re.finditer(r"self((?:\.\w+)+)(\()?", rule["rule"]):
            parts = match.group(1).strip(".").split(".")
            if match.group(2):  # a method call: .contains(...), .matches(...)
                parts = parts[:-1]
            if parts[0] == "metadata":  # the root may read metadata.name, never declared
                continue
            target = node
            for part in parts:
                assert part in target.get("properties", {}), (path, rule["rule"], part)
                target = target["properties"][part]
        field_path = rule.get("fieldPath")
        if field_path:
            target = node
            for part in field_path.strip(".").split("."):
                target = target["properties"][part]
    assert seen >= 10


def test_name_rule_is_the_naming_pattern() -> None:
    (rule,) = ROOT["x-kubernetes-validations"]
    assert naming.JOB_NAME_PATTERN in rule["rule"]
    assert rule["message"].startswith("metadata.name")


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("btc", True),
        ("b", True),
        ("btc-2024", True),
        ("a" * naming.MAX_JOB_NAME_LENGTH, True),
        ("a" * (naming.MAX_JOB_NAME_LENGTH + 1), False),
        ("1btc", False),
        ("btc-", False),
        ("btc.usd", False),
        ("BTC", False),
    ],
)
def test_job_names(name: str, ok: bool) -> None:
    if ok:
        assert naming.check_name(name) == name
        assert all(len(f"{name}{s}") <= 63 for s in naming.SUFFIXES)
    else:
        with pytest.raises(ValueError, match=r"metadata\.name"):
            naming.check_name(name)


# --------------------------------------------------------- one source: defaults


@pytest.mark.parametrize(
    "spec",
    [
        MINIMAL,
        {
            **MINIMAL,
            "pacing": {"rate": 250},
            "warehouse": {
                "type": "snowflake",
                "snowflake": {
                    "secretRef": {"name": "sf", "passwordKey": "pw"},
                    "account": "org-acct",
                    "user": "loader",
                    "database": "MARKET",
                },
            },
        },
        {
            **MINIMAL,
            "kafka": {
                "strimziCluster": {"name": "kafka"},
                "credentials": {"secretRef": {"name": "user"}},
                "topic": {"partitions": 6},
            },
            "resources": {"processor": {"limits": {"cpu": 2}}},
            "processing": {"replicas": 6},
        },
    ],
    ids=["minimal", "snowflake", "strimzi"],
)
def test_crd_defaults_equal_pydantic_defaults(spec: dict[str, Any]) -> None:
    assert apply_defaults(SPEC, spec) == ReplayJobSpec.model_validate(spec).to_api()


def test_defaults_come_from_the_workers() -> None:
    spec = ReplayJobSpec.model_validate(MINIMAL)
    produce = inspect.signature(cli.produce).parameters
    assert spec.processing.windows == ["5m", "15m", "1h", "1d"]
    assert (
        ",".join(spec.processing.windows)
        == inspect.signature(cli.process).parameters["windows"].default
    )
    assert spec.kafka.topic.partitions == produce["partitions"].default
    assert spec.kafka.topic.replicas == produce["replication"].default
    assert spec.kafka.profile == KafkaSettings.model_fields["profile"].default
    assert spec.redis.history_limit == RedisSettings.model_fields["history_limit"].default


def test_enums_match_the_workers() -> None:
    assert set(get_args(Layout)) == {"auto", *KNOWN_LAYOUTS}
    assert NAMED_TIME_FORMATS == TIME_FORMATS
    mechanisms, _ = get_args(KafkaSettings.model_fields["sasl_mechanism"].annotation)
    assert get_args(SaslMechanism) == get_args(mechanisms)


@pytest.mark.parametrize("window", ["1s", "30s", "5m", "15m", "1h", "4h", "1d", "365d"])
def test_every_window_the_crd_accepts_the_processor_accepts(window: str) -> None:
    assert re.match(
        SPEC["properties"]["processing"]["properties"]["windows"]["items"]["pattern"], window
    )
    assert parse_window(window).label == window


def test_status_models_render_only_declared_fields() -> None:
    status = ReplayJobStatus.model_validate(
        {
            "phase": "Running",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "WorkersReady",
                    "message": "",
                    "lastTransitionTime": "2024-01-01T00:00:00Z",
                }
            ],
            "progress": {"rowsTotal": 10, "percent": "10.0%", "updatedAt": "2024-01-01T00:00:00Z"},
            "kopf": {"progress": {}},
            "somethingElse": 1,
        }
    )
    assert "somethingElse" not in status.to_api()
    assert set(status.to_api()) <= set(STATUS["properties"])


# ------------------------------------------------------- pydantic mirrors CEL


def _with(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    *parents, last = path.split(".")
    target = out
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value
    return out


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("pacing", {"speed": "60x", "rate": 10}, "exactly one of speed, rate or max"),
        ("pacing", {}, "exactly one of speed, rate or max"),
        ("pacing", {"max": False}, "exactly one of speed, rate or max"),
        ("pacing.rate", -5, "greater than 0"),
        ("pacing.speed", "fast", "pattern"),
        ("kafka.strimziCluster", {"name": "k"}, "exactly one of bootstrapServers or strimzi"),
        ("processing.replicas", 4, "processing.replicas must not exceed kafka.topic.partitions"),
        ("processing.windows", ["5m", "5x"], "pattern"),
        ("processing.windows", ["5m", "5m"], "duplicate"),
        ("redis.url", "redis://u:pw@redis:6379/0", "must not hold credentials"),
        ("source.start", "2024-02-01T00:00:00Z", None),
        ("warehouse.type", "snowflake", "needs the warehouse.snowflake section"),
        ("warehouse.type", "sqlite", "duckdb"),
        ("source.surprise", 1, "Extra inputs"),
        ("source.start", "2024-01-01 00:00:00", "RFC 3339"),
        ("source.volume", {"claimName": "bars"}, "under source.mountPath"),
        ("restartPolicy.backoffSeconds", 600, "must not exceed maxBackoffSeconds"),
        # Issue 11, point 8: the source's formats.
        ("source.timeFormat", "seconds", "source.timeFormat must be one of unix, unix_s"),
        ("source.columns", ["t", "open", "t"], "duplicate values ['t']"),
        ("source.columns", ["t", "a,b"], "pattern"),
        ("source.delimiter", ":", "'auto', ',', ';', 'tab' or 'pipe'"),
        ("source.timezone", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ("source.timezone", "New York", "pattern"),
        (
            "source",
            {"url": "x.csv", "mapping": "time=t:iso", "timeFormat": "unix"},
            "set source.timeFormat or the format in source.mapping's time entry",
        ),
        # Issue 11, point 5: many files.
        ("source", {}, "set source.url (a file, a directory or a glob) or source.urls"),
        ("source", {"url": "a.csv", "urls": ["b.csv"]}, "or source.urls (a list), one of them"),
        ("source.urls", ["a.csv", "a.csv"], "duplicate values ['a.csv']"),
        ("source.urls", [], "at least 1 item"),
        ("source.symbolFromFilename", "BTC-1m.csv", "pattern"),
        ("source.symbolFromFilename", "{symbol}-{symbol}.csv", "{symbol} once"),
        (
            "source",
            {"url": "x.csv", "symbol": "X", "symbolFromFilename": "{symbol}.csv"},
            "set source.symbol or source.symbolFromFilename, not both",
        ),
        (
            "source",
            {"urls": ["/data/a.csv", "/elsewhere/b.csv"], "volume": {"claimName": "bars"}},
            "with source.volume, each of source.urls must be under source.mountPath",
        ),
        (
            "source",
            {"urls": ["s3://b/a.csv", "https://h/b.csv"], "s3": {"region": "eu-west-1"}},
            "source.s3 is for s3:// source.urls",
        ),
        # Issue 11, point 6: bars built from trades.
        ("source.bars", "1 minute", "pattern"),
        (
            "source",
            {"url": "x.csv", "layout": "generic", "bars": "1m"},
            "source.bars builds bars from trades: the layout must be auto or trades",
        ),
        (
            "source",
            {"url": "x.csv", "mapping": "time=t:iso,open=o", "bars": "1m"},
            "source.bars builds bars from trades: a source.mapping with it names",
        ),
    ],
)
def test_pydantic_rejects_what_the_crd_rejects(path: str, value: Any, message: str | None) -> None:
    spec = _with(MINIMAL, path, value)
    if path == "source.start":  # and an end before it
        spec = _with(spec, "source.end", "2024-01-01T00:00:00Z")
    with pytest.raises(ValidationError) as error:
        ReplayJobSpec.model_validate(spec)
    if message:
        assert message in str(error.value)
    else:
        assert "source.start must be before source.end" in str(error.value)


def test_start_before_end_compares_instants_across_zones() -> None:
    ok = _with(
        _with(MINIMAL, "source.start", "2024-01-01T01:30:00+02:00"),
        "source.end",
        "2024-01-01T00:00:00Z",
    )
    ReplayJobSpec.model_validate(ok)  # 23:30Z < 00:00Z
    assert parse_timestamp("2024-01-01T00:00:00z").utcoffset() is not None


@pytest.mark.parametrize(
    "text",
    [
        "2024-01-01T00:00:00Z",
        "2024-01-01T01:00:00+01:00",
        "2024-01-01t00:00:00z",
        "2024-01-01T00:00:00.123456789Z",
    ],
)
def test_every_timestamp_accepted_is_the_same_instant_for_the_producer(text: str) -> None:
    since_epoch = parse_timestamp(text) - datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_utc(text) // 1000 == since_epoch // timedelta(microseconds=1)


def test_impossible_dates_are_rejected_with_the_value() -> None:
    with pytest.raises(ValueError, match="'2024-02-30T00:00:00Z' is not a valid date-time"):
        parse_timestamp("2024-02-30T00:00:00Z")


def test_replay_job_from_an_api_object() -> None:
    body = crd.example_replayjob("btc", "markets")
    job = ReplayJob.from_body(body)
    assert (job.name, job.namespace) == ("btc", "markets")
    assert job.spec.processing.replicas == 2
    with pytest.raises(ValueError, match=r"metadata\.name"):
        ReplayJob.from_body({**body, "metadata": {"name": "9lives", "namespace": "x"}})


def test_transition_rules_refuse_changes_of_the_jobs_data_and_nothing_else() -> None:
    """The pydantic side of the CRD's ``oldSelf`` rules (the API server's verdicts are in
    tests/integration/test_crd.py): what the operator refuses on an update that a CRD
    installed without those rules let through."""
    base = ReplayJobSpec.model_validate({**MINIMAL, "processing": {"windows": ["5m", "15m", "1h"]}})

    def refused(**changes: Any) -> list[str]:
        new = ReplayJobSpec.model_validate({**base.to_api(), **changes})
        return [m.split(" is immutable")[0] for m in ReplayJobSpec.transition_violations(base, new)]

    assert refused() == []
    assert refused(source={"url": "https://example.com/other.csv"}) == ["source"]
    assert refused(kafka={"bootstrapServers": "kafka:9092", "topic": {"partitions": 5}}) == [
        "kafka.topic.partitions"
    ]
    assert refused(processing={"windows": ["5m", "1h"]}) == ["processing.windows"]
    assert refused(processing={"windows": ["1h", "5m", "15m"], "replicas": 2}) == []
    assert refused(pacing={"rate": 100.0}, suspend=True) == []
    rules = {r["rule"] for r in SPEC["x-kubernetes-validations"]}
    assert "self.source == oldSelf.source" in rules


def test_windows_of_equal_length_are_refused() -> None:
    with pytest.raises(ValidationError, match="must all differ in length"):
        ReplayJobSpec.model_validate({**MINIMAL, "processing": {"windows": ["1d", "24h"]}})
    for windows in (["60s", "1m"], ["90m", "5400s"]):
        with pytest.raises(ValidationError, match="must all differ in length"):
            ReplayJobSpec.model_validate({**MINIMAL, "processing": {"windows": windows}})
    ReplayJobSpec.model_validate({**MINIMAL, "processing": {"windows": ["59m", "1h"]}})
