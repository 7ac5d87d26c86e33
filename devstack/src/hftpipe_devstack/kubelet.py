"""A kubelet for the local stack: the pods bound to one node run as local processes.

There is no container runtime here, yet the end-to-end tests must prove that what
the operator writes into its pods is what makes the pipeline work. So this plays
the part of the scheduler and the kubelet of one Node, against the real API server
and the real controllers of the local stack:

- it registers a Node (and renews its Lease, as a kubelet does) and binds every
  unscheduled pod of the namespaces it serves to it;
- it runs each container's ``command``/``args`` as a local process with the
  environment the kubelet would give it: ``env`` and ``envFrom`` resolved from the
  real ConfigMaps and Secrets (a missing one is a ``CreateContainerConfigError``,
  as in Kubernetes), ``$(VAR)`` expanded, field references filled in;
- it writes the pod status (Running, Ready from the HTTP readiness probe, restarts,
  exit codes, Succeeded/Failed) so the Job, ReplicaSet and Deployment controllers
  and the operator see real statuses; it stops a deleted pod's process with SIGTERM
  and its grace period, then removes the pod.

What a container would have of its own is emulated, and only that: each volume
mount is a directory under the kubelet's root (one per pod for ``emptyDir``, one
per claim for a PVC, so a restarted loader finds its DuckDB file), with the mount
path rewritten in the container's environment and arguments; each container port
is a free local port, put in place of the port number in variables that carry it
(pods have a network namespace each; processes on one host do not). Images are
ignored: commands resolve against ``binaries`` and ``PATH``. Liveness probes are
not run.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx
import yaml

from .procs import ProcessTable, free_port

log = logging.getLogger("hftpipe.kubelet")

NODE_NAME: Final = "hftpipe-local"
Manifest = dict[str, Any]


class ContainerConfigError(Exception):
    """The container cannot start: a ConfigMap, Secret or key it needs is missing."""


# ------------------------------------------------------------------- the API


class KubeRest:
    """Just enough of the Kubernetes REST API, from a kubeconfig (client certificate)."""

    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c for c in config["clusters"] if c["name"] == context["context"]["cluster"])
        user = next(u for u in config["users"] if u["name"] == context["context"]["user"])["user"]
        headers = {"Authorization": f"Bearer {user['token']}"} if "token" in user else {}
        tls = ssl.create_default_context(cafile=cluster["cluster"]["certificate-authority"])
        if "client-key" in user:
            tls.load_cert_chain(user["client-certificate"], user["client-key"])
        self._http = httpx.Client(
            base_url=cluster["cluster"]["server"], verify=tls, headers=headers, timeout=10.0
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """One API call; returns the decoded JSON, or None for 404."""
        response = self._http.request(method, path, json=body, **kw)
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise httpx.HTTPStatusError(
                f"{method} {path}: {response.status_code} {response.text}",
                request=response.request,
                response=response,
            )
        return response.json() if response.content else None

    def merge_patch(self, path: str, body: Any) -> Any:
        """A JSON merge patch (lists are replaced whole)."""
        return self.request(
            "PATCH", path, body, headers={"Content-Type": "application/merge-patch+json"}
        )


# --------------------------------------------------------------- pure pieces


def _decoded(secret: Mapping[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def _field_ref(pod: Mapping[str, Any], path: str) -> str:
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    known = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": status.get("podIP", "127.0.0.1"),
        "status.hostIP": "127.0.0.1",
    }
    label = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if label:
        return str((meta.get(label.group(1)) or {}).get(label.group(2), ""))
    if path not in known:
        raise ContainerConfigError(f"fieldRef {path!r} is not supported by the local kubelet")
    return str(known[path])


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known variables replaced, ``$$`` escapes ``$``."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        return env.get(name, match.group(0))

    return _VAR_REF.sub(one, text)


def _env_from(
    container: Mapping[str, Any],
    configmap: Callable[[str], Mapping[str, Any] | None],
    secret: Callable[[str], Mapping[str, Any] | None],
) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            ref, found = source["configMapRef"], configmap(source["configMapRef"]["name"])
            data = dict((found or {}).get("data") or {})
            kind = "ConfigMap"
        else:
            ref, found = source["secretRef"], secret(source["secretRef"]["name"])
            data = _decoded(found or {})
            kind = "Secret"
        if found is None:
            if ref.get("optional"):
                continue
            raise ContainerConfigError(f'{kind.lower()} "{ref["name"]}" not found')
        env.update({prefix + k: v for k, v in data.items()})
    return env


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    configmap: Callable[[str], Mapping[str, Any] | None],
    secret: Callable[[str], Mapping[str, Any] | None],
) -> dict[str, str]:
    """The container's environment as the kubelet builds it: ``envFrom``, then ``env``."""
    env = _env_from(container, configmap, secret)
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var or "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        value_from = var["valueFrom"]
        if "fieldRef" in value_from:
            env[name] = _field_ref(pod, value_from["fieldRef"]["fieldPath"])
            continue
        if "configMapKeyRef" in value_from:
            ref, kind = value_from["configMapKeyRef"], "configmap"
            obj = configmap(ref["name"])
            values = None if obj is None else dict(obj.get("data") or {})
        elif "secretKeyRef" in value_from:
            ref, kind = value_from["secretKeyRef"], "secret"
            obj = secret(ref["name"])
            values = None if obj is None else _decoded(obj)
        else:
            raise ContainerConfigError(f"env {name}: unsupported valueFrom {sorted(value_from)}")
        if values is None or ref["key"] not in values:
            if ref.get("optional"):
                continue
            what = f'{kind} "{ref["name"]}"' if values is None else f'key "{ref["key"]}"'
            raise ContainerConfigError(
                f'couldn\'t find {what} in {kind} "{ref["name"]}" for env {name}'
                if values is not None
                else f"{what} not found (env {name})"
            )
        env[name] = values[ref["key"]]
    return env


