"""skaffold.yaml and kind-config.yaml, validated against the tools' own published APIs.

skaffold.yaml against the JSON schema skaffold ships for its newest config
version, and kind-config.yaml by ``kindcheck``, which decodes it strictly into
kind's ``v1alpha4.Cluster`` type. Both artefacts are fetched and cached (by
version) by ``python -m hftpipe_devstack install``, which ``make test`` runs
before pytest; this tier only reads the cache, so it needs no network.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from hftpipe_devstack import thirdparty, versions
from hftpipe_devstack.install import InstallError

REPO = Path(__file__).resolve().parents[2]
SKAFFOLD_YAML = REPO / "skaffold.yaml"
KIND_CONFIG = REPO / "kind-config.yaml"


@pytest.fixture(scope="module")
def skaffold_schema() -> tuple[str, dict[str, Any]]:
    """``(newest apiVersion, its JSON schema)`` from the cache."""
    try:
        return thirdparty.skaffold_schema()
    except InstallError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def kindcheck() -> Path:
    """The kindcheck binary from the cache."""
    try:
        return thirdparty.kindcheck()
    except InstallError as exc:
        pytest.fail(str(exc))


def _skaffold_docs() -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(SKAFFOLD_YAML.read_text()) if d is not None]
    assert docs, f"{SKAFFOLD_YAML} holds no YAML document"
    return docs


def _errors(schema: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    out = []
    for error in validator.iter_errors(doc):
        # The root is anyOf[SkaffoldConfig]: its sub-errors say what is wrong where.
        for leaf in error.context or [error]:
            where = "/".join(str(p) for p in leaf.absolute_path) or "<root>"
            out.append(f"{where}: {leaf.message}")
    return out


# ------------------------------------------------------------------------ skaffold


def test_skaffold_schema_is_the_newest_config_version_of_the_pinned_skaffold(
    skaffold_schema: tuple[str, dict[str, Any]],
) -> None:
    api_version, schema = skaffold_schema
    assert api_version.startswith("skaffold/v")
    assert "SkaffoldConfig" in schema["definitions"]
    # The schema must refuse what skaffold refuses, or validating proves nothing.
    assert schema["definitions"]["SkaffoldConfig"]["additionalProperties"] is False


def test_every_skaffold_document_validates_against_skaffolds_schema(
    skaffold_schema: tuple[str, dict[str, Any]],
) -> None:
    api_version, schema = skaffold_schema
    problems = {
        f"document {i} ({doc.get('metadata', {}).get('name', '?')})": _errors(schema, doc)
        for i, doc in enumerate(_skaffold_docs())
    }
    problems = {doc: errors for doc, errors in problems.items() if errors}
    assert not problems, f"skaffold.yaml is not a valid {api_version} config: {problems}"


def test_skaffold_yaml_is_written_in_the_newest_config_version(
    skaffold_schema: tuple[str, dict[str, Any]],
) -> None:
    api_version, _ = skaffold_schema
    for doc in _skaffold_docs():
        assert doc.get("apiVersion") == api_version, (
            f"skaffold.yaml says apiVersion {doc.get('apiVersion')!r}; skaffold "
            f"{versions.SKAFFOLD}'s newest is {api_version!r} (upgrade it: skaffold fix)"
        )


def test_the_skaffold_schema_catches_a_typo(skaffold_schema: tuple[str, dict[str, Any]]) -> None:
    api_version, schema = skaffold_schema
    doc = {"apiVersion": api_version, "kind": "Config", "biuld": {"artifacts": []}}
    assert any("biuld" in e for e in _errors(schema, doc))


# ---------------------------------------------------------------------------- kind


def _kindcheck(binary: Path, text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), "-"], input=text, capture_output=True, text=True, check=False
    )


def test_kindcheck_is_built_against_the_pinned_kind(kindcheck: Path) -> None:
    out = subprocess.run([str(kindcheck), "-version"], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["sigs.k8s.io/kind", f"v{versions.KIND}"]


def test_kind_config_is_a_valid_kind_cluster_config(kindcheck: Path) -> None:
    proc = subprocess.run(
        [str(kindcheck), str(KIND_CONFIG)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == f"{KIND_CONFIG}: valid"


MINIMAL_KIND_CONFIG = """\
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    extraPortMappings:
      - containerPort: 30300
        hostPort: 3000
"""


def test_kindcheck_rejects_the_kind_config_with_a_misspelt_field(kindcheck: Path) -> None:
    config = yaml.safe_load(KIND_CONFIG.read_text())
    config["nodse"] = config.pop("nodes", [])
    proc = _kindcheck(kindcheck, yaml.safe_dump(config))
    assert proc.returncode == 1
    assert "field nodse not found in type v1alpha4.Cluster" in proc.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("extraPortMappings:", "extraPortMapping:"), "field extraPortMapping not found"),
        (("containerPort: 30300", "containerPort: http"), "cannot unmarshal"),
        (("role: control-plane", "role: master"), 'nodes[0].role is "master"'),
        (("role: control-plane", "role: worker"), "no control-plane node"),
        (("kind: Cluster", "kind: Clusters"), 'kind is "Clusters"'),
        (("kind.x-k8s.io/v1alpha4", "kind.x-k8s.io/v1alpha3"), "apiVersion is"),
    ],
    ids=[
        "typo-field",
        "port-not-a-number",
        "unknown-role",
        "no-control-plane",
        "wrong-kind",
        "old-api-version",
    ],
)
def test_kindcheck_rejects_a_broken_kind_config(
    kindcheck: Path, change: tuple[str, str], message: str
) -> None:
    assert _kindcheck(kindcheck, MINIMAL_KIND_CONFIG).returncode == 0
    proc = _kindcheck(kindcheck, MINIMAL_KIND_CONFIG.replace(change[0], change[1], 1))
    assert proc.returncode == 1
    assert message in proc.stdout


def test_kindcheck_rejects_a_second_document(kindcheck: Path) -> None:
    proc = _kindcheck(kindcheck, MINIMAL_KIND_CONFIG + "---\nkind: Cluster\n")
    assert proc.returncode == 1
    assert "more than one YAML document" in proc.stdout
