"""The local stack's pure parts and its process hygiene, without starting any server."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hftpipe_devstack import install, kubeschemas, versions
from hftpipe_devstack.components import kafka_cluster_id, kafka_server_properties
from hftpipe_devstack.procs import ProcessTable, ProcRecord, alive, start_ticks
from hftpipe_devstack.stack import reap_stale

KUBERNETES_GO_MOD = """\
module k8s.io/kubernetes

go 1.24.0

require (
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0
\tgithub.com/foo/bar v1.2.3
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tk8s.io/kms => ./staging/src/k8s.io/kms
\tgithub.com/foo/bar => github.com/foo/bar v1.2.4
)
"""


def test_wrapper_go_mod_pins_every_staging_module_to_its_published_version() -> None:
    text = install.wrapper_go_mod(KUBERNETES_GO_MOD, "1.34.4")
    assert "require k8s.io/kubernetes v1.34.4" in text
    assert "go 1.24.0" in text
    for mod in ("k8s.io/api", "k8s.io/client-go", "k8s.io/kms"):
        assert f"\t{mod} => {mod} v0.34.4" in text
    assert "github.com/foo/bar" not in text  # only ./staging replacements are mirrored


def test_wrapper_go_mod_refuses_a_go_mod_without_staging_replacements() -> None:
    with pytest.raises(install.InstallError, match="staging"):
        install.wrapper_go_mod("module k8s.io/kubernetes\n\ngo 1.24\n", "1.34.4")


def test_staging_version_maps_release_to_v0_minor_patch() -> None:
    assert versions.staging_version("1.34.4") == "v0.34.4"
    with pytest.raises(ValueError, match=r"1\.x\.y"):
        versions.staging_version("2.0.0")


def test_kafka_properties_run_kraft_without_topic_auto_creation(tmp_path: Path) -> None:
    props = dict(
        line.split("=", 1)
        for line in kafka_server_properties(
            port=9092, controller_port=9093, log_dir=tmp_path
        ).splitlines()
    )
    assert props["process.roles"] == "broker,controller"
    assert props["auto.create.topics.enable"] == "false"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["log.dirs"] == str(tmp_path)


def test_kafka_cluster_id_is_16_bytes_of_urlsafe_base64() -> None:
    cluster_id = kafka_cluster_id()
    assert len(cluster_id) == 22
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    assert kafka_cluster_id() != cluster_id


OPENAPI: dict[str, Any] = {
    "definitions": {
        "io.k8s.api.core.v1.ConfigMap": {
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"$ref": "#/definitions/meta.ObjectMeta"},
                "data": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "x-kubernetes-group-version-kind": [
                {"group": "", "version": "v1", "kind": "ConfigMap"}
            ],
        },
        "io.k8s.api.apps.v1.Deployment": {
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "properties": {
                        "port": {
                            "$ref": "#/definitions/io.k8s.apimachinery.pkg.util.intstr.IntOrString"
                        },
                        "free": {
                            "type": "object",
                            "properties": {"a": {"type": "string"}},
                            "x-kubernetes-preserve-unknown-fields": True,
                        },
                    },
                },
            },
            "x-kubernetes-group-version-kind": [
                {"group": "apps", "version": "v1", "kind": "Deployment"}
            ],
        },
        "meta.ObjectMeta": {"type": "object", "properties": {"name": {"type": "string"}}},
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {
            "type": "string",
            "format": "int-or-string",
        },
        "unused.Thing": {"type": "object"},
    }
}


def test_kubeschemas_lays_out_paths_as_kubeconform_expects() -> None:
    schemas = kubeschemas.convert(OPENAPI)
    assert set(schemas) == {"v1/configmap_v1.json", "apps/deployment_v1.json"}


def test_kubeschemas_are_strict_standalone_and_pin_kind() -> None:
    schemas = kubeschemas.convert(OPENAPI)
    cm = schemas["v1/configmap_v1.json"]
    assert cm["additionalProperties"] is False
    assert set(cm["definitions"]) == {"meta.ObjectMeta"}  # only what it references
    assert cm["definitions"]["meta.ObjectMeta"]["additionalProperties"] is False
    assert cm["properties"]["data"]["additionalProperties"] == {"type": "string"}  # kept
    assert cm["properties"]["apiVersion"]["enum"] == ["v1"]
    deploy = schemas["apps/deployment_v1.json"]
    assert deploy["properties"]["apiVersion"]["enum"] == ["apps/v1"]
    assert deploy["properties"]["spec"]["properties"]["free"].get("additionalProperties") is None
    int_or_string = deploy["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]
    assert int_or_string["oneOf"] == [{"type": "string"}, {"type": "integer"}]


def test_kubeschemas_write_creates_json_files(tmp_path: Path) -> None:
    assert kubeschemas.write(OPENAPI, tmp_path) == 2
    loaded = json.loads((tmp_path / "apps" / "deployment_v1.json").read_text())
    assert loaded["$schema"].startswith("http://json-schema.org/draft-04")


# ----------------------------------------------------------- process hygiene


def test_process_table_stops_what_it_started(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path, tie_to_parent=False)
    record = table.start("sleeper", ["sleep", "60"])
    assert alive(record)
    assert table.stop_all(grace=5) == []  # SIGTERM was enough
    assert not alive(record)
    assert table.records() == []


def test_a_recycled_pid_is_not_mistaken_for_our_process() -> None:
    me = ProcRecord("me", os.getpid(), start_ticks(os.getpid()) or 0, "", [])
    assert alive(me)
    assert not alive(ProcRecord("impostor", os.getpid(), me.start_ticks + 1, "", []))


_TIED_CHILD = """
import sys, time
from pathlib import Path
from hftpipe_devstack.procs import ProcessTable
record = ProcessTable(Path(sys.argv[1]), tie_to_parent=True).start("sleeper", ["sleep", "60"])
print(record.pid, flush=True)
time.sleep(60)
"""


def test_servers_die_with_a_crashed_test_run(tmp_path: Path) -> None:
    """A SIGKILLed pytest must not leave servers holding ports: PDEATHSIG kills them."""
    runner = subprocess.Popen(
        [sys.executable, "-c", _TIED_CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert runner.stdout is not None
    pid = int(runner.stdout.readline())
    record = ProcessTable(tmp_path, tie_to_parent=False).records()[0]
    assert record.pid == pid
    assert alive(record)
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    deadline = time.monotonic() + 10
    while alive(record) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(record)


def test_reaper_stops_stacks_whose_owner_died(tmp_path: Path) -> None:
    stack_dir = tmp_path / "stack-1"
    table = ProcessTable(stack_dir, tie_to_parent=False)
    record = table.start("sleeper", ["sleep", "60"])
    (stack_dir / "owner.pid").write_text("999999999\n")  # above pid_max: never alive
    assert reap_stale(tmp_path) == [stack_dir]
    assert not alive(record)
    assert not stack_dir.exists()


def test_wait_for_returns_the_first_truthy_result_or_names_what_never_happened() -> None:
    from hftpipe_devstack.testing import wait_for  # noqa: PLC0415

    answers = iter([None, False, {"ready": True}])
    assert wait_for(lambda: next(answers), 5, "readiness", interval=0.001) == {"ready": True}
    with pytest.raises(AssertionError, match="waiting for the moon"):
        wait_for(lambda: None, 0.05, "the moon", interval=0.01)