def volume_dirs(pod: Mapping[str, Any], root: Path) -> dict[str, Path]:
    """A host directory per pod volume: per pod for emptyDir, per claim for a PVC."""
    meta = pod["metadata"]
    dirs: dict[str, Path] = {}
    for volume in pod.get("spec", {}).get("volumes") or []:
        name = volume["name"]
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            dirs[name] = root / "claims" / meta["namespace"] / claim
        else:
            dirs[name] = root / "pods" / meta["namespace"] / meta["name"] / "volumes" / name
    return dirs


def mount_map(
    pod: Mapping[str, Any], container: Mapping[str, Any], root: Path
) -> list[tuple[str, Path]]:
    """``(mountPath, host dir)`` of the container's mounts, longest path first."""
    dirs = volume_dirs(pod, root)
    pairs = [
        (
            m["mountPath"].rstrip("/") or "/",
            dirs[m["volumeName"] if "volumeName" in m else m["name"]],
        )
        for m in container.get("volumeMounts") or []
    ]
    return sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)


def rewrite_paths(value: str, mounts: list[tuple[str, Path]]) -> str:
    """``value`` with every mount path (as a path prefix) replaced by its host directory.

    One pass over all mount paths, longest first: a host directory that itself
    starts with another mount path (``/tmp/...`` and a ``/tmp`` mount) is not
    rewritten again.
    """
    if not mounts:
        return value
    hosts = dict(mounts)
    pattern = "|".join(re.escape(path) for path, _ in mounts)
    return re.sub(
        rf"(?<![\w.-])({pattern})(?=/|$|[^\w.-])",
        lambda match: str(hosts[match.group(1)]),
        value,
    )


def port_map(container: Mapping[str, Any], pick: Callable[[], int] = free_port) -> dict[int, int]:
    """A free local port for each container port."""
    return {int(p["containerPort"]): pick() for p in container.get("ports") or []}


@dataclass(frozen=True)
class LocalProcess:
    """How one container runs here: argv, environment, ports."""

    argv: list[str]
    env: dict[str, str]
    ports: dict[int, int]
    named_ports: dict[str, int] = field(default_factory=dict)


