"""Pure decisions of the handlers: what to do with a child, when a status is worth writing.

The handlers read a child, ask :func:`plan` what to do, and do it; they
observe a job, roll its status up (:func:`.status.roll_up`), add
:func:`kafka_condition`, and write it only when :func:`status_changed`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from . import labels
from .status import Condition, ConditionStatus, ReplayJobStatus, timestamp

APPLIED_HASH: Final = f"{labels.DOMAIN}/applied-hash"
"""Annotation on every child: hash of the manifest last applied, so an unchanged child
is left alone (its resourceVersion stays) and a changed one is patched."""

TEMPLATE_HASH: Final = f"{labels.DOMAIN}/template-hash"
"""Annotation on the producer Job: hash of its spec without ``suspend``. A Job's pod
template is immutable, so a change of it means deleting and recreating the Job."""

RECONCILED_GENERATION: Final = f"{labels.DOMAIN}/reconciled-generation"
"""Annotation on the ReplayJob: the last ``metadata.generation`` whose children were all
made or patched (issue 10, point 9). ``status.observedGeneration`` and the conditions'
come from it, not from the generation the status timer happens to see: a generation
that was refused (an immutable field changed, a Secret not opted in) or whose reconcile
failed is not observed, so tools that compare the two (kstatus, Argo CD, Flux) see the
edit as not applied. The one exception is :data:`CREDENTIALS_ALLOWED`, which judges the
current spec and carries its generation.

An annotation rather than kopf's memo: it survives an operator restart, and the status
timer (a task of its own) reads it from the body it is given. It is under the operator's
kopf prefix, whose annotations kopf leaves out of its diff: writing it is not an edit."""

RECONCILED_SPEC: Final = f"{labels.DOMAIN}/reconciled-spec"
"""Annotation on the ReplayJob: the spec (JSON, as the API server returned it) of the
generation in :data:`RECONCILED_GENERATION`, written with it: what the children are of.

An edit of a field that defines the job's data is judged against it where the installed
CRD lacks the transition rules (issue 10, point 8), not against kopf's diffbase: kopf
records a spec whose handler failed permanently as handled, so the next edit, compared
with the refused spec, would carry the refused change to the children."""

FINAL_PHASES: Final = ("Succeeded", "Failed")
"""Phases a job never leaves: no worker of it runs again (issue 10, point 5)."""

KAFKA_OBSERVED: Final = "KafkaObserved"
"""Condition: the last observation could read the job's offsets from Kafka."""

CREDENTIALS_ALLOWED: Final = "CredentialsAllowed"
"""Condition: every Secret the job names exists and carries :data:`.labels.SECRET_OPT_IN`;
while one does not, no worker is started and the operator reads none of them."""

Action = Literal["create", "keep", "apply", "replace"]

_PLURALS: Final = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Secret": "secrets",
    "Pod": "pods",
    "Job": "jobs",
    "Deployment": "deployments",
    "PodMonitor": "podmonitors",
    "KafkaTopic": "kafkatopics",
}


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    """The REST path of a namespaced object (or of its collection when ``name`` is None)."""
    plural = _PLURALS.get(kind)
    if plural is None:
        raise ValueError(f"no REST path known for kind {kind!r}")
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _without_hashes(manifest: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(manifest))
    metadata = out.get("metadata") or {}
    annotations = metadata.get("annotations")
    if annotations is not None:
        for key in (APPLIED_HASH, TEMPLATE_HASH):
            annotations.pop(key, None)
        if not annotations:
            del metadata["annotations"]
    return out


def template_hash(job: Mapping[str, Any]) -> str:
    """Hash of a Job manifest's spec without ``suspend`` (the part that cannot change)."""
    spec = {k: v for k, v in (job.get("spec") or {}).items() if k != "suspend"}
    return _hash(spec)


