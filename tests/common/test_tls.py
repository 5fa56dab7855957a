"""TLS: rediss:// with a CA (and a client certificate) that the test makes, against a real
redis-server listening on a TLS port only."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from facestream.common.settings import Settings
from facestream.common.streams.connection import async_client, sync_client
from facestream.control.embedded import EmbeddedRedis, free_port
from facestream.detector.worker import Detector
from facestream.ingest.publisher import Publisher, make_event
from tests.support.helpers import wait_results


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, key: Any, cert: x509.Certificate) -> None:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(tmp: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("facestream test CA"))
        .issuer_name(_name("facestream test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write(tmp / "ca", ca_key, ca)
    for name, sans in (
        ("server", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        ("client", [x509.DNSName("facestream-client")]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(tmp / name, key, cert)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    pki = tmp_path_factory.mktemp("pki")
    make_pki(pki)
    port = free_port()
    server = EmbeddedRedis(
        tmp_path_factory.mktemp("tls-redis"),
        port=free_port(),
        extra_args=(
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(pki / "server.crt"),
            "--tls-key-file",
            str(pki / "server.key"),
            "--tls-ca-cert-file",
            str(pki / "ca.crt"),
            "--tls-auth-clients",
            "yes",
        ),
    )
    url = f"rediss://127.0.0.1:{port}/0"
    try:
        server.start(probe=lambda: sync_client(tls_settings(url, pki)))
    except Exception as exc:  # a redis-server built without TLS
        pytest.skip(f"this redis-server cannot serve TLS: {exc}")
    try:
        yield url, pki
    finally:
        server.stop()


def tls_settings(url: str, pki: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": url,
        "prefix": "tls",
        "consumer": "tls-1",
        "block_ms": 100,
        "tls_ca_file": str(pki / "ca.crt"),
        "tls_cert_file": str(pki / "client.crt"),
        "tls_key_file": str(pki / "client.key"),
    }
    values.update(extra)
    return Settings(**values)


def test_detector_and_publisher_over_tls(
    tls_server: tuple[str, Path], builtin_model: Any, photo_png: dict[str, bytes]
) -> None:
    url, pki = tls_server
    settings = tls_settings(url, pki)
    Publisher(settings, sync_client(settings)).publish(make_event(photo_png["camera"], "tls"))

    async def main() -> list[dict[str, Any]]:
        client = async_client(settings)
        det = Detector(settings, client, builtin_model)
        task = asyncio.create_task(det.run())
        from facestream.common.contract.keys import Keys

        got = await wait_results(client, Keys("tls"), 1)
        det.stop.set()
        await task
        await client.aclose()
        return got

    [result] = asyncio.run(main())
    assert result["id"] == "tls" and len(result["faces"]) == 1


def test_tls_refuses_unknown_ca_and_missing_client_certificate(
    tls_server: tuple[str, Path], tmp_path: Path
) -> None:
    url, pki = tls_server
    other = tmp_path / "other"
    other.mkdir()
    make_pki(other)  # a CA the server does not know
    wrong_ca = tls_settings(url, pki, tls_ca_file=str(other / "ca.crt"))
    with pytest.raises(redis.ConnectionError):
        sync_client(wrong_ca).ping()
    no_client_cert = tls_settings(url, pki, tls_cert_file=None, tls_key_file=None)
    with pytest.raises(redis.ConnectionError):
        sync_client(no_client_cert).ping()
    assert sync_client(tls_settings(url, pki)).ping()