def local_process(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    env: Mapping[str, str],
    root: Path,
    ports: Mapping[int, int],
    binaries: Mapping[str, str],
    base_env: Mapping[str, str],
) -> LocalProcess:
    """Turn a container of a pod into a local command line and environment."""
    mounts = mount_map(pod, container, root)
    local_env = {k: rewrite_paths(v, mounts) for k, v in env.items()}
    for container_port, host_port in ports.items():
        for key, value in local_env.items():
            if value == str(container_port):
                local_env[key] = str(host_port)
    words = [
        expand(w, env) for w in (container.get("command") or []) + (container.get("args") or [])
    ]
    if not words:
        raise ContainerConfigError(
            "the container has no command (an image entrypoint is not known here)"
        )
    words = [rewrite_paths(w, mounts) for w in words]
    program = binaries.get(words[0]) or shutil.which(words[0], path=base_env.get("PATH"))
    if program is None:
        raise ContainerConfigError(f'executable "{words[0]}" not found (binaries or PATH)')
    named = {
        p["name"]: ports[int(p["containerPort"])]
        for p in container.get("ports") or []
        if "name" in p
    }
    return LocalProcess([program, *words[1:]], {**base_env, **local_env}, dict(ports), named)


def probe_port(probe: Mapping[str, Any], process: LocalProcess) -> int | None:
    """The local port an ``httpGet`` probe targets (by name or number)."""
    port = probe.get("httpGet", {}).get("port")
    if isinstance(port, str) and not port.isdigit():
        return process.named_ports.get(port)
    return process.ports.get(int(port)) if port is not None else None


# ---------------------------------------------------------------- the kubelet


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Container:
    name: str
    spec: dict[str, Any]
    process: LocalProcess | None = None
    proc_name: str | None = None
    started_at: str | None = None
    ready: bool = False
    restarts: int = 0
    next_start: float = 0.0
    waiting: tuple[str, str] | None = None
    terminated: dict[str, Any] | None = None
    last_terminated: dict[str, Any] | None = None


@dataclass
class _Pod:
    namespace: str
    name: str
    uid: str
    manifest: dict[str, Any]
    containers: list[_Container]
    phase: str = "Pending"
    started: str = field(default_factory=_now)
    dirty: bool = True


