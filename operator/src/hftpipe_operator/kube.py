"""The few Kubernetes API calls the handlers make, on plain dict manifests.

Paths come from :func:`.reconcile.object_path`, not from the client's cached
discovery, so a CRD installed after start-up is used at once; children are created and patched
with server-side apply under one field manager, so a field the operator
stops setting is removed, and fields others set are kept.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from typing import Any, Final

from kubernetes import client, config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from . import labels
from .reconcile import object_path

FIELD_MANAGER: Final = labels.MANAGER

Manifest = dict[str, Any]


def load_api_client() -> client.ApiClient:
    """A client for the cluster the operator runs in, else for ``$KUBECONFIG``."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        # Read $KUBECONFIG now: the client's own default was fixed when it was imported.
        return config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))
    return client.ApiClient()


class Kube:
    """Get, create, apply, patch, delete and list namespaced objects by manifest."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = DynamicClient(api)

    def _request(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        response = self._api.request(method, path, body=body, serialize=False, **params)
        return json.loads(response.data.decode()) if response.data else None

    @staticmethod
    def _path(manifest: Manifest, name: bool = True) -> str:
        meta = manifest["metadata"]
        return object_path(
            manifest["apiVersion"],
            manifest["kind"],
            meta["namespace"],
            meta["name"] if name else None,
        )

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Manifest | None:
        """The object, or ``None`` when it does not exist."""
        try:
            found: Manifest = self._request("get", object_path(api_version, kind, namespace, name))
        except NotFoundError:
            return None
        return found

    def read(self, manifest: Manifest) -> Manifest | None:
        """The stored object of ``manifest``'s kind and name, or ``None``."""
        meta = manifest["metadata"]
        return self.get(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])

    def create(self, manifest: Manifest) -> Manifest:
        """Create ``manifest`` by server-side apply (so later applies own its fields)."""
        return self.apply(manifest)

    def apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply ``manifest`` (forcing conflicts: the operator owns its children)."""
        applied: Manifest = self._request(
            "patch",
            self._path(manifest),
            body=manifest,
            content_type="application/apply-patch+yaml",
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
        )
        return applied

    def merge_patch(self, manifest: Manifest, patch: Manifest) -> Manifest:
        """JSON merge patch of the object ``manifest`` names."""
        patched: Manifest = self._request(
            "patch",
            self._path(manifest),
            body=patch,
            content_type="application/merge-patch+json",
            field_manager=FIELD_MANAGER,
        )
        return patched

    def delete(self, manifest: Manifest, propagation: str = "Background") -> None:
        """Delete the object ``manifest`` names (gone already is fine)."""
        try:
            self._request("delete", self._path(manifest), propagation_policy=propagation)
        except NotFoundError:
            return

    def list(
        self, api_version: str, kind: str, namespace: str, selector: dict[str, str]
    ) -> list[Manifest]:
        """Objects of a kind in ``namespace`` with every label of ``selector``."""
        found = self._request(
            "get",
            object_path(api_version, kind, namespace),
            label_selector=",".join(f"{k}={v}" for k, v in selector.items()),
        )
        items: list[Manifest] = found.get("items") or []
        return items

    def crd_exists(self, name: str) -> bool:
        """Whether the CustomResourceDefinition ``name`` is installed."""
        try:
            self._request("get", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        except NotFoundError:
            return False
        return True

    def secret_value(self, namespace: str, name: str, key: str) -> str:
        """One key of a Secret that opted in to ReplayJobs, decoded.

        KeyError names the Secret and key when either is missing;
        :class:`SecretNotOptedIn` (a KeyError) when the Secret lacks
        :data:`.labels.SECRET_OPT_IN`: the operator never reads such a Secret's data.
        """
        secret = self.get("v1", "Secret", namespace, name)
        if secret is None:
            raise KeyError(f"Secret {namespace}/{name} does not exist")
        if not opted_in(secret):
            raise SecretNotOptedIn(not_opted_in_message(namespace, name, []))
        data = secret.get("data") or {}
        if key not in data:
            raise KeyError(f"Secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(data[key]).decode()

    def secret_problem(self, namespace: str, name: str, fields: Sequence[str]) -> str | None:
        """Why a Secret that ``fields`` of a job name cannot be used, or None if it can."""
        secret = self.get("v1", "Secret", namespace, name)
        if secret is None:
            return f"Secret {name} (named by {', '.join(fields)}) does not exist"
        if not opted_in(secret):
            return not_opted_in_message(namespace, name, fields)
        return None


class SecretNotOptedIn(KeyError):
    """A Secret a job names lacks :data:`.labels.SECRET_OPT_IN`."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def opted_in(secret: Manifest) -> bool:
    """Whether a Secret carries :data:`.labels.SECRET_OPT_IN` = ``"true"``."""
    found = ((secret.get("metadata") or {}).get("labels") or {}).get(labels.SECRET_OPT_IN)
    return found == "true"


def not_opted_in_message(namespace: str, name: str, fields: Sequence[str]) -> str:
    """What to do about a Secret that has not opted in (one line, for a condition or Event)."""
    named = f" (named by {', '.join(fields)})" if fields else ""
    return (
        f"Secret {name}{named} is not labelled {labels.SECRET_OPT_IN}=true: a ReplayJob may "
        "only use Secrets a namespace admin has opted in, so that nobody who can create a "
        "ReplayJob can have its workers or the operator send a Secret elsewhere. To allow "
        f"it: kubectl label secret {name} -n {namespace} {labels.SECRET_OPT_IN}=true"
    )
