"""The testbed's PKI: one CA, serving certificates, client certificates and the service-account key."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vk8s.testbed.config import LOOPBACK

# The first address of the service range, which the apiserver gives the `kubernetes` Service.
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
_VALIDITY = datetime.timedelta(days=365)
APISERVER_KUBELET_CLIENT = "kube-apiserver-kubelet-client"
# EC keys: generating eight RSA keys would cost about a second of the start budget.
_CURVE = ec.SECP256R1()


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: KeyPair
    apiserver: KeyPair
    apiserver_kubelet_client: KeyPair
    kwok_serving: KeyPair
    service_account_key: Path
    service_account_pub: Path
    admin: KeyPair
    controller_manager: KeyPair
    scheduler: KeyPair
    kwok: KeyPair


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _save(directory: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> KeyPair:
    pair = KeyPair(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")
    _write_key(pair.key, key)
    _write_cert(pair.cert, cert)
    return pair


class _Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def load(cls, pair: KeyPair) -> _Authority:
        """The CA that `write_pki` saved, to issue certificates after the start (real host nodes)."""
        authority = cls.__new__(cls)
        authority.now = datetime.datetime.now(datetime.UTC)
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey), "the testbed CA key is an EC key"
        authority.key = key
        authority.cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
        return authority

    def __init__(self, common_name: str, now: datetime.datetime) -> None:
        self.now = now
        self.key = ec.generate_private_key(_CURVE)
        subject = _name(common_name)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + 10 * _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self,
        common_name: str,
        *,
        organizations: tuple[str, ...] = (),
        server: bool = False,
        client: bool = False,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(_CURVE)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organizations))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - datetime.timedelta(minutes=5))
            .not_valid_after(self.now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())


def write_pki(directory: Path) -> Pki:
    """Creates a fresh PKI under `directory`, shaped like kubeadm's /etc/kubernetes/pki."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca = _Authority("vk8s-testbed-ca", datetime.datetime.now(datetime.UTC))

    loopback = (LOOPBACK,)
    apiserver_names = (
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    )
    pairs = {
        "apiserver": ca.issue(
            "kube-apiserver",
            server=True,
            dns_names=apiserver_names,
            ip_addresses=(LOOPBACK, KUBERNETES_SERVICE_IP),
        ),
        "apiserver-kubelet-client": ca.issue(
            APISERVER_KUBELET_CLIENT, organizations=("kubeadm:cluster-admins",), client=True
        ),
        # kwok plays every simulated node's kubelet; the apiserver verifies this certificate on exec.
        "kwok-serving": ca.issue("kwok-kubelet", server=True, dns_names=("localhost",), ip_addresses=loopback),
        "admin": ca.issue("vk8s-admin", organizations=("system:masters",), client=True),
        "controller-manager": ca.issue("system:kube-controller-manager", client=True),
        "scheduler": ca.issue("system:kube-scheduler", client=True),
        # kwok writes status for every simulated node and pod, which no per-node identity may do.
        "kwok": ca.issue("vk8s-kwok", organizations=("system:masters",), client=True),
    }
    saved = {stem: _save(directory, stem, key, cert) for stem, (key, cert) in pairs.items()}

    ca_pair = KeyPair(cert=directory / "ca.crt", key=directory / "ca.key")
    _write_key(ca_pair.key, ca.key)
    _write_cert(ca_pair.cert, ca.cert)

    sa_key = ec.generate_private_key(_CURVE)
    sa_key_path, sa_pub_path = directory / "sa.key", directory / "sa.pub"
    _write_key(sa_key_path, sa_key)
    sa_pub_path.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return Pki(
        ca=ca_pair,
        apiserver=saved["apiserver"],
        apiserver_kubelet_client=saved["apiserver-kubelet-client"],
        kwok_serving=saved["kwok-serving"],
        service_account_key=sa_key_path,
        service_account_pub=sa_pub_path,
        admin=saved["admin"],
        controller_manager=saved["controller-manager"],
        scheduler=saved["scheduler"],
        kwok=saved["kwok"],
    )


def write_node_credentials(pki: Pki, directory: Path, node: str, address: str) -> tuple[KeyPair, KeyPair]:
    """A real host node's kubelet identity (`system:node:<node>`, as the Node authorizer wants) and
    its serving certificate, which the apiserver verifies on exec and logs. Returns (client, serving)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca = _Authority.load(pki.ca)
    issued = {
        "kubelet-client": ca.issue(f"system:node:{node}", organizations=("system:nodes",), client=True),
        "kubelet-serving": ca.issue(node, server=True, dns_names=(node,), ip_addresses=(address,)),
    }
    client, serving = (_save(directory, stem, key, cert) for stem, (key, cert) in issued.items())
    return client, serving
