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


def staging_version(kubernetes: str = KUBERNETES) -> str:
    """The published version of the ``k8s.io/*`` staging modules matching a release.

    ``k8s.io/kubernetes`` v1.34.4 requires its staging modules as v0.0.0 with
    ``replace => ./staging/...``; they are published as v0.34.4.
    """
    major, minor, patch = kubernetes.split(".")
    if major != "1":
        raise ValueError(f"unexpected Kubernetes version {kubernetes!r}: expected 1.x.y")
    return f"v0.{minor}.{patch}"
