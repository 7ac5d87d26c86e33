"""The pure parts of the cluster images' builder: recipes, cache keys, tool arguments."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from hftpipe_devstack import images, install, versions

HOST_SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def test_debian_mirror_is_the_main_archive() -> None:
    assert images.debian_mirror(HOST_SOURCES) == "http://deb.debian.org/debian"
    with pytest.raises(install.InstallError, match="no Debian mirror"):
        images.debian_mirror(HOST_SOURCES, suite="trixie")


def test_rootfs_sources_keep_updates_and_security() -> None:
    text = images.rootfs_sources(HOST_SOURCES)
    assert images.debian_sources(text) == [
        ("http://deb.debian.org/debian", ["bookworm", "bookworm-updates"]),
        ("http://deb.debian.org/debian-security", ["bookworm-security"]),
    ]
    assert "snapshot" not in text


def test_python_standin_is_labelled_and_laid_out_as_the_official_image() -> None:
    standin = images.PYTHON_STANDIN
    args = images.standin_config_args(standin, {"python3": "3.11.2-1+b1"})
    labels = [args[i + 1] for i, a in enumerate(args) if a == "--label"]
    assert "io.hftpipe.stand-in=true" in labels
    assert any(
        label.startswith("org.opencontainers.image.description=Local stand-in for python:3.11")
        and "not the official image" in label
        for label in labels
    )
    assert "io.hftpipe.stand-in.packages=python3=3.11.2-1+b1" in labels
    envs = [args[i + 1] for i, a in enumerate(args) if a == "--env"]
    assert envs == [
        "PATH=/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG=C.UTF-8",
    ]
    assert args[args.index("--cmd") + 1] == '["python3"]'
    links = dict(standin.symlinks)
    assert {"usr/local/bin/python", "usr/local/bin/python3", "usr/local/bin/pip"} <= set(links)
    assert "usr/lib/python3.11/EXTERNALLY-MANAGED" in standin.remove
    assert standin.ref == "docker.io/library/python:3.11-slim-bookworm"


def test_redis_standin_names_debians_version() -> None:
    assert images.REDIS_IMAGE == "localhost/hftpipe-standin/redis:7.0-bookworm"
    assert "python3" not in images.REDIS_STANDIN.packages
    assert ("data", 0o1777) in images.REDIS_STANDIN.dirs


def test_standin_key_changes_with_its_packages() -> None:
    other = images.StandIn(
        **{**images.PYTHON_STANDIN.__dict__, "packages": ("python3", "python3-pip")}
    )
    assert images.standin_key(other) != images.standin_key(images.PYTHON_STANDIN)
    assert images.standin_key(images.PYTHON_STANDIN) == images.standin_key(images.PYTHON_STANDIN)


def test_scratch_image_key_follows_file_content(tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(b"one")
    image = images.pause_image(binary, "3.10.1")
    first = image.key()
    binary.write_bytes(b"two")
    assert image.key() != first
    args = image.config_args()
    assert args[args.index("--entrypoint") + 1] == '["/pause"]'
    assert image.ref == "registry.k8s.io/pause:3.10"


def test_busybox_applets_and_image() -> None:
    applets = images.busybox_applets("sh\nls\nmkdir\n\nbusybox\n../evil\nrm\nchmod\n")
    assert applets == ["chmod", "ls", "mkdir", "rm", "sh"]
    image = images.busybox_image(Path("/usr/bin/busybox"), applets, "1:1.35.0")
    links = {f.path: f.link for f in image.files if f.link}
    assert links["/bin/sh"] == "busybox"
    assert image.ref == images.BUSYBOX_IMAGE


def test_tar_files_is_root_owned_with_parents_and_links(tmp_path: Path) -> None:
    binary = tmp_path / "binary"
    binary.write_bytes(b"\x7fELF")
    out = tmp_path / "files.tar"
    files = (
        images.ScratchFile("/usr/bin/tool", binary),
        images.ScratchFile("/usr/bin/alias", link="tool"),
    )
    images._tar_files(files, (("tmp", 0o1777),), out)
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert list(members)[:2] == ["tmp", "usr"]
    assert members["usr/bin"].isdir()
    assert members["usr/bin/tool"].mode == 0o755
    assert members["usr/bin/alias"].issym()
    assert members["tmp"].mode == 0o1777
    assert {(m.uid, m.gid) for m in members.values()} == {(0, 0)}


def test_pause_source_tag() -> None:
    assert images.pause_source_tag("REGISTRY ?= x\nTAG ?= 3.10.1\nREV = 1\n") == "3.10.1"
    with pytest.raises(install.InstallError):
        images.pause_source_tag("nothing")


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        (".git/config", True),
        ("workers/src/hftpipe_workers/__pycache__/x.pyc", True),
        ("__pycache__/x.pyc", True),
        ("tests/unit/test_images.py", True),
        ("bench/results/run.json", True),
        ("bench/run.py", False),
        ("workers/src/hftpipe_workers/cli.py", False),
        ("keep/tests.txt", False),
    ],
)
def test_dockerignore_as_docker_matches(path: str, excluded: bool) -> None:
    patterns = images.dockerignore_patterns(
        ".git\n# comment\n**/__pycache__\ntests\nbench/results\n"
    )
    assert images.dockerignored(patterns, path) is excluded


def test_dockerignore_exception_reincludes() -> None:
    patterns = images.dockerignore_patterns("docs\n!docs/keep.md\n")
    assert images.dockerignored(patterns, "docs/other.md")
    assert not images.dockerignored(patterns, "docs/keep.md")


def test_context_digest_ignores_what_the_context_leaves_out(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("tests\n")
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "app.py").write_text("print(1)\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.py").write_text("x\n")
    files = ["Dockerfile", "app.py", "tests/t.py", ".dockerignore"]

    def digest(base: str = "sha256:a") -> str:
        return images.context_digest(tmp_path, files, "Dockerfile", base, "img:1")

    first = digest()
    (tmp_path / "tests" / "t.py").write_text("changed\n")
    assert digest() == first
    assert digest("sha256:b") != first
    (tmp_path / "app.py").write_text("print(2)\n")
    second = digest()
    assert second != first
    (tmp_path / "app.py").chmod(0o755)
    assert digest() != second
    (tmp_path / "app.py").unlink()
    assert digest() not in {first, second}


def test_recipe_digest_is_unambiguous() -> None:
    assert images.recipe_digest(["ab", "c"]) != images.recipe_digest(["a", "bc"])


def test_bud_args_use_the_local_base_host_network_and_our_storage(tmp_path: Path) -> None:
    storage = images.BuildahStorage(root=tmp_path / "s", runroot=tmp_path / "r")
    args = images.bud_args(
        storage,
        Path("/repo"),
        "workers/Dockerfile",
        images.WORKERS_IMAGE,
        uv_cache=tmp_path / "uv",
    )
    assert args[:6] == [
        "buildah",
        "--root",
        str(tmp_path / "s"),
        "--runroot",
        str(tmp_path / "r"),
        "--storage-driver",
    ]
    for flag in ("--pull=never", "--network=host", "--layers"):
        assert flag in args
    assert args[args.index("-f") + 1] == "/repo/workers/Dockerfile"
    assert args[args.index("-t") + 1] == "docker.io/library/hftpipe-workers:0.1.0"
    assert args[args.index("--volume") + 1] == f"{tmp_path / 'uv'}:/root/.cache/uv"
    assert args[-1] == "/repo"
    assert "--volume" not in images.bud_args(storage, Path("/r"), "D", "t", uv_cache=None)
    assert "--label" not in args  # labels would bust buildah's layer cache


def test_project_labels_undo_the_stand_ins() -> None:
    labels = images.project_labels(images.OPERATOR_IMAGE, "operator/Dockerfile", "sha256:b")
    assert labels["io.hftpipe.stand-in"] == "false"
    assert labels["io.hftpipe.stand-in.for"] == ""
    assert labels["io.hftpipe.base.stand-in"] == "true"
    assert "operator/Dockerfile" in labels["org.opencontainers.image.description"]


def test_containerd_config_keeps_everything_under_its_directory(tmp_path: Path) -> None:
    text = images.containerd_config(tmp_path / "root", tmp_path / "state", tmp_path / "c.sock")
    assert text.startswith("version = 2\n")
    assert f'root = "{tmp_path}/root"' in text
    assert f'state = "{tmp_path}/state"' in text
    assert f'[grpc]\n  address = "{tmp_path}/c.sock"' in text
    assert "/run/containerd" not in text


def test_ctr_arguments() -> None:
    sock = Path("/tmp/x/containerd.sock")
    assert images.ctr_import_args(sock, Path("/a/image.oci.tar")) == [
        "ctr", "--address", str(sock), "--namespace", "k8s.io", "images", "import",
        "--snapshotter", "overlayfs", "/a/image.oci.tar",
    ]  # fmt: skip
    run = images.ctr_run_args(sock, images.WORKERS_IMAGE, "id1", ["python3", "-V"], read_only=True)
    assert run[:6] == ["ctr", "--address", str(sock), "--namespace", "k8s.io", "run"]
    assert run[6:] == ["--rm", "--read-only", images.WORKERS_IMAGE, "id1",
                       "python3", "-V"]  # fmt: skip


def test_mounts_under_lists_deepest_first() -> None:
    mountinfo = (
        "36 25 0:32 / /proc rw - proc proc rw\n"
        "40 25 0:40 / /tmp/c/root/a rw - overlay overlay rw\n"
        "41 40 0:41 / /tmp/c/root/a/b rw - tmpfs tmpfs rw\n"
        "42 25 0:42 / /tmp/cc rw - tmpfs tmpfs rw\n"
    )
    assert images.mounts_under(mountinfo, Path("/tmp/c")) == ["/tmp/c/root/a/b", "/tmp/c/root/a"]


def test_oci_archive_image_id(tmp_path: Path) -> None:
    config = "sha256:" + "c" * 64
    manifest = json.dumps({"config": {"digest": config}}).encode()
    index = json.dumps({"manifests": [{"digest": "sha256:" + "m" * 64}]}).encode()
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in (("index.json", index), ("blobs/sha256/" + "m" * 64, manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert images.oci_archive_image_id(archive) == config


def test_cluster_images_cover_every_reference() -> None:
    assert set(images.CLUSTER_IMAGES.values()) == {
        images.PAUSE_IMAGE,
        images.COREDNS_IMAGE,
        images.LOCAL_PATH_IMAGE,
        images.BUSYBOX_IMAGE,
        images.REDIS_IMAGE,
        images.OPERATOR_IMAGE,
        images.WORKERS_IMAGE,
    }
    assert images.COREDNS_IMAGE.endswith(f":{versions.COREDNS}")
    assert images.LOCAL_PATH_IMAGE.endswith(f":v{versions.LOCAL_PATH_PROVISIONER}")
    tested = {t.ref for t in images.SMOKE_TESTS}
    assert set(images.CLUSTER_IMAGES.values()) <= tested


def test_build_trust_mounts_the_hosts_bundle_for_the_build_only(tmp_path: Path) -> None:
    host = tmp_path / "host.crt"
    assert images.build_trust(host, tmp_path / "trust") is None
    host.write_text("-----BEGIN CERTIFICATE-----\n")
    bundle = images.build_trust(host, tmp_path / "trust")
    assert bundle is not None
    assert bundle.read_text() == host.read_text()
    assert (bundle.parent / images.UV_NATIVE_TLS).read_text() == "native-tls = true\n"
    storage = images.BuildahStorage(root=tmp_path / "s", runroot=tmp_path / "r")
    args = images.bud_args(storage, Path("/r"), "D", "t", uv_cache=None, trust=bundle)
    volumes = [args[i + 1] for i, a in enumerate(args) if a == "--volume"]
    assert volumes == [
        f"{bundle}:/etc/ssl/certs/ca-certificates.crt:ro",
        f"{bundle.parent / images.UV_NATIVE_TLS}:/etc/uv/uv.toml:ro",
    ]
