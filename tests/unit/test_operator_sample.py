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
