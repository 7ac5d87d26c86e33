"""The ReplayJob CRD against a real kube-apiserver 1.34: install, default, validate, status.

Every invalid ReplayJob here is also fed to ``ReplayJobSpec``: the API server
and pydantic must agree, since both are built from the same models.
"""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from hftpipe_devstack.testing import wait_for
from hftpipe_operator import builders, crd
from hftpipe_operator.spec import ReplayJob, ReplayJobSpec
from hftpipe_operator.status import (
    Observed,
    OffsetFacts,
    ProducerFacts,
    ReplayJobStatus,
    WorkerFacts,
    roll_up,
)

MINIMAL: dict[str, Any] = {
    "source": {"url": "https://example.com/bars.csv.gz"},
    "kafka": {"bootstrapServers": "kafka:9092", "topic": {"partitions": 2}},
    "redis": {"url": "redis://redis:6379/0"},
}
SNOWFLAKE: dict[str, Any] = {
    "secretRef": {"name": "sf", "passwordKey": "password"},
    "account": "org-acct",
    "user": "LOADER",
    "database": "MARKET",
}


@pytest.fixture(scope="module")
def installed(api: client.ApiClient) -> dict[str, Any]:
    """The CRD, installed (or replaced) and Established."""
    ext = client.ApiextensionsV1Api(api)
    body = crd.build_crd()
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = ext.read_custom_resource_definition(crd.NAME)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(crd.NAME, body)

    def established() -> bool:
        found = ext.read_custom_resource_definition(crd.NAME)
        return any(
            c.type == "Established" and c.status == "True" for c in (found.status.conditions or [])
        )

    wait_for(established, 30, "the ReplayJob CRD to be Established")
    # The CRD's REST endpoint can lag Established by a moment.
    objects = client.CustomObjectsApi(api)
    wait_for(
        lambda: _lists(objects),
        30,
        "the replayjobs endpoint to serve",
    )
    return body


def _lists(objects: client.CustomObjectsApi) -> bool:
    try:
        objects.list_cluster_custom_object(crd.GROUP, crd.VERSION, crd.PLURAL)
    except ApiException:
        return False
    return True


@pytest.fixture(scope="module")
def namespace(api: client.ApiClient, installed: dict[str, Any]) -> Iterator[str]:
    """A namespace of this module's own, under the ``restricted`` Pod Security Standard."""
    core = client.CoreV1Api(api)
    name = f"rj-{uuid.uuid4().hex[:8]}"
    core.create_namespace(
        {
            "metadata": {
                "name": name,
                "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
            }
        }
    )
    # Pods need the namespace's default ServiceAccount, which the controller-manager adds.
    wait_for(
        lambda: any(
            sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items
        ),
        30,
        "the namespace's default ServiceAccount",
    )
    yield name
    core.delete_namespace(name)


def _body(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


def _create(
    api: client.ApiClient, namespace: str, spec: dict[str, Any], name: str | None = None, **kw: Any
) -> dict[str, Any]:
    created: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        crd.GROUP,
        crd.VERSION,
        namespace,
        crd.PLURAL,
        _body(name or f"rj-{uuid.uuid4().hex[:8]}", spec),
        **kw,
    )
    return created


