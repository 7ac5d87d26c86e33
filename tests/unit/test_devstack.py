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

from hftpipe_devstack import install, kubeschemas, thirdparty, versions
from hftpipe_devstack.components import (
    STANDARD_AUTHORIZER,
    KafkaScram,
    kafka_cluster_id,
    kafka_server_properties,
    scram_env,
)
from hftpipe_devstack.procs import ProcessTable, ProcRecord, alive, start_ticks
from hftpipe_devstack.stack import reap_stale
from hftpipe_workers.settings import KafkaSettings

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


def test_a_scram_broker_authenticates_every_listener_and_enforces_acls(tmp_path: Path) -> None:
    scram = KafkaScram(password="pw")
    props = dict(
        line.split("=", 1)
        for line in kafka_server_properties(
            port=9092, controller_port=9093, log_dir=tmp_path, scram=scram
        ).splitlines()
    )
    assert props["listeners"] == "SASL_PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["listener.security.protocol.map"] == (
        "CONTROLLER:SASL_PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
    )
    assert props["inter.broker.listener.name"] == "SASL_PLAINTEXT"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["authorizer.class.name"] == STANDARD_AUTHORIZER
    assert props["super.users"] == "User:admin"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    jaas = props["listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config"]
    assert 'username="admin" password="pw"' in jaas
    assert scram.format_args() == ["--add-scram=SCRAM-SHA-512=[name=admin,password=pw]"]


def test_the_default_broker_stays_plaintext_without_authorizer(tmp_path: Path) -> None:
    text = kafka_server_properties(port=9092, controller_port=9093, log_dir=tmp_path)
    assert "sasl" not in text
    assert "authorizer" not in text


