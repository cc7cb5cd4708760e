"""Shared test fixtures: real servers on 127.0.0.1 ephemeral ports, real files in tmp dirs."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import textwrap
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from authz.config import Settings
from authz.server.app import Service, start_service

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_POLICIES = ROOT / "policies"


class LoopThread:
    """An asyncio loop in a background thread, so sync tests can drive the aio server."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class RunningService:
    def __init__(self, service: Service, loop: LoopThread) -> None:
        self.service = service
        self.loop = loop
        self.address = f"127.0.0.1:{service.port}"
        self.channel = grpc.insecure_channel(self.address)

    def stop(self) -> None:
        self.channel.close()
        self.loop.run(self.service.stop(grace=1))


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture
def base_settings(tmp_path: Path) -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        policy_dir=SHIPPED_POLICIES,
        data_dir=tmp_path / "data",
        sso_salts=("test-sso-salt-for-fixtures",),
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """An empty store on each backend: a SQLite file, then a throwaway PostgreSQL schema
    (skipped, with the reason, when no PostgreSQL server can be reached). See tests/pg.py."""
    from tests.pg import use_backend

    with use_backend(request.param, tmp_path) as chosen:
        yield chosen


@pytest.fixture
def any_backend_settings(backend: Any, base_settings: Settings) -> Settings:
    """base_settings with the whole service on each backend."""
    return replace(base_settings, database_url=None if backend.name == "sqlite" else backend.target)


@pytest.fixture
def start(loop_thread: LoopThread) -> Iterator[Callable[..., RunningService]]:
    """start(settings, **overrides) → a RunningService; all are stopped after the test."""
    started: list[RunningService] = []

    def _start(settings: Settings, *, clock: Any = None, **overrides: Any) -> RunningService:
        extra = {"clock": clock} if clock is not None else {}
        service = loop_thread.run(start_service(replace(settings, **overrides), **extra))
        running = RunningService(service, loop_thread)
        started.append(running)
        return running

    yield _start
    for running in reversed(started):
        running.stop()


def write_policy_dir(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text).lstrip())
    return directory


@pytest.fixture
def policy_dir(tmp_path: Path) -> Callable[[dict[str, str]], Path]:
    """policy_dir({"a.yaml": "..."}) writes a fresh policy directory and returns it."""
    counter = iter(range(1000))

    def _make(files: dict[str, str]) -> Path:
        return write_policy_dir(tmp_path / f"policies{next(counter)}", files)

    return _make


# -- added for issue 8 (callers, TLS, fuzz, soak): shared servers and a test PKI ----------------


def _starter(loop: LoopThread) -> tuple[Callable[..., RunningService], list[RunningService]]:
    started: list[RunningService] = []

    def _start(settings: Settings, *, clock: Any = None, **overrides: Any) -> RunningService:
        extra = {"clock": clock} if clock is not None else {}
        service = loop.run(start_service(replace(settings, **overrides), **extra))
        running = RunningService(service, loop)
        started.append(running)
        return running

    return _start, started


@pytest.fixture(scope="module")
def module_loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def start_shared(module_loop_thread: LoopThread) -> Iterator[Callable[..., RunningService]]:
    """Like `start`, for one server shared by every test of a module (stopped after the module)."""
    _start, started = _starter(module_loop_thread)
    yield _start
    for running in reversed(started):
        running.stop()


class RecordingHandler(logging.Handler):
    """Keeps every log record (at its level or above) and its fully formatted text."""

    def __init__(self, level: int = logging.DEBUG) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        try:
            self.lines.append(self.format(record))
        except Exception as exc:  # a record that cannot be formatted is itself worth seeing
            self.lines.append(f"UNFORMATTABLE {record.name}: {record.msg!r} ({exc})")

    def at_least(self, level: int) -> list[str]:
        return [
            line for rec, line in zip(self.records, self.lines, strict=True) if rec.levelno >= level
        ]


@pytest.fixture
def root_log() -> Iterator[RecordingHandler]:
    """Every log record of the test, from any logger, at DEBUG and above."""
    handler = RecordingHandler()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(previous)


@dataclass
class Pki:
    """A throwaway certificate authority in a directory, for TLS and mutual-TLS tests."""

    directory: Path
    ca_key: Any
    ca_cert: Any

    @classmethod
    def create(cls, directory: Path, name: str = "authz test CA") -> Pki:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        directory.mkdir(parents=True, exist_ok=True)
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
            .sign(key, hashes.SHA256())
        )
        pki = cls(directory, key, cert)
        (directory / "ca.pem").write_bytes(pki.ca_pem)
        return pki

    @property
    def ca_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"

    def issue(
        self,
        common_name: str,
        *,
        dns: tuple[str, ...] = (),
        uris: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        server: bool = False,
    ) -> tuple[bytes, bytes]:
        """(private key PEM, certificate PEM) signed by this CA."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.UniformResourceIdentifier(u) for u in uris]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.ca_key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return key_pem, cert.public_bytes(serialization.Encoding.PEM)

    def server_files(self, name: str = "server") -> tuple[Path, Path]:
        """(certificate path, key path) for a server on 127.0.0.1 / localhost."""
        key, cert = self.issue(name, dns=("localhost",), ips=("127.0.0.1",), server=True)
        cert_path, key_path = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        cert_path.write_bytes(cert)
        key_path.write_bytes(key)
        key_path.chmod(0o600)
        return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.create(tmp_path / "pki")


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self.metadata = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self.metadata]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


def with_bearer(channel: grpc.Channel, token: str) -> grpc.Channel:
    """A channel that sends `authorization: Bearer <token>` with every unary and server-streaming
    call (sync gRPC; closing it closes `channel`)."""
    return grpc.intercept_channel(channel, _Bearer(token))
