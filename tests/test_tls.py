"""TLS for real: a CA and a server certificate made in the test (``cryptography``), a server
run with them and the secure profile, a client trusting that CA connecting, and clients with a
wrong CA or none refused with a ConfigError (one line from the CLI) in bounded time."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers_projections import ROOT

from consumers import ProjectionClient
from eventstore import (
    AuthProfile,
    ConfigError,
    EmbeddedServer,
    EventStore,
    NewEvent,
    StreamSettings,
    init_auth,
)
from eventstore.server import free_port

SETTINGS = StreamSettings(name="TLS", prefix="tls")


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _write(path: Path, key: ec.EllipticCurvePrivateKey | None, cert: x509.Certificate) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """``ca.pem`` (the right CA), ``other.pem`` (a wrong one), ``server.pem``/``server.key``."""
    ca_key, ca = _ca("eventstore test CA")
    _write(tmp_path / "ca", None, ca)
    _write(tmp_path / "other", None, _ca("some other CA")[1])
    _write(tmp_path / "server", *_server_cert(ca_key, ca))
    return tmp_path


@pytest.fixture
def profile(tmp_path: Path) -> AuthProfile:
    return init_auth(tmp_path / "auth", SETTINGS)


@pytest.fixture
def server(tmp_path: Path, pki: Path, profile: AuthProfile) -> Iterator[EmbeddedServer]:
    s = EmbeddedServer(
        tmp_path / "nats", port=free_port(), include=profile.include,
        tls_cert=pki / "server.pem", tls_key=pki / "server.key",
    )  # fmt: skip
    s.start()
    yield s
    s.stop()


async def test_a_client_trusting_the_ca_connects_and_others_are_refused(
    server: EmbeddedServer, pki: Path, profile: AuthProfile
) -> None:
    """With the right CA the admin appends over TLS; a wrong CA, no CA (the system's), and a
    CA file that is missing or not PEM are each a ConfigError within seconds, for the store and
    the query client alike; nothing was stored by them."""
    admin_creds = profile.creds["admin"]
    async with await EventStore.connect(
        server.url, stream=SETTINGS, creds=admin_creds, tls_ca=str(pki / "ca.pem")
    ) as admin:
        await admin.append("task", "t-1", NewEvent("Created"))
        assert server.url.startswith("nats://")  # the server upgrades the connection
    (pki / "junk.pem").write_text("not a certificate\n")
    cases = {
        str(pki / "other.pem"): "TLS handshake .* failed",
        None: "TLS handshake .* failed",
        str(pki / "missing.pem"): "not found",
        str(pki / "junk.pem"): "no PEM certificate",
    }
    for ca, message in cases.items():
        started = time.monotonic()
        with pytest.raises(ConfigError, match=message):
            await EventStore.connect(server.url, stream=SETTINGS, creds=admin_creds, tls_ca=ca)
        with pytest.raises(ConfigError, match=message):
            await ProjectionClient.connect(
                server.url, stream=SETTINGS.name, creds=admin_creds, tls_ca=ca
            )
        assert time.monotonic() - started < 8.0, ca
    async with await EventStore.connect(
        server.url, stream=SETTINGS, creds=admin_creds, tls_ca=str(pki / "ca.pem")
    ) as admin:
        assert await admin.head() == 1


def test_the_cli_over_tls(server: EmbeddedServer, pki: Path, profile: AuthProfile) -> None:
    """``--tls-ca`` / EVENTSTORE_TLS_CA: the right CA reads the log; the wrong one is one
    stderr line (ConfigError), exit 1, well within the connect timeout."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}

    def cli(ca: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "consumers.cli", "--url", server.url, "--stream",
             SETTINGS.name, "--prefix", SETTINGS.prefix, "--creds", profile.creds["admin"],
             *args],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
            env=base | {"EVENTSTORE_TLS_CA": str(ca)},
        )  # fmt: skip

    ok = cli(pki / "ca.pem", "publish", "task", "t-1", "Created")
    assert ok.returncode == 0, ok.stderr
    started = time.monotonic()
    bad = cli(pki / "other.pem", "history", "task", "t-1")
    assert time.monotonic() - started < 20
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eventstore: ConfigError: TLS handshake"), lines