def test_scram_env_is_what_the_workers_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in scram_env(KafkaScram(admin="root", password="pw").client_config()).items():
        monkeypatch.setenv(key, value)
    common = KafkaSettings().common()
    assert common["security.protocol"] == "SASL_PLAINTEXT"
    assert common["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (common["sasl.username"], common["sasl.password"]) == ("root", "pw")


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


# ------------------------------------------------ third-party CRDs, schemas, tools

STRIMZI_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <build><plugins><plugin>
    <artifactId>exec-maven-plugin</artifactId>
    <executions>
      <execution>
        <id>generate-crd-co-install-v1</id>
        <configuration><arguments>
          <argument>-classpath</argument>
          <argument>${project.basedir}/target/classes</argument>
          <argument>io.strimzi.crdgenerator.CrdGenerator</argument>
          <argument>--api-versions</argument><argument>v1</argument>
          <argument>--yaml</argument>
          <argument>io.strimzi.api.kafka.model.kafka.Kafka=${project.basedir}${file.separator}..${file.separator}packaging${file.separator}install${file.separator}cluster-operator${file.separator}040-Crd-kafka.yaml</argument>
        </arguments></configuration>
      </execution>
      <execution>
        <id>generate-crd-co-install-v1-eo</id>
        <configuration><arguments>
          <argument>-classpath</argument><argument>x</argument>
          <argument>io.strimzi.crdgenerator.CrdGenerator</argument>
          <argument>--api-versions</argument><argument>v1beta2,v1</argument>
          <argument>io.strimzi.api.kafka.model.topic.KafkaTopic=cluster-operator/043-Crd-kafkatopic.yaml</argument>
        </arguments></configuration>
      </execution>
      <execution>
        <id>generate-crd-tests-v1</id>
        <configuration><arguments>
          <argument>io.strimzi.crdgenerator.CrdGenerator</argument><argument>--yaml</argument>
        </arguments></configuration>
      </execution>
      <execution>
        <id>generate-doc</id>
        <configuration><arguments>
          <argument>io.strimzi.crdgenerator.DocGenerator</argument>
        </arguments></configuration>
      </execution>
    </executions>
  </plugin></plugins></build>
</project>
"""


def test_strimzi_generator_runs_are_the_install_executions_redirected(tmp_path: Path) -> None:
    runs = thirdparty.strimzi_generator_runs(STRIMZI_POM, tmp_path)
    assert runs == [
        [
            "--api-versions",
            "v1",
            "--yaml",
            f"io.strimzi.api.kafka.model.kafka.Kafka={tmp_path / '040-Crd-kafka.yaml'}",
        ],
        [
            "--api-versions",
            "v1beta2,v1",
            f"io.strimzi.api.kafka.model.topic.KafkaTopic={tmp_path / '043-Crd-kafkatopic.yaml'}",
        ],
    ]  # no classpath, no test or doc executions


def test_strimzi_generator_runs_refuses_a_pom_without_them(tmp_path: Path) -> None:
    with pytest.raises(install.InstallError, match="generate-crd-co-install"):
        thirdparty.strimzi_generator_runs(
            '<project xmlns="http://maven.apache.org/POM/4.0.0"/>', tmp_path
        )


def test_skaffold_versions_sort_as_skaffold_releases_them() -> None:
    ordered = ["v1alpha5", "v1beta2", "v1beta29", "v1", "v2alpha4", "v2beta9", "v2beta29"]
    ordered += ["v3alpha1", "v3", "v4beta1", "v4beta9", "v4beta13"]
    assert sorted(reversed(ordered), key=thirdparty.skaffold_version_key) == ordered
    names = ["v4beta9.json", "v4beta13.json", "v3.json", "version-mappings", "v4beta10.json"]
    assert thirdparty.newest_skaffold_schema(names) == "v4beta13"
    with pytest.raises(ValueError, match="skaffold config version"):
        thirdparty.skaffold_version_key("latest")


def test_skaffold_latest_api_version_is_read_from_its_config_go() -> None:
    config_go = (
        'package latest\n\n// Version is the latest.\nconst Version string = "skaffold/v4beta13"\n'
    )
    assert thirdparty.skaffold_latest_api_version(config_go) == "skaffold/v4beta13"
    with pytest.raises(ValueError, match="const Version"):
        thirdparty.skaffold_latest_api_version("package latest\n")


def test_go_mod_require_finds_block_and_single_line_requirements() -> None:
    go_mod = (
        "module m\n\ngo 1.24\n\nrequire x.io/a v1.2.3\n\nrequire (\n\tsigs.k8s.io/kind v0.30.0\n)\n"
    )
    assert thirdparty.go_mod_require(go_mod, "x.io/a") == "v1.2.3"
    assert thirdparty.go_mod_require(go_mod, "sigs.k8s.io/kind") == "v0.30.0"
    with pytest.raises(ValueError, match="does not require"):
        thirdparty.go_mod_require(go_mod, "sigs.k8s.io/kin")


def test_kindcheck_go_mod_pins_the_kind_version_of_versions_py() -> None:
    go_mod = (thirdparty.KINDCHECK_SOURCE / "go.mod").read_text()
    assert thirdparty.go_mod_require(go_mod, "sigs.k8s.io/kind") == f"v{versions.KIND}"


def test_zip_members_lists_one_directory_of_a_go_module_zip() -> None:
    root = "example.com/m@v1.0.0/"
    names = [
        f"{root}example/crd/a.yaml",
        f"{root}example/crd/b.yaml",
        f"{root}example/crd/sub/c.yaml",
        f"{root}example/crd-full/a.yaml",
        "example.com/m@v1.0.1/example/crd/a.yaml",
    ]
    assert thirdparty.zip_members(names, "example.com/m", "v1.0.0", "example/crd/") == [
        f"{root}example/crd/a.yaml",
        f"{root}example/crd/b.yaml",
    ]


def test_load_crds_reads_yaml_1_1_equals_values(tmp_path: Path) -> None:
    """The Prometheus Operator's CRDs list a bare ``=`` as an enum value."""
    (tmp_path / "x.yaml").write_text(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n"
        "spec:\n  enum:\n  - =\n  - '!='\n---\nkind: ConfigMap\n"
    )
    (crd,) = thirdparty.load_crds(tmp_path)
    assert crd["spec"]["enum"] == ["=", "!="]


SAMPLE_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "kafkatopics.kafka.strimzi.io"},
    "spec": {
        "group": "kafka.strimzi.io",
        "names": {"kind": "KafkaTopic", "plural": "kafkatopics"},
        "versions": [
            {"name": "v1", "served": True, "storage": True},
            {"name": "v1beta2", "served": False, "storage": False},
        ],
    },
}


def test_crd_schema_paths_are_where_kubeconform_looks_for_served_versions() -> None:
    assert thirdparty.served_versions(SAMPLE_CRD) == ["v1"]
    assert kubeschemas.crd_schema_paths([SAMPLE_CRD]) == {"kafka.strimzi.io/kafkatopic_v1.json"}


def test_kubeschemas_converts_crd_kinds_and_their_int_or_string_fields() -> None:
    openapi = {
        "definitions": {
            "io.strimzi.kafka.v1.KafkaTopic": {
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "properties": {
                            "port": {"x-kubernetes-int-or-string": True},
                            "config": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            },
                        },
                    }
                },
                "x-kubernetes-group-version-kind": [
                    {"group": "kafka.strimzi.io", "version": "v1", "kind": "KafkaTopic"}
                ],
            }
        }
    }
    schema = kubeschemas.convert(openapi)["kafka.strimzi.io/kafkatopic_v1.json"]
    assert schema["properties"]["apiVersion"]["enum"] == ["kafka.strimzi.io/v1"]
    spec = schema["properties"]["spec"]
    assert spec["additionalProperties"] is False
    assert spec["properties"]["port"]["oneOf"] == [{"type": "string"}, {"type": "integer"}]
    assert "additionalProperties" not in spec["properties"]["config"]


