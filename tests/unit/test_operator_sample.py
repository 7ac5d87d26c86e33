"""k8s/replayjob.yaml is generated from the operator's example; it must not drift."""

from __future__ import annotations

from pathlib import Path

import yaml

from hftpipe_operator import crd
from hftpipe_operator.spec import ReplayJob

SAMPLE = Path(__file__).resolve().parents[2] / "k8s" / "replayjob.yaml"


def test_sample_manifest_is_the_generated_example() -> None:
    assert SAMPLE.read_text() == crd.sample_yaml(), (
        "k8s/replayjob.yaml is stale: run 'make manifests'"
    )


def test_sample_manifest_parses_as_a_replayjob() -> None:
    body = yaml.safe_load(SAMPLE.read_text())
    job = ReplayJob.from_body(body)
    assert job.name == "btc"


def test_sample_reaches_the_services_the_kind_values_create() -> None:
    """The README's path: the stack chart with values-kind.yaml, then this sample.

    Strimzi names a cluster's client Service ``<cluster>-kafka-bootstrap``; the sample
    once named ``kafka:9092``, a Service nothing creates, so it could never run.
    """
    root = SAMPLE.parents[1]
    kind = yaml.safe_load((root / "charts" / "hftpipe-stack" / "values-kind.yaml").read_text())
    spec = yaml.safe_load(SAMPLE.read_text())["spec"]
    assert (
        spec["kafka"]["bootstrapServers"] == f"{kind['kafka']['clusterName']}-kafka-bootstrap:9092"
    )
    redis_host = spec["redis"]["url"].removeprefix("redis://").split(":")[0]
    assert redis_host == kind["redis"]["name"]
    assert spec["redis"]["credentials"]["secretRef"]["name"] == kind["redis"]["name"]