def stamp(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """``manifest`` with its :data:`APPLIED_HASH` (and, for a Job, :data:`TEMPLATE_HASH`)."""
    out = _without_hashes(manifest)
    annotations = out.setdefault("metadata", {}).setdefault("annotations", {})
    annotations[APPLIED_HASH] = _hash(_without_hashes(manifest))
    if out.get("kind") == "Job":
        annotations[TEMPLATE_HASH] = template_hash(out)
    return out


def _annotation(obj: Mapping[str, Any] | None, key: str) -> str | None:
    if obj is None:
        return None
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(key)
    return value if isinstance(value, str) else None


def reconciled_generation(meta: Mapping[str, Any]) -> int | None:
    """The generation :data:`RECONCILED_GENERATION` records in ``meta``, or ``None``."""
    value = _annotation({"metadata": meta}, RECONCILED_GENERATION)
    if value is None or not value.isdigit():
        return None
    return int(value)


def reconciled_spec(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The spec :data:`RECONCILED_SPEC` records in ``meta``, or ``None``."""
    value = _annotation({"metadata": meta}, RECONCILED_SPEC)
    if value is None:
        return None
    try:
        spec = json.loads(value)
    except ValueError:
        return None
    return spec if isinstance(spec, dict) else None


def reconciled_annotations(generation: int, spec: Mapping[str, Any]) -> dict[str, str]:
    """:data:`RECONCILED_GENERATION` and :data:`RECONCILED_SPEC` of a generation whose
    children were all made or patched."""
    return {
        RECONCILED_GENERATION: str(generation),
        RECONCILED_SPEC: json.dumps(spec, sort_keys=True, separators=(",", ":")),
    }


def plan(existing: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> Action:
    """What to do to turn ``existing`` into ``desired`` (a :func:`stamp`-ed manifest).

    ``create`` when missing, ``keep`` when the applied hash matches, ``replace`` a
    Job whose immutable part changed, else ``apply`` (a server-side apply). A child
    being deleted is ``replace``d (waited out, then made anew) whatever its hash says:
    else an edit reverted while the old producer Job is deleting would leave no Job.
    """
    if existing is None:
        return "create"
    if (existing.get("metadata") or {}).get("deletionTimestamp"):
        return "replace"
    if _annotation(existing, APPLIED_HASH) == _annotation(desired, APPLIED_HASH):
        return "keep"
    if desired.get("kind") == "Job" and _annotation(existing, TEMPLATE_HASH) != _annotation(
        desired, TEMPLATE_HASH
    ):
        return "replace"
    return "apply"


def job_patch(desired: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that brings a Job whose template is unchanged to ``desired``.

    Only what a Job lets change: ``suspend``, and the labels and annotations.
    """
    metadata = desired.get("metadata") or {}
    return {
        "metadata": {
            "labels": dict(metadata.get("labels") or {}),
            "annotations": dict(metadata.get("annotations") or {}),
        },
        "spec": {"suspend": bool((desired.get("spec") or {}).get("suspend"))},
    }


@dataclass(frozen=True)
class KafkaReading:
    """How the last attempt to read the job's offsets went."""

    ok: bool
    message: str


def _condition(
    kind: str,
    ok: bool,
    reasons: tuple[str, str],
    message: str,
    now: datetime,
    generation: int | None,
    previous: ReplayJobStatus | None,
) -> Condition:
    """A condition whose transition time moves only with its status; ``reasons`` are
    (when true, when false)."""
    value: ConditionStatus = "True" if ok else "False"
    before = previous.condition(kind) if previous else None
    since = (
        before.last_transition_time
        if before is not None and before.status == value
        else timestamp(now)
    )
    return Condition(
        type=kind,
        status=value,
        reason=reasons[0] if ok else reasons[1],
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )


def kafka_condition(
    reading: KafkaReading, now: datetime, generation: int | None, previous: ReplayJobStatus | None
) -> Condition:
    """The :data:`KAFKA_OBSERVED` condition."""
    return _condition(
        KAFKA_OBSERVED,
        reading.ok,
        ("OffsetsRead", "KafkaUnreachable"),
        reading.message,
        now,
        generation,
        previous,
    )


def credentials_condition(
    problems: list[str], now: datetime, generation: int, previous: ReplayJobStatus | None
) -> Condition:
    """The :data:`CREDENTIALS_ALLOWED` condition: every Secret the job names exists and
    opted in (``problems`` says which do not, one line each)."""
    return _condition(
        CREDENTIALS_ALLOWED,
        not problems,
        ("SecretsOptedIn", "SecretNotOptedIn"),
        "; ".join(problems) or "every Secret the job names has opted in",
        now,
        generation,
        previous,
    )


def with_condition(status: ReplayJobStatus, condition: Condition) -> ReplayJobStatus:
    """``status`` with ``condition`` added or replacing the one of its type."""
    others = [c for c in status.conditions or () if c.type != condition.type]
    return status.model_copy(update={"conditions": [*others, condition]})


def _comparable(status: ReplayJobStatus | None) -> dict[str, Any]:
    if status is None:
        return {}
    out = status.to_patch()
    if out.get("progress"):
        out["progress"] = {k: v for k, v in out["progress"].items() if k != "updatedAt"}
    return out


def status_changed(previous: ReplayJobStatus | None, new: ReplayJobStatus) -> bool:
    """Whether ``new`` says more than ``previous`` (a fresher ``updatedAt`` alone does not):
    an idle job's status is not rewritten every observation."""
    return _comparable(previous) != _comparable(new)


def phase_event(before: str | None, after: str) -> tuple[bool, str] | None:
    """(is a warning, message) of the Event for a phase transition, or None when unchanged."""
    if before == after:
        return None
    return after == "Failed", f"phase {before or 'none'} -> {after}"
