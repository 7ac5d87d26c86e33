"""Certificates and keys for the local Kubernetes control plane.

A throwaway CA signs the API server's serving certificate and the client
certificates of the admin user (group ``system:masters``) and of
kube-controller-manager, so the API server runs with client-certificate
authentication and RBAC on, as a real cluster does. Generated with the
``cryptography`` library rather than by shelling out to openssl.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=30)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


@dataclass(frozen=True)
class CertFiles:
    """Paths of a certificate and its key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ControlPlanePki:
    """Every file the control plane and its clients need."""

    ca: CertFiles
    apiserver: CertFiles
    admin: CertFiles
    controller_manager: CertFiles
    service_account_key: Path
    service_account_pub: Path
    scheduler: CertFiles
    kubelet_client: CertFiles
    """The API server's client certificate towards kubelets (logs, exec, port-forward)."""
    node: CertFiles
    """The kubelet's client certificate: ``system:node:<name>`` in ``system:nodes``, which
    the Node authorizer and the NodeRestriction admission plugin key on."""
    node_serving: CertFiles
    """The kubelet's serving certificate (its HTTPS port), for the node's IP."""
    kube_proxy: CertFiles


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def generate(
    directory: Path,
    *,
    server_ips: tuple[str, ...] = ("127.0.0.1",),
    node_name: str = "hftpipe-node",
    node_ip: str = "127.0.0.1",
) -> ControlPlanePki:
    """Write a fresh CA, serving and client certificates and the SA key pair.

    ``server_ips`` are the API server's addresses (its bind address, and the first IP
    of the service range, which pods reach it at as ``kubernetes.default``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)

    ca_key = _key()
    ca_name = _name("hftpipe-local-ca")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def issue(
        stem: str, subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]
    ) -> CertFiles:
        key = _key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return CertFiles(
            cert=_write(directory / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM)),
            key=_write(directory / f"{stem}.key", _pem_key(key)),
        )

    ca = CertFiles(
        cert=_write(directory / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM)),
        key=_write(directory / "ca.key", _pem_key(ca_key)),
    )
    server_sans: list[x509.GeneralName] = [
        *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in dict.fromkeys(server_ips)),
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default"),
        x509.DNSName("kubernetes.default.svc"),
        x509.DNSName("kubernetes.default.svc.cluster.local"),
    ]
    apiserver = issue(
        "apiserver", _name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, server_sans
    )
    admin = issue(
        "admin", _name("hftpipe-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, []
    )
    controller_manager = issue(
        "controller-manager",
        _name("system:kube-controller-manager"),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [],
    )
    scheduler = issue(
        "scheduler", _name("system:kube-scheduler"), ExtendedKeyUsageOID.CLIENT_AUTH, []
    )
    kubelet_client = issue(
        "apiserver-kubelet-client",
        _name("kube-apiserver-kubelet-client", "system:masters"),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [],
    )
    node = issue(
        "node",
        _name(f"system:node:{node_name}", "system:nodes"),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [],
    )
    node_serving = issue(
        "node-serving",
        _name(node_name),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address(node_ip)), x509.DNSName(node_name)],
    )
    kube_proxy = issue(
        "kube-proxy", _name("system:kube-proxy"), ExtendedKeyUsageOID.CLIENT_AUTH, []
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_priv = _write(directory / "sa.key", _pem_key(sa_key))
    sa_pub = _write(
        directory / "sa.pub",
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    return ControlPlanePki(
        ca,
        apiserver,
        admin,
        controller_manager,
        sa_priv,
        sa_pub,
        scheduler=scheduler,
        kubelet_client=kubelet_client,
        node=node,
        node_serving=node_serving,
        kube_proxy=kube_proxy,
    )


def kubeconfig(server: str, ca: Path, client: CertFiles, *, user: str) -> str:
    """A kubeconfig (YAML text) for ``server`` authenticating with a client certificate."""
    import yaml  # noqa: PLC0415 - keeps the module importable for pure cert work

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "hftpipe-local",
                "cluster": {"server": server, "certificate-authority": str(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate": str(client.cert), "client-key": str(client.key)},
            }
        ],
        "contexts": [
            {
                "name": "hftpipe-local",
                "context": {"cluster": "hftpipe-local", "user": user, "namespace": "default"},
            }
        ],
        "current-context": "hftpipe-local",
    }
    return yaml.safe_dump(doc, sort_keys=False)
