"""The least the operator needs from the API server: a ClusterRole and a Role, defined once.

The split follows what is cluster-scoped and what is not:

- the **ClusterRole** holds only cluster-scoped, read-mostly rights: CRDs (kopf notices
  resources coming and going; the operator checks whether the ``PodMonitor`` and
  ``KafkaTopic`` CRDs exist before building those children) and the
  ``ClusterKopfPeering`` objects of a cluster-wide operator;
- the **Role** holds everything a ReplayJob needs in its namespace and is bound, by one
  RoleBinding each, in every namespace the operator watches: ReplayJobs, their
  children, Events, and ``get`` on Secrets (the Kafka and Redis credentials a job names
  by ``secretRef``, read to observe Kafka offsets and to clean up on delete).

So the operator cannot read a Secret or touch a workload in a namespace it does not
watch. The Helm chart renders the same rules (``make manifests`` writes them to
``charts/hftpipe-operator/files/rbac-rules.yaml``; a test fails when they drift) and the
integration tests run the operator under a service account bound to exactly these.
"""

from __future__ import annotations

from typing import Any, Final

import yaml

from . import crd, labels

Rule = dict[str, list[str]]

READ: Final = ["get", "list", "watch"]
MANAGE: Final = ["get", "list", "watch", "create", "update", "patch", "delete"]

KOPF_GROUP: Final = "kopf.dev"
STRIMZI_GROUP: Final = "kafka.strimzi.io"
MONITORING_GROUP: Final = "monitoring.coreos.com"


def _rule(group: str, resources: list[str], verbs: list[str]) -> Rule:
    return {"apiGroups": [group], "resources": resources, "verbs": verbs}


def cluster_rules() -> list[Rule]:
    """Rules of the operator's ClusterRole: cluster-scoped objects only, never workloads."""
    return [
        # kopf watches CRDs to notice its resources appear; the handlers `get` the
        # optional PodMonitor / KafkaTopic CRDs. CRDs hold schemas, not data.
        _rule("apiextensions.k8s.io", ["customresourcedefinitions"], READ),
        # Peering of a cluster-wide operator with more than one replica.
        _rule(KOPF_GROUP, ["clusterkopfpeerings"], ["get", "list", "watch", "patch"]),
    ]


def namespaced_rules() -> list[Rule]:
    """Rules of the operator's Role, bound in each namespace it watches."""
    return [
        # The ReplayJobs themselves: kopf lists, watches and patches them (its
        # annotations, the finalizer) and writes their status subresource.
        _rule(crd.GROUP, [crd.PLURAL], ["get", "list", "watch", "patch", "update"]),
        _rule(crd.GROUP, [f"{crd.PLURAL}/status"], ["get", "patch", "update"]),
        # Owner references with blockOwnerDeletion need `update` on the owner's
        # finalizers (the OwnerReferencesPermissionEnforcement admission plugin).
        _rule(crd.GROUP, [f"{crd.PLURAL}/finalizers"], ["update"]),
        # The children (builders.py): settings, metrics Service, the DuckDB volume's
        # claim, producer Job, workers.
        _rule("", ["configmaps", "services", "persistentvolumeclaims"], MANAGE),
        _rule("batch", ["jobs"], MANAGE),
        _rule("apps", ["deployments"], MANAGE),
        _rule(STRIMZI_GROUP, ["kafkatopics"], MANAGE),
        _rule(MONITORING_GROUP, ["podmonitors"], MANAGE),
        # Pods are only observed (restarts, waiting reasons), never changed.
        _rule("", ["pods"], READ),
        # Credentials named by the jobs' secretRefs: read one by name, never listed.
        _rule("", ["secrets"], ["get"]),
        # Events for every phase transition and error (kopf posts core/v1 Events).
        _rule("", ["events"], ["create", "patch"]),
        _rule("events.k8s.io", ["events"], ["create", "patch"]),
        # Peering of a namespaced operator with more than one replica.
        _rule(KOPF_GROUP, ["kopfpeerings"], ["get", "list", "watch", "patch"]),
    ]


def build_rbac(
    *,
    name: str = labels.MANAGER,
    namespace: str,
    watch_namespaces: list[str],
    service_account: str | None = None,
) -> list[dict[str, Any]]:
    """ServiceAccount, ClusterRole + binding, and a Role + RoleBinding per watched namespace.

    ``namespace`` is where the operator runs (its ServiceAccount lives there). This is
    what the chart renders, as plain manifests for tests and ``kubectl apply``.
    """
    if not watch_namespaces:
        raise ValueError(
            "watch_namespaces is empty: name the namespaces the operator serves "
            "(a cluster-wide operator would need Secrets access in every namespace)"
        )
    account = service_account or name
    meta_labels = {labels.APP_NAME: labels.MANAGER, labels.APP_PART_OF: labels.APP}
    subject = [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": account, "namespace": namespace, "labels": meta_labels},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name, "labels": meta_labels},
            "rules": cluster_rules(),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": meta_labels},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": subject,
        },
    ]
    for watched in watch_namespaces:
        docs.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": name, "namespace": watched, "labels": meta_labels},
                "rules": namespaced_rules(),
            }
        )
        docs.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": name, "namespace": watched, "labels": meta_labels},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": subject,
            }
        )
    return docs


RULES_HEADER: Final = (
    "# Generated from hftpipe_operator.rbac by `make manifests`; do not edit.\n"
    "# The chart's ClusterRole and Role render these rules (templates/rbac.yaml).\n"
)


def rules_yaml() -> str:
    """Both rule sets as one YAML document, for the Helm chart's ``files/``."""
    body = {"clusterRules": cluster_rules(), "namespacedRules": namespaced_rules()}
    return RULES_HEADER + yaml.safe_dump(body, sort_keys=False)