def test_completed_sees_only_finished_installs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(install.CACHE_ENV, str(tmp_path))
    assert install.completed("tool-1.0") is None
    (tmp_path / "tool-1.0").mkdir()
    assert install.completed("tool-1.0") is None  # half-made: no marker
    (tmp_path / "tool-1.0" / ".complete").write_text("now\n")
    assert install.completed("tool-1.0") == tmp_path / "tool-1.0"
    with pytest.raises(install.InstallError, match="hftpipe_devstack install"):
        thirdparty.skaffold_schema()  # not in this empty cache: says how to fetch it


def test_free_port_never_hands_out_the_same_port_twice() -> None:
    """A stack picks all its ports before it starts anything: a port handed out twice
    is two services on one port (a CI run once started Kafka on etcd's)."""
    from hftpipe_devstack.procs import free_port  # noqa: PLC0415

    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)


def test_a_service_is_not_started_on_a_port_in_use(tmp_path: Path) -> None:
    import socket  # noqa: PLC0415

    from hftpipe_devstack.procs import StartError  # noqa: PLC0415

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        table = ProcessTable(tmp_path, tie_to_parent=True)
        with pytest.raises(StartError, match=rf"kafka: port {port} on 127.0.0.1 is already in use"):
            table.start("kafka", ["sleep", "30"], ports=[port])
        assert table.records() == []


def test_maven_pom_depends_on_exactly_the_coordinates() -> None:
    import xml.etree.ElementTree as ET  # noqa: PLC0415

    ns = "{http://maven.apache.org/POM/4.0.0}"
    pom = ET.fromstring(install.maven_pom(["io.strimzi:api:1.2.0", "org.a:b_2.13:4.1.1"]))  # noqa: S314 - our own text
    deps = [
        ":".join(d.findtext(f"{ns}{k}") or "" for k in ("groupId", "artifactId", "version"))
        for d in pom.iter(f"{ns}dependency")
    ]
    assert deps == ["io.strimzi:api:1.2.0", "org.a:b_2.13:4.1.1"]
    assert pom.findtext(f"{ns}packaging") == "pom"


def test_the_devstack_uv_pin_is_the_makefiles() -> None:
    """Two places name uv's version (the Makefile installs it, install.uv() finds it in
    the cache by versions.UV): a bump of one alone would run another uv than the pin."""
    from dockerfile import makefile_uv_version  # noqa: PLC0415

    assert makefile_uv_version(Path(__file__).resolve().parents[2]) == versions.UV


def test_cluster_up_installs_both_charts_with_only_the_overrides_this_machine_forces() -> None:
    """What ``make cluster-up`` (and the node tier) installs: the README's helm commands
    for kind, plus exactly the two overrides no registry forces (no Strimzi objects;
    the Redis stand-in image), nothing that would hide a broken sample or chart."""
    from hftpipe_devstack import images  # noqa: PLC0415
    from hftpipe_devstack.cluster import release_installs  # noqa: PLC0415

    installs = release_installs()
    assert [release for release, _, _ in installs] == ["hftpipe-stack", "hftpipe-operator"]
    for _, chart, args in installs:
        assert (chart / "Chart.yaml").is_file()
        values = args[args.index("-f") + 1]
        assert values == str(chart / "values-kind.yaml")
        assert Path(values).is_file()
    sets = {
        args[i + 1] for _, _, args in installs for i, token in enumerate(args) if token == "--set"
    }
    repository, tag = images.REDIS_IMAGE.rsplit(":", 1)
    assert sets == {
        "kafka.enabled=false",
        f"redis.image.repository={repository}",
        f"redis.image.tag={tag}",
    }


def test_a_failed_cluster_command_stops_even_under_python_o() -> None:
    """``make cluster-up`` installs the charts through Cluster: a failed command must raise
    (CommandError, naming it and its output), not rest on an ``assert``, which ``python
    -O`` drops."""
    script = (
        "import sys, types\n"
        "from hftpipe_devstack.cluster import Cluster\n"
        "stack = types.SimpleNamespace(env={'KUBECTL': '/bin/kubectl', 'HELM': '/bin/helm'})\n"
        "try:\n"
        "    Cluster(stack).run(sys.executable, '-c', 'print(\"out\"); raise SystemExit(3)')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, 'out' in str(exc))\n"
    )
    done = subprocess.run(
        [sys.executable, "-O", "-c", script], capture_output=True, text=True, check=False
    )
    assert done.stdout.strip() == "CommandError True", done.stdout + done.stderr