def _with(spec: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``spec`` with dotted paths set (``None`` deletes)."""
    out = copy.deepcopy(spec)
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = out
        for part in parents:
            target = target.setdefault(part, {})
        if value is None:
            target.pop(last, None)
        else:
            target[last] = value
    return out


# ------------------------------------------------------------------- accepted


def test_crd_is_established_with_status_subresource(
    api: client.ApiClient, installed: dict[str, Any]
) -> None:
    found = client.ApiextensionsV1Api(api).read_custom_resource_definition(crd.NAME)
    (version,) = found.spec.versions
    assert version.name == "v1alpha1"
    assert version.subresources.status is not None
    assert found.spec.names.short_names == ["rj"]
    assert found.status.accepted_names.kind == "ReplayJob"


def test_sample_is_accepted_and_defaulted_as_pydantic_defaults_it(
    api: client.ApiClient, namespace: str
) -> None:
    sample = crd.example_replayjob("sample", namespace)
    created = client.CustomObjectsApi(api).create_namespaced_custom_object(
        crd.GROUP, crd.VERSION, namespace, crd.PLURAL, sample
    )
    assert created["spec"] == ReplayJobSpec.model_validate(sample["spec"]).to_api()
    assert created["spec"]["warehouse"] == {
        "type": "duckdb",
        "duckdb": {"path": "hftpipe.duckdb", "size": "1Gi"},
    }
    assert created["spec"]["restartPolicy"]["maxRestarts"] == 3
    assert created["spec"]["processing"]["replicas"] == 2
    # What the API server stores, the builders take.
    job = ReplayJob.from_body(created)
    assert builders.build_producer_job(job)["spec"]["backoffLimit"] == 3


@pytest.mark.parametrize(
    "spec",
    [
        MINIMAL,
        _with(
            MINIMAL, pacing={"rate": 2500}, warehouse={"type": "snowflake", "snowflake": SNOWFLAKE}
        ),
        _with(
            MINIMAL,
            kafka={
                "strimziCluster": {"name": "events", "namespace": "kafka"},
                "credentials": {"secretRef": {"name": "user"}},
                "tls": {"caSecretRef": {"name": "events-cluster-ca-cert"}},
                "topic": {"partitions": 6, "replicas": 3},
            },
            processing={"replicas": 6, "windows": ["30s", "1h"]},
            resources={"processor": {"requests": {"cpu": 2}, "limits": {"memory": "2Gi"}}},
            source={
                "url": "/data/bars/btc.csv",
                "volume": {"volumeSource": {"nfs": {"server": "nas", "path": "/bars"}}},
                "start": "2021-01-01T00:00:00+01:00",
                "end": "2021-01-01T00:00:00Z",
            },
        ),
        _with(
            MINIMAL,
            source={
                "urls": ["/data/2024/", "/data/2025/*-1m-*.csv.gz"],
                "symbolFromFilename": "{symbol}-1m-*.csv.gz",
                "volume": {"claimName": "dumps"},
            },
        ),
    ],
    ids=["minimal", "snowflake-rate", "strimzi-everything", "many-files"],
)
def test_defaults_agree_with_pydantic(
    api: client.ApiClient, namespace: str, spec: dict[str, Any]
) -> None:
    created = _create(api, namespace, spec)
    assert created["spec"] == ReplayJobSpec.model_validate(spec).to_api()


# ------------------------------------------------------------------- rejected

INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "two-pacing-modes",
        _with(MINIMAL, pacing={"speed": "60x", "rate": 100}),
        "spec.pacing",
        "pacing needs exactly one of speed, rate or max: true",
    ),
    (
        "no-pacing-mode",
        _with(MINIMAL, pacing={"max": False}),
        "spec.pacing",
        "pacing needs exactly one of speed, rate or max: true",
    ),
    ("negative-rate", _with(MINIMAL, pacing={"rate": -5}), "spec.pacing.rate", "greater than 0"),
    ("bad-speed", _with(MINIMAL, pacing={"speed": "fast"}), "spec.pacing.speed", "should match"),
    (
        "replicas-over-partitions",
        _with(MINIMAL, processing={"replicas": 3}),
        "spec.processing.replicas",
        "processing.replicas must not exceed kafka.topic.partitions",
    ),
    (
        "bad-window",
        _with(MINIMAL, processing={"windows": ["5m", "5x"]}),
        "spec.processing.windows[1]",
        "should match",
    ),
    (
        "zero-window",
        _with(MINIMAL, processing={"windows": ["0m"]}),
        "spec.processing.windows[0]",
        "should match",
    ),
    (
        "duplicate-window",
        _with(MINIMAL, processing={"windows": ["5m", "5m"]}),
        "spec.processing.windows[1]",
        "Duplicate value",
    ),
    (
        "start-after-end",
        _with(
            MINIMAL,
            source={
                "url": "x.csv",
                "start": "2024-02-01T00:00:00Z",
                "end": "2024-01-01T00:00:00Z",
            },
        ),
        "spec.source.end",
        "source.start must be before source.end",
    ),
    (
        "start-equals-end",
        _with(
            MINIMAL,
            source={
                "url": "x.csv",
                "start": "2024-01-01T01:00:00+01:00",
                "end": "2024-01-01T00:00:00Z",
            },
        ),
        "spec.source.end",
        "source.start must be before source.end",
    ),
    (
        "s3-settings-for-an-https-source",
        _with(
            MINIMAL,
            source={"url": "https://example.com/x.csv", "s3": {"region": "eu-west-1"}},
        ),
        "spec.source.s3",
        "source.s3 is for an s3:// source.url",
    ),
    (
        "s3-endpoint-without-scheme",
        _with(
            MINIMAL,
            source={"url": "s3://bars/x.csv", "s3": {"endpointUrl": "minio:9000"}},
        ),
        "spec.source.s3.endpointUrl",
        "should match",
    ),
    (
        "timestamp-without-zone",
        _with(MINIMAL, source={"url": "x.csv", "start": "2024-01-01T00:00:00"}),
        "spec.source.start",
        "date-time",
    ),
    (
        "bad-warehouse-type",
        _with(MINIMAL, warehouse={"type": "sqlite"}),
        "spec.warehouse.type",
        'Unsupported value: "sqlite"',
    ),
    (
        "snowflake-without-section",
        _with(MINIMAL, warehouse={"type": "snowflake"}),
        "spec.warehouse.type",
        "warehouse.type snowflake needs the warehouse.snowflake section",
    ),
    (
        "snowflake-section-with-duckdb",
        _with(MINIMAL, warehouse={"type": "duckdb", "snowflake": SNOWFLAKE}),
        "spec.warehouse.snowflake",
        "warehouse.snowflake is only used with warehouse.type snowflake",
    ),
    (
        "snowflake-two-ways-to-authenticate",
        _with(
            MINIMAL,
            warehouse={
                "type": "snowflake",
                "snowflake": {
                    **SNOWFLAKE,
                    "secretRef": {"name": "sf", "passwordKey": "p", "privateKeyKey": "k"},
                },
            },
        ),
        "spec.warehouse.snowflake.secretRef",
        "needs exactly one of passwordKey or privateKeyKey",
    ),
    (
        "missing-source-url",
        _with(MINIMAL, source={"symbol": "BTC"}),
        "spec.source.url",
        "set source.url (a file, a directory or a glob) or source.urls (a list), one of them",
    ),
    ("missing-kafka", _with(MINIMAL, kafka=None), "spec.kafka", "Required value"),
    (
        "bootstrap-and-strimzi",
        _with(MINIMAL, kafka={"bootstrapServers": "k:9092", "strimziCluster": {"name": "k"}}),
        "spec.kafka",
        "kafka needs exactly one of bootstrapServers or strimziCluster",
    ),
    (
        "neither-bootstrap-nor-strimzi",
        _with(MINIMAL, kafka={"topic": {"partitions": 3}}),
        "spec.kafka",
        "kafka needs exactly one of bootstrapServers or strimziCluster",
    ),
    (
        "password-in-redis-url",
        _with(MINIMAL, redis={"url": "redis://default:hunter2@redis:6379/0"}),
        "spec.redis.url",
        "redis.url must not hold credentials",
    ),
    (
        "source-outside-its-volume",
        _with(MINIMAL, source={"url": "/elsewhere/x.csv", "volume": {"claimName": "bars"}}),
        "spec.source.url",
        "source.url must be under source.mountPath",
    ),
    (
        "volume-claim-and-source",
        _with(
            MINIMAL,
            source={
                "url": "/data/x.csv",
                "volume": {"claimName": "bars", "volumeSource": {"emptyDir": {}}},
            },
        ),
        "spec.source.volume",
        "exactly one of claimName or volumeSource",
    ),
    (
        "bad-quantity",
        _with(MINIMAL, resources={"loader": {"requests": {"memory": "lots"}}}),
        "spec.resources.loader.requests.memory",
        "should match",
    ),
    (
        "bad-pull-policy",
        _with(MINIMAL, images={"pullPolicy": "Sometimes"}),
        "spec.images.pullPolicy",
        "Unsupported value",
    ),
    (
        "zero-partitions",
        _with(MINIMAL, kafka={"bootstrapServers": "k:9092", "topic": {"partitions": 0}}),
        "spec.kafka.topic.partitions",
        "should be greater than or equal to 1",
    ),
    # Issue 10, point 11: a ReplayJob could mount the node's files or any Secret into
    # the producer (and echo it line by line to the dead-letter topic).
    (
        "host-path-source-volume",
        _with(
            MINIMAL,
            source={
                "url": "/data/passwd",
                "volume": {"volumeSource": {"hostPath": {"path": "/etc"}}},
            },
        ),
        "spec.source.volume.volumeSource",
        "needs exactly one of persistentVolumeClaim, configMap, nfs, csi or ephemeral",
    ),
    (
        "secret-source-volume",
        _with(
            MINIMAL,
            source={
                "url": "/data/token",
                "volume": {"volumeSource": {"secret": {"secretName": "x"}}},
            },
        ),
        "spec.source.volume.volumeSource",
        "needs exactly one of persistentVolumeClaim, configMap, nfs, csi or ephemeral",
    ),
    (
        "secrets-store-csi-source-volume",
        _with(
            MINIMAL,
            source={
                "url": "/data/x",
                "volume": {"volumeSource": {"csi": {"driver": "secrets-store.csi.k8s.io"}}},
            },
        ),
        "spec.source.volume.volumeSource.csi.driver",
        "the Secrets Store CSI driver mounts secrets",
    ),
    (
        # Issue 10, point 8: passed admission, then crash-looped the processor.
        "windows-of-equal-length",
        _with(MINIMAL, processing={"windows": ["60m", "5m", "1h"]}),
        "spec.processing.windows",
        "processing.windows must all differ in length",
    ),
    (
        "backoff-over-max",
        _with(MINIMAL, restartPolicy={"backoffSeconds": 600}),
        "spec.restartPolicy.backoffSeconds",
        "must not exceed maxBackoffSeconds",
    ),
    # Issue 11, point 8: the source's formats, each refused naming its field.
    (
        "unknown-time-format",
        _with(MINIMAL, source__timeFormat="seconds"),
        "spec.source.timeFormat",
        "source.timeFormat must be one of unix, unix_s, unix_ms, unix_us, unix_ns, iso",
    ),
    (
        "time-format-and-mapping",
        _with(MINIMAL, source__timeFormat="unix", source__mapping="time=t:iso"),
        "spec.source.timeFormat",
        "set source.timeFormat or the format in source.mapping's time entry",
    ),
    (
        "repeated-column",
        _with(MINIMAL, source__columns=["t", "open", "t"]),
        "spec.source.columns[2]",
        'Duplicate value: "t"',
    ),
    (
        "unknown-delimiter",
        _with(MINIMAL, source__delimiter=":"),
        "spec.source.delimiter",
        "Unsupported value",
    ),
    (
        "time-zone-with-a-space",
        _with(MINIMAL, source__timezone="New York"),
        "spec.source.timezone",
        "should match",
    ),
    # Issue 11, point 5: many files as one feed.
    (
        "url-and-urls",
        _with(MINIMAL, source__urls=["s3://b/2024/*.csv"]),
        "spec.source.url",
        "set source.url (a file, a directory or a glob) or source.urls (a list), one of them",
    ),
    (
        "symbol-pattern-twice",
        _with(MINIMAL, source__symbolFromFilename="{symbol}-{symbol}.csv"),
        "spec.source.symbolFromFilename",
        "source.symbolFromFilename must hold {symbol} once",
    ),
    (
        "symbol-and-pattern",
        _with(MINIMAL, source__symbol="X", source__symbolFromFilename="{symbol}.csv"),
        "spec.source.symbolFromFilename",
        "set source.symbol or source.symbolFromFilename, not both",
    ),
    (
        "urls-off-the-volume",
        _with(
            MINIMAL,
            source={"urls": ["/data/a.csv", "/etc/b.csv"], "volume": {"claimName": "bars"}},
        ),
        "spec.source.urls",
        "with source.volume, each of source.urls must be under source.mountPath",
    ),
    # Issue 11, point 6: bars are built from trades only.
    (
        "bars-from-a-layout-of-bars",
        _with(MINIMAL, source__layout="generic", source__bars="1m"),
        "spec.source.bars",
        "source.bars builds bars from trades: the layout must be auto or trades",
    ),
    (
        "bars-with-a-mapping-of-bars",
        _with(MINIMAL, source__mapping="time=t:iso,open=o", source__bars="1m"),
        "spec.source.bars",
        "source.bars builds bars from trades: a source.mapping with it names",
    ),
]


@pytest.mark.parametrize(
    ("spec", "field", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_replayjobs_are_rejected_naming_the_field(
    api: client.ApiClient, namespace: str, spec: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ApiException) as rejected:
        _create(api, namespace, spec)
    assert rejected.value.status == 422
    text = json.loads(rejected.value.body)["message"]
    assert f"{field}:" in text, text
    assert message in text, text
    with pytest.raises(ValidationError):
        ReplayJobSpec.model_validate(spec)


def _patch(api: client.ApiClient, namespace: str, name: str, spec: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        crd.GROUP, crd.VERSION, namespace, crd.PLURAL, name, {"spec": spec}
    )


IMMUTABLE: list[tuple[str, dict[str, Any], str, str]] = [
    ("source-url", {"source": {"url": "https://example.com/other.csv"}}, "spec.source", "source"),
    ("source-range", {"source": {"start": "2021-01-01T00:00:00Z"}}, "spec.source", "source"),
    (
        "partitions",
        {"kafka": {"topic": {"partitions": 3}}},
        "spec.kafka.topic.partitions",
        "kafka.topic.partitions",
    ),
    (
        "windows-set",
        {"processing": {"windows": ["5m", "1h"]}},
        "spec.processing.windows",
        "processing.windows",
    ),
]


@pytest.mark.parametrize(
    ("patch", "field", "named"), [c[1:] for c in IMMUTABLE], ids=[c[0] for c in IMMUTABLE]
)
def test_fields_that_define_the_jobs_data_are_immutable(
    api: client.ApiClient, namespace: str, patch: dict[str, Any], field: str, named: str
) -> None:
    """Issue 10, point 8: an edit of what a job's data is (its source, partitions, window
    set) is refused at admission with a message that names the field and says what to do,
    instead of splitting or skipping data in a running job."""
    spec = _with(MINIMAL, processing={"windows": ["5m", "15m", "1h"]})
    name = _create(api, namespace, spec)["metadata"]["name"]
    with pytest.raises(ApiException) as rejected:
        _patch(api, namespace, name, patch)
    assert rejected.value.status == 422
    text = json.loads(rejected.value.body)["message"]
    assert f"{field}:" in text, text
    assert f"{named} is immutable" in text, text
    assert "create a new ReplayJob" in text, text


def test_edits_of_how_a_job_runs_are_accepted(api: client.ApiClient, namespace: str) -> None:
    """Pacing, replicas, resources and suspend apply to a running job, and a window list
    in another order is the same set (list-type set: the API server compares as a set)."""
    spec = _with(MINIMAL, processing={"windows": ["5m", "15m", "1h"]})
    name = _create(api, namespace, spec)["metadata"]["name"]
    for patch in (
        {"pacing": {"max": None, "rate": 500.0}},
        {"processing": {"windows": ["1h", "5m", "15m"], "replicas": 2}},
        {"resources": {"processor": {"requests": {"cpu": "1"}}}},
        {"suspend": True},
    ):
        _patch(api, namespace, name, patch)


def test_a_name_that_cannot_name_topics_and_objects_is_rejected(
    api: client.ApiClient, namespace: str
) -> None:
    for name in ("1btc", "a" * 54):
        with pytest.raises(ApiException) as rejected:
            _create(api, namespace, MINIMAL, name=name)
        assert rejected.value.status == 422
        assert "metadata.name must be at most 53" in json.loads(rejected.value.body)["message"]
    assert _create(api, namespace, MINIMAL, name="a" * 53)["metadata"]["name"] == "a" * 53


def test_unknown_fields_are_rejected_when_strict_and_never_stored(
    api: client.ApiClient, namespace: str
) -> None:
    spec = _with(MINIMAL, source={"url": "x.csv", "surprise": 1})
    # Strict field validation (kubectl's default) rejects the request, naming the field;
    # the API server answers 400 (a decoding error), not 422.
    with pytest.raises(ApiException) as rejected:
        _create(api, namespace, spec, field_validation="Strict")
    assert rejected.value.status == 400
    assert 'unknown field "spec.source.surprise"' in json.loads(rejected.value.body)["message"]
    # Without it, the field is pruned: it never reaches the operator.
    assert "surprise" not in _create(api, namespace, spec)["spec"]["source"]
    with pytest.raises(ValidationError):
        ReplayJobSpec.model_validate(spec)


# --------------------------------------------------------------------- status


def _running_status(generation: int) -> ReplayJobStatus:
    spec = ReplayJobSpec.model_validate(MINIMAL)
    return roll_up(
        ReplayJob("x", "y", spec),
        Observed(
            now=datetime.now(UTC),
            generation=generation,
            producer=ProducerFacts(exists=True, active=1, rows_total=1000, rows_read=500),
            processor=WorkerFacts(exists=True, desired=1, ready=1, restarts=1),
            loader=WorkerFacts(exists=True, desired=1, ready=1),
            offsets=OffsetFacts(
                bars_end={0: 250, 1: 250},
                metrics_end={0: 200, 1: 200},
                processor={0: 200, 1: 200},
                loader_bars={0: 150, 1: 150},
                loader_metrics={0: 150, 1: 150},
            ),
        ),
    )


def test_status_subresource(api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    name = "status-test"
    created = _create(api, namespace, MINIMAL, name=name)
    generation = created["metadata"]["generation"]
    status = _running_status(generation)
    args = (crd.GROUP, crd.VERSION, namespace, crd.PLURAL, name)

    patched = objects.patch_namespaced_custom_object_status(*args, {"status": status.to_patch()})
    assert patched["status"] == status.to_api()
    assert patched["metadata"]["generation"] == generation  # status writes are not spec changes

    # kopf's bookkeeping survives (declared, not pruned), and later status patches keep it.
    objects.patch_namespaced_custom_object_status(
        *args, {"status": {"kopf": {"progress": {"create": {"retries": 1}}}}}
    )
    later = objects.patch_namespaced_custom_object_status(*args, {"status": status.to_patch()})
    assert later["status"]["kopf"] == {"progress": {"create": {"retries": 1}}}

    # The main endpoint ignores status; the status endpoint ignores spec.
    objects.patch_namespaced_custom_object(*args, {"status": {"phase": "Failed"}})
    objects.patch_namespaced_custom_object_status(
        *args, {"spec": {"suspend": True}, "status": {"restarts": 5}}
    )
    stored = objects.get_namespaced_custom_object(*args)
    assert stored["status"]["phase"] == "Running"
    assert stored["status"]["restarts"] == 5
    assert stored["spec"]["suspend"] is False
    assert ReplayJobStatus.model_validate(stored["status"]).progress == status.progress

    with pytest.raises(ApiException) as rejected:
        objects.patch_namespaced_custom_object_status(*args, {"status": {"phase": "Bogus"}})
    assert rejected.value.status == 422
    assert "status.phase" in json.loads(rejected.value.body)["message"]


def test_printer_columns(api: client.ApiClient, namespace: str, stack_env: dict[str, str]) -> None:
    objects = client.CustomObjectsApi(api)
    name = "columns"
    _create(api, namespace, MINIMAL, name=name)
    status = _running_status(1)
    objects.patch_namespaced_custom_object_status(
        crd.GROUP, crd.VERSION, namespace, crd.PLURAL, name, {"status": status.to_patch()}
    )
    out = subprocess.run(
        [
            stack_env["KUBECTL"],
            "--kubeconfig",
            stack_env["KUBECONFIG"],
            "get",
            "rj",
            name,
            "-n",
            namespace,
            "-o",
            "wide",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    header, row = out.strip().splitlines()
    assert header.split() == ["NAME", "PHASE", "PROGRESS", "LAG", "AGE", "ETA", "RESTARTS"]
    progress = status.progress
    assert progress is not None
    cells = row.split()
    assert cells[:4] == [name, "Running", progress.percent, str(progress.lag)]
    assert cells[-1] == "1"


# ------------------------------------------------------------ built objects


def test_built_objects_are_valid_and_pass_the_restricted_profile(
    api: client.ApiClient, namespace: str
) -> None:
    """Dry-run creates of every built object the API server knows, and of each worker's pod
    in a namespace that enforces the restricted Pod Security Standard."""
    spec = _with(
        MINIMAL,
        kafka={
            "bootstrapServers": "kafka:9093",
            "credentials": {"secretRef": {"name": "user"}},
            "tls": {"caSecretRef": {"name": "ca"}},
            "topic": {"partitions": 2},
        },
        source={"url": "/data/x.csv", "volume": {"claimName": "bars"}},
        redis={"url": "redis://redis:6379/0", "credentials": {"secretRef": {"name": "redis"}}},
    )
    job = ReplayJob("built", namespace, ReplayJobSpec.model_validate(spec))
    dry = {"dry_run": "All"}
    core, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
    create = {
        "ConfigMap": core.create_namespaced_config_map,
        "PersistentVolumeClaim": core.create_namespaced_persistent_volume_claim,
        "Service": core.create_namespaced_service,
        "Job": batch.create_namespaced_job,
        "Deployment": apps.create_namespaced_deployment,
    }
    skipped = []
    for obj in builders.build_all(job):
        if obj["kind"] not in create:
            skipped.append(obj["kind"])  # CRDs of other operators, not installed here
            continue
        create[obj["kind"]](namespace, obj, **dry)
    assert skipped == ["PodMonitor"]
    for workload in (
        builders.build_producer_job(job),
        builders.build_processor_deployment(job),
        builders.build_loader_deployment(job),
    ):
        template = workload["spec"]["template"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {**template["metadata"], "name": workload["metadata"]["name"]},
            "spec": template["spec"],
        }
        core.create_namespaced_pod(namespace, pod, **dry)

    # The namespace really enforces: the same pod without its security context is refused.
    loose = copy.deepcopy(pod)
    del loose["spec"]["containers"][0]["securityContext"]
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, loose, **dry)
    assert refused.value.status == 403
    assert "violates PodSecurity" in json.loads(refused.value.body)["message"]