class LocalKubelet:
    """Runs the pods of ``namespaces`` as local processes (see the module's docstring)."""

    def __init__(
        self,
        kubeconfig: Path,
        root: Path,
        *,
        namespaces: list[str],
        binaries: Mapping[str, str] | None = None,
        node_name: str = NODE_NAME,
        base_env: Mapping[str, str] | None = None,
        poll: float = 0.5,
    ) -> None:
        self.kube = KubeRest(kubeconfig)
        self.root = root
        self.namespaces = namespaces
        self.binaries = dict(binaries or {})
        self.node_name = node_name
        self.base_env = dict(
            base_env
            if base_env is not None
            else {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        )
        self.poll = poll
        self.table = ProcessTable(root / "state", tie_to_parent=True)
        self._pods: dict[str, _Pod] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_heartbeat = 0.0
        self.errors: list[str] = []

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalKubelet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Register the Node and start the loop in a thread."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._register_node()
        self._thread = threading.Thread(target=self._run, name="local-kubelet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and every process it started (the pods stay as they are)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.table.stop_all(grace=10.0)
        self.kube.close()

    def logs(self, namespace: str, pod_prefix: str = "") -> str:
        """The output of the containers of matching pods (for test failure messages)."""
        out = []
        for path in sorted((self.table.log_dir).glob(f"{namespace}.{pod_prefix}*.log")):
            out.append(f"==> {path.name} <==\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._heartbeat()
                self._sync()
            except Exception as exc:  # keep the node alive; tests read .errors
                log.exception("local kubelet loop")
                self.errors.append(repr(exc))
            self._stop.wait(self.poll)

    # ------------------------------------------------------------------ node

    def _node_status(self) -> dict[str, Any]:
        now = _now()
        return {
            "capacity": {"cpu": "16", "memory": "64Gi", "pods": "110"},
            "allocatable": {"cpu": "16", "memory": "64Gi", "pods": "110"},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "hftpipe local kubelet is posting ready status",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        }

    def _register_node(self) -> None:
        if self.kube.request("GET", f"/api/v1/nodes/{self.node_name}") is None:
            self.kube.request(
                "POST",
                "/api/v1/nodes",
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": self.node_name,
                        "labels": {"kubernetes.io/hostname": self.node_name, "type": "local"},
                    },
                },
            )
        self._heartbeat(force=True)

    def _heartbeat(self, *, force: bool = False) -> None:
        # The node lifecycle controller taints (and later evicts from) a node whose
        # Lease and Ready condition go stale, as it would for a dead kubelet.
        if not force and time.monotonic() - self._last_heartbeat < 10:
            return
        self._last_heartbeat = time.monotonic()
        self.kube.merge_patch(
            f"/api/v1/nodes/{self.node_name}/status", {"status": self._node_status()}
        )
        lease_path = (
            f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        )
        renew = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if self.kube.request("GET", lease_path) is None:
            self.kube.request(
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.node_name},
                    "spec": {
                        "holderIdentity": self.node_name,
                        "leaseDurationSeconds": 40,
                        "renewTime": renew,
                    },
                },
            )
        else:
            self.kube.merge_patch(lease_path, {"spec": {"renewTime": renew}})

    # ------------------------------------------------------------------ pods

    def _list_pods(self) -> list[dict[str, Any]]:
        pods: list[dict[str, Any]] = []
        for namespace in self.namespaces:
            found = self.kube.request("GET", f"/api/v1/namespaces/{namespace}/pods")
            pods.extend((found or {}).get("items") or [])
        return pods

    def _sync(self) -> None:
        seen: set[str] = set()
        for pod in self._list_pods():
            meta, spec = pod["metadata"], pod.get("spec", {})
            uid = meta["uid"]
            seen.add(uid)
            node = spec.get("nodeName")
            if node is None and meta.get("deletionTimestamp") is None:
                self._bind(pod)
                continue
            if node != self.node_name:
                continue
            tracked = self._pods.get(uid)
            if tracked is None:
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    continue  # finished before we (re)started: leave it as it is
                tracked = self._pods[uid] = _Pod(
                    namespace=meta["namespace"],
                    name=meta["name"],
                    uid=uid,
                    manifest=pod,
                    containers=[_Container(c["name"], c) for c in spec.get("containers") or []],
                )
            tracked.manifest = pod
            if meta.get("deletionTimestamp") is not None:
                self._terminate(tracked)
                continue
            self._step(tracked)
        for uid in list(self._pods):
            if uid not in seen:  # deleted with grace 0 by someone else
                self._kill(self._pods.pop(uid), grace=0.0)

    def _bind(self, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        self.kube.request(
            "POST",
            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding",
            {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": meta["name"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
            },
        )
        log.info("bound %s/%s to %s", meta["namespace"], meta["name"], self.node_name)

    def _object(self, namespace: str, kind: str, name: str) -> Mapping[str, Any] | None:
        found: Mapping[str, Any] | None = self.kube.request(
            "GET", f"/api/v1/namespaces/{namespace}/{kind}/{name}"
        )
        return found

    def _start(self, pod: _Pod, container: _Container) -> None:
        manifest = pod.manifest
        try:
            env = container_env(
                manifest,
                container.spec,
                lambda n: self._object(pod.namespace, "configmaps", n),
                lambda n: self._object(pod.namespace, "secrets", n),
            )
            process = local_process(
                manifest,
                container.spec,
                env=env,
                root=self.root,
                ports=port_map(container.spec),
                binaries=self.binaries,
                base_env=self.base_env,
            )
        except ContainerConfigError as exc:
            waiting = ("CreateContainerConfigError", str(exc))
            if container.waiting != waiting:
                container.waiting, pod.dirty = waiting, True
            container.next_start = time.monotonic() + 2.0
            return
        for _, host in mount_map(manifest, container.spec, self.root):
            host.mkdir(parents=True, exist_ok=True)
        name = f"{pod.namespace}.{pod.name}.{container.name}.{container.restarts}"
        self.table.start(name, process.argv, env=process.env, inherit_env=False)
        container.process, container.proc_name = process, name
        container.started_at, container.waiting, container.ready = _now(), None, False
        container.terminated = None
        pod.phase, pod.dirty = "Running", True
        log.info("started %s/%s %s: %s", pod.namespace, pod.name, container.name, process.argv)

    def _probe(self, container: _Container) -> bool:
        probe = container.spec.get("readinessProbe")
        if container.process is None:
            return False
        if probe is None:
            return True
        port = probe_port(probe, container.process)
        if port is None:
            return True
        path = probe.get("httpGet", {}).get("path", "/")
        try:
            return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1.0).status_code < 400
        except httpx.HTTPError:
            return False

    def _step(self, pod: _Pod) -> None:
        policy = pod.manifest.get("spec", {}).get("restartPolicy", "Always")
        for container in pod.containers:
            if container.proc_name is None:
                if pod.phase in ("Succeeded", "Failed"):
                    continue
                if time.monotonic() >= container.next_start:
                    self._start(pod, container)
                continue
            code = self.table.exited(container.proc_name)
            if code is None:
                ready = self._probe(container)
                if ready != container.ready:
                    container.ready, pod.dirty = ready, True
                continue
            # The container exited.
            container.terminated = {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": container.started_at,
                "finishedAt": _now(),
            }
            message = self._termination_message(container, code)
            if message:
                container.terminated["message"] = message
            container.ready, container.proc_name, pod.dirty = False, None, True
            restart = policy == "Always" or (policy == "OnFailure" and code != 0)
            if restart:
                container.last_terminated, container.terminated = container.terminated, None
                container.restarts += 1
                # The kubelet's CrashLoopBackOff: 10 s doubling to 5 min; shortened here.
                delay = min(10.0, 0.5 * 2 ** min(container.restarts, 5))
                container.next_start = time.monotonic() + delay
                container.waiting = ("CrashLoopBackOff", f"back-off {delay:.0f}s restarting")
        if policy != "Always" and all(c.terminated is not None for c in pod.containers):
            failed = any(c.terminated and c.terminated["exitCode"] != 0 for c in pod.containers)
            phase = "Failed" if failed else "Succeeded"
            if pod.phase != phase:
                pod.phase, pod.dirty = phase, True
        if pod.dirty:
            self._write_status(pod)

    def _termination_message(self, container: _Container, code: int) -> str:
        # The kubelet's FallbackToLogsOnError: the last 80 lines (at most 2 KiB) of
        # the log of a container that failed (no /dev/termination-log file here).
        policy = container.spec.get("terminationMessagePolicy", "File")
        if code == 0 or policy != "FallbackToLogsOnError" or container.proc_name is None:
            return ""
        log_path = self.table.log_dir / f"{container.proc_name}.log"
        try:
            text = log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-80:])[-2048:]

    def _container_status(self, container: _Container) -> dict[str, Any]:
        state: dict[str, Any]
        if container.terminated is not None:
            state = {"terminated": container.terminated}
        elif container.proc_name is not None:
            state = {"running": {"startedAt": container.started_at}}
        else:
            reason, message = container.waiting or ("ContainerCreating", "")
            state = {"waiting": {"reason": reason, "message": message}}
        status: dict[str, Any] = {
            "name": container.name,
            "image": container.spec.get("image", ""),
            "imageID": "",
            "ready": container.ready,
            "started": container.proc_name is not None,
            "restartCount": container.restarts,
            "state": state,
            "lastState": {"terminated": container.last_terminated}
            if container.last_terminated
            else {},
        }
        return status

    def _write_status(self, pod: _Pod) -> None:
        ready = pod.phase == "Running" and all(c.ready for c in pod.containers)
        now = _now()

        def condition(type_: str, value: bool) -> dict[str, Any]:
            return {
                "type": type_,
                "status": "True" if value else "False",
                "lastTransitionTime": now,
            }

        status = {
            "phase": pod.phase,
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": pod.started,
            "conditions": [
                condition("PodScheduled", True),
                condition("Initialized", True),
                condition("ContainersReady", ready),
                condition("Ready", ready),
            ],
            "containerStatuses": [self._container_status(c) for c in pod.containers],
        }
        try:
            self.kube.merge_patch(
                f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status", {"status": status}
            )
            pod.dirty = False
        except httpx.HTTPStatusError as exc:
            log.warning("status of %s/%s: %s", pod.namespace, pod.name, exc)

    def _kill(self, pod: _Pod, grace: float) -> None:
        for container in pod.containers:
            if container.proc_name is not None:
                self.table.stop(container.proc_name, grace=grace)
                container.proc_name = None

    def _terminate(self, pod: _Pod) -> None:
        grace = float(pod.manifest["spec"].get("terminationGracePeriodSeconds", 30))
        self._kill(pod, grace=min(grace, 30.0))
        with contextlib.suppress(httpx.HTTPStatusError):
            self.kube.request(
                "DELETE",
                f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}",
                {"gracePeriodSeconds": 0},
            )
        self._pods.pop(pod.uid, None)


__all__ = [
    "ContainerConfigError",
    "KubeRest",
    "LocalKubelet",
    "LocalProcess",
    "container_env",
    "expand",
    "local_process",
    "mount_map",
    "port_map",
    "rewrite_paths",
]
