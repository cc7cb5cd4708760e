"""Part 5: authz against Cerbos (issue 19), both over gRPC on loopback, on one policy.

Cerbos is the binary that the npm package ``@cerbos/cerbos-linux-x64`` ships; ``make bench``
installs a pinned version into ``.tools/``. Without it (or without h2load) the part is skipped and
says why. Each server runs in its own process:

- authz (``python -m authz.bench.serve``) with the documents policy (authz.bench.documents), audit
  off, durable and async;
- Cerbos with the same policy in its own format: disk store in a temporary directory (no file
  watching), telemetry off, gRPC on an ephemeral 127.0.0.1 port and HTTP on a Unix socket (so it
  opens no other TCP port); audit off, and with its ``local`` audit backend (decision logs on) in
  a temporary directory.

First every server answers the grid (24 principals × 24 documents × 5 actions) and each answer is
compared with the plain-Python oracle; when any differs, no speed is measured. Then h2load drives
each server in interleaved rounds (authz, Cerbos, authz, Cerbos...): one decision per request
(authz Check with a principal given directly; Cerbos CheckResources with one resource and one
action) and ten (authz CheckBatch of 10 items; Cerbos CheckResources with 5 resources × 2
actions), audit off and on, 64 requests in flight and one. Cerbos's request messages are built
from the descriptors its server returns through gRPC reflection: no Cerbos .proto file is copied
here.
"""

from __future__ import annotations

import base64
import contextlib
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import descriptor_pool, message_factory, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from authz.bench.common import Table, progress
from authz.bench.documents import (
    ACTIONS,
    AUTHZ_POLICY,
    BATCH,
    PRINCIPAL_TYPE,
    RESOURCE_KIND,
    SINGLE,
    Document,
    Grid,
    Person,
    disagreements,
    grid,
    oracle,
    write_authz_policies,
    write_cerbos_policies,
)
from authz.bench.load import THREAD_ROLES, Run, h2load_path, measured_run, median_threads
from authz.bench.world import (
    BATCH_PATH,
    CHECK_PATH,
    TOKEN_KEY,
    ServerProcess,
    grpc_frame,
    terminate,
)
from authz.server.workers import available_cores
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc

CERBOS_SERVICE = "cerbos.svc.v1.CerbosService"
CERBOS_CHECK_PATH = f"/{CERBOS_SERVICE}/CheckResources"
# npm's names for the architectures Cerbos publishes (uname -m → package suffix).
NPM_ARCH = {"x86_64": "x64", "aarch64": "arm64"}
AUTHZ_BATCH_LIMIT = 100  # authz.server.convert.MAX_BATCH_ITEMS


# -- finding Cerbos ------------------------------------------------------------------------------


def npm_package() -> str | None:
    """The npm package that ships Cerbos for this machine, if Cerbos publishes one."""
    arch = NPM_ARCH.get(platform.machine())
    return f"@cerbos/cerbos-linux-{arch}" if arch and sys.platform.startswith("linux") else None


def tools_binary(package: str) -> Path:
    """Where `npm install --prefix .tools PACKAGE` (make bench) puts the binary."""
    return Path(".tools/node_modules") / package / package.rsplit("/", 1)[1]


def find_cerbos(explicit: str | None = None) -> tuple[Path | None, str]:
    """(the Cerbos binary, "") or (None, why it cannot be had)."""
    package = npm_package()
    if explicit:
        candidates = [Path(explicit)]
    else:
        candidates = [tools_binary(package)] if package is not None else []
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate, ""
    on_path = None if explicit else shutil.which("cerbos")
    if on_path:
        return Path(on_path), ""
    missing = "Cerbos not found " + " nor ".join(
        [*(f"at {c}" for c in candidates), *([] if explicit else ["as `cerbos` on PATH"])]
    )
    if package is None:
        return None, (
            f"{missing}, and Cerbos publishes no npm package for {sys.platform} "
            f"{platform.machine()} (only @cerbos/cerbos-linux-x64): pass --cerbos PATH"
        )
    if not package.endswith("-x64"):
        return None, f"{missing}; npm has no {package} that make bench could install"
    return None, f"{missing}; `make bench` installs it from npm ({package})"


def cerbos_version(binary: Path) -> str:
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


# -- running Cerbos ------------------------------------------------------------------------------


def _free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listening_loopback_ports(pid: int) -> tuple[list[int], list[str]]:
    """TCP ports process `pid` listens on: (loopback ports, other local addresses)."""
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(int(link[8:-1]))
    loopback: list[int] = []
    other: list[str] = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # proc(5): local_address, state 0A = LISTEN, inode in column 10.
            if fields[3] != "0A" or int(fields[9]) not in inodes:
                continue
            address, port = fields[1].rsplit(":", 1)
            if address == "0100007F":  # 127.0.0.1, little-endian hex
                loopback.append(int(port, 16))
            else:
                other.append(fields[1])
    return loopback, other


class CerbosServer:
    """One Cerbos process on the given policy directory, stopped by stop() (or when we die)."""

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        policy_dir: Path,
        *,
        audit: bool,
        admin: bool = False,
        name: str = "cerbos",
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.audit_dir = workdir / "audit" if audit else None
        # https://docs.cerbos.dev/cerbos/latest/configuration/ (server, storage, audit, telemetry)
        # A real port, not ":0": Cerbos's HTTP gateway dials the configured gRPC address, and
        # with port 0 it retries without pause, burning a core while the server is idle (seen
        # here: about 1,500 connects a second to 127.0.0.1:0), which slowed every server on the
        # machine, authz included.
        config: dict[str, Any] = {
            "server": {
                "grpcListenAddr": f"127.0.0.1:{_free_loopback_port()}",
                "httpListenAddr": f"unix:{workdir / 'http.sock'}",
            },
            "storage": {
                "driver": "disk",
                "disk": {"directory": str(policy_dir), "watchForChanges": False},
            },
            "telemetry": {"disabled": True},
            "audit": {"enabled": False},
        }
        if admin:
            # Without adminCredentials the Admin API takes the documented default user: only for
            # reading the audit store back, from a second instance on loopback (see below).
            # https://docs.cerbos.dev/cerbos/latest/api/admin_api
            config["server"]["adminAPI"] = {"enabled": True}
        if self.audit_dir is not None:
            config["audit"] = {
                "enabled": True,
                "backend": "local",
                "accessLogsEnabled": False,
                "decisionLogsEnabled": True,
                "local": {"storagePath": str(self.audit_dir)},
            }
        config_path = workdir / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("w")
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env["CERBOS_NO_TELEMETRY"] = "1"  # belt and braces with telemetry.disabled
        # setpriv (util-linux) execs Cerbos in place with a parent-death signal, so Cerbos stops
        # even if this process is killed; its pid stays Cerbos's own.
        setpriv = shutil.which("setpriv")
        prefix = [setpriv, "--pdeathsig", "TERM"] if setpriv else []
        self.proc = subprocess.Popen(
            # At its default level (info) Cerbos logs two lines per request; authz logs none.
            [*prefix, str(binary), "server", f"--config={config_path}", "--log-level=warn"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.pid = self.proc.pid
        try:
            self.port = self._wait_for_port(timeout=30)
            self._wait_serving(timeout=30)
        except Exception:
            self.stop()
            raise

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _fail(self, what: str) -> RuntimeError:
        tail = self.log_path.read_text()[-2000:] if self.log_path.exists() else ""
        return RuntimeError(f"Cerbos {what}; see {self.log_path}:\n{tail}")

    def _wait_for_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self._fail(f"exited with {self.proc.returncode} while starting")
            loopback, other = _listening_loopback_ports(self.pid)
            if other:
                raise self._fail(f"listens beyond loopback ({', '.join(other)}); refusing")
            if len(loopback) > 1:
                raise self._fail(f"listens on several TCP ports {loopback}, expected gRPC only")
            if loopback:
                return loopback[0]
            time.sleep(0.05)
        raise self._fail(f"opened no gRPC port within {timeout:g} s")

    def _wait_serving(self, timeout: float) -> None:
        with grpc.insecure_channel(self.address) as channel:
            grpc.channel_ready_future(channel).result(timeout=timeout)
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=CERBOS_SERVICE), timeout=timeout
            )
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise self._fail(f"reports {reply.status} instead of SERVING")

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()


ADMIN_BASIC_AUTH = "Basic " + base64.b64encode(b"cerbos:cerbosAdmin").decode()  # the default


def decision_log_entries(binary: Path, workdir: Path, policy_dir: Path) -> int:
    """How many decision log entries the local audit store in `workdir` holds. A second Cerbos on
    the same store reads them back through the Admin API, once the measured one has stopped
    gracefully (and so flushed what it buffered); the measured one ran without the Admin API."""
    reader = CerbosServer(binary, workdir, policy_dir, audit=True, admin=True, name="reader")
    try:
        with grpc.insecure_channel(reader.address) as channel:
            pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
            method = pool.FindServiceByName("cerbos.svc.v1.CerbosAdminService").methods_by_name[
                "ListAuditLogEntries"
            ]
            request = message_factory.GetMessageClass(method.input_type)()
            request.kind = (
                method.input_type.fields_by_name["kind"]
                .enum_type.values_by_name["KIND_DECISION"]
                .number
            )
            request.since.seconds = 24 * 3600
            entries = channel.unary_stream(
                f"/cerbos.svc.v1.CerbosAdminService/{method.name}",
                request_serializer=type(request).SerializeToString,
                response_deserializer=bool,  # counted, not parsed (None would mean an error)
            )
            return sum(
                1
                for _ in entries(
                    request, metadata=[("authorization", ADMIN_BASIC_AUTH)], timeout=300
                )
            )
    finally:
        reader.stop()


# -- the two servers' clients ------------------------------------------------------------------

CASES = {"check": (SINGLE,), "batch10": BATCH}


class AuthzClient:
    """authz's AuthorizationService, a principal given directly."""

    paths = {"check": CHECK_PATH, "batch10": BATCH_PATH}

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.AuthorizationServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    @staticmethod
    def _principal(person: Person) -> pb.Principal:
        attributes = struct_pb2.Struct()
        attributes.update(person.attributes())
        return pb.Principal(type=PRINCIPAL_TYPE, id=person.id, attributes=attributes)

    @staticmethod
    def _resource(document: Document) -> pb.Resource:
        attributes = struct_pb2.Struct()
        attributes.update(document.attributes())
        return pb.Resource(type=RESOURCE_KIND, id=document.id, attributes=attributes)

    def _batch(self, person: Person, items: Sequence[tuple[Document, str]], request_id: str) -> Any:
        return pb.CheckBatchRequest(
            principal=self._principal(person),
            items=[pb.CheckItem(action=a, resource=self._resource(d)) for d, a in items],
            request_id=request_id,
        )

    def request(self, workload: str) -> Any:
        person, document, action = SINGLE
        if workload == "check":
            return pb.CheckRequest(
                principal=self._principal(person),
                action=action,
                resource=self._resource(document),
                request_id="bench-cerbos-check",
            )
        return self._batch(person, [(d, a) for _, d, a in BATCH], "bench-cerbos-batch")

    def call(self, workload: str, request: Any) -> tuple[tuple[bool, ...], Any]:
        if workload == "check":
            reply = self.stub.Check(request, timeout=10)
            return (reply.allowed,), reply
        reply = self.stub.CheckBatch(request, timeout=10)
        return tuple(r.allowed for r in reply.results), reply

    def grid_answers(self, cases: Grid) -> dict[tuple[str, str, str], bool]:
        answers: dict[tuple[str, str, str], bool] = {}
        for person in cases.people:
            items = [(d, a) for d in cases.documents for a in ACTIONS]
            for start in range(0, len(items), AUTHZ_BATCH_LIMIT):
                chunk = items[start : start + AUTHZ_BATCH_LIMIT]
                request = self._batch(person, chunk, "bench-cerbos-grid")
                reply = self.stub.CheckBatch(request, timeout=30)
                for (document, action), result in zip(chunk, reply.results, strict=True):
                    answers[(person.id, document.id, action)] = result.allowed
        return answers


class CerbosClient:
    """Cerbos's CerbosService/CheckResources, its messages built from reflection."""

    paths = {"check": CERBOS_CHECK_PATH, "batch10": CERBOS_CHECK_PATH}

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        # https://grpc.github.io/grpc/python/grpc_reflection.html (client side): the pool asks the
        # server for each file descriptor it needs, dependencies included.
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(self.channel))
        method = pool.FindServiceByName(CERBOS_SERVICE).methods_by_name["CheckResources"]
        self.request_class = message_factory.GetMessageClass(method.input_type)
        self.response_class = message_factory.GetMessageClass(method.output_type)
        effect = pool.FindEnumTypeByName("cerbos.effect.v1.Effect")
        self.allow = effect.values_by_name["EFFECT_ALLOW"].number
        self._check = self.channel.unary_unary(
            CERBOS_CHECK_PATH,
            request_serializer=self.request_class.SerializeToString,
            response_deserializer=self.response_class.FromString,
        )

    def close(self) -> None:
        self.channel.close()

    def _request(
        self, person: Person, resources: Sequence[tuple[Document, Sequence[str]]], request_id: str
    ) -> Any:
        request = self.request_class(request_id=request_id)
        request.principal.id = person.id
        request.principal.roles.extend(person.roles)
        for key, value in person.attributes().items():
            if key != "roles":  # Cerbos has a field for them
                _set_value(request.principal.attr[key], value)
        for document, actions in resources:
            entry = request.resources.add()
            entry.actions.extend(actions)
            entry.resource.kind = RESOURCE_KIND
            entry.resource.id = document.id
            for key, value in document.attributes().items():
                _set_value(entry.resource.attr[key], value)
        return request

    def request(self, workload: str) -> Any:
        person, document, action = SINGLE
        if workload == "check":
            return self._request(person, [(document, [action])], "bench-cerbos-check")
        grouped: dict[str, tuple[Document, list[str]]] = {}
        for _, d, a in BATCH:
            grouped.setdefault(d.id, (d, []))[1].append(a)
        return self._request(person, list(grouped.values()), "bench-cerbos-batch")

    def _effects(self, reply: Any) -> dict[tuple[str, str], bool]:
        out: dict[tuple[str, str], bool] = {}
        for result in reply.results:
            if len(result.validation_errors):
                raise AssertionError(f"Cerbos reported validation errors: {result}")
            for action, effect in result.actions.items():
                out[(result.resource.id, action)] = effect == self.allow
        return out

    def call(self, workload: str, request: Any) -> tuple[tuple[bool, ...], Any]:
        reply = self._check(request, timeout=10)
        effects = self._effects(reply)
        return tuple(effects.get((d.id, a), False) for _, d, a in CASES[workload]), reply

    def grid_answers(self, cases: Grid) -> dict[tuple[str, str, str], bool]:
        answers: dict[tuple[str, str, str], bool] = {}
        for person in cases.people:
            request = self._request(
                person, [(d, ACTIONS) for d in cases.documents], "bench-cerbos-grid"
            )
            for (document_id, action), allowed in self._effects(
                self._check(request, timeout=30)
            ).items():
                answers[(person.id, document_id, action)] = allowed
        return answers


def _set_value(target: Any, value: Any) -> None:
    """A google.protobuf.Value (from Cerbos's descriptor pool) from a plain value."""
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int | float):
        target.number_value = value
    elif isinstance(value, str):
        target.string_value = value
    else:
        raise TypeError(f"no Cerbos attribute value for {value!r}")


def verify(client: AuthzClient | CerbosClient, workload: str, request: Any) -> int:
    """One call with a real gRPC client: the body the load generator sends gets the oracle's
    answers. Returns the reply's size on the wire (gRPC frame included): h2load cannot read gRPC
    status trailers, but an error reply has no body."""
    got, reply = client.call(workload, request)
    expected = tuple(oracle(*case) for case in CASES[workload])
    if got != expected:
        raise AssertionError(f"{type(client).__name__} {workload} answered {got}, not {expected}")
    return len(grpc_frame(reply))


# -- the comparison ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    product: str  # authz | cerbos
    audit: str  # off | durable | async | local
    workers: int | None = None  # authz's worker processes; None: AUTHZ_WORKERS
    affinity: str = "auto"  # authz's AUTHZ_CPU_AFFINITY
    recall: str = "on"  # authz's AUTHZ_RECALL


CONTENDERS = (
    Contender("authz_off", "authz, audit off", "authz", "off"),
    Contender("authz_durable", "authz, durable audit", "authz", "durable"),
    Contender("authz_async", "authz, async audit", "authz", "async"),
    # One process, for what authz does per core: with two, how the kernel spreads h2load's few
    # connections over the workers moves the figure from round to round.
    Contender("authz_off_1", "authz, audit off, 1 worker", "authz", "off", workers=1),
    # h2load sends one body over and over: every question after the first is recalled
    # (AUTHZ_RECALL), which traffic whose questions never repeat would not be. Off, each
    # request is converted and evaluated, as such traffic would be.
    Contender(
        "authz_eval",
        "authz, audit off, every question evaluated (AUTHZ_RECALL=off)",
        "authz",
        "off",
        recall="off",
    ),
    # What keeping each worker on a core of its own is worth (authz.server.workers).
    Contender(
        "authz_durable_free",
        "authz, durable audit, workers placed by the kernel",
        "authz",
        "durable",
        affinity="off",
    ),
    Contender("cerbos_off", "Cerbos, audit off", "cerbos", "off"),
    Contender("cerbos_audit", "Cerbos, local audit (decision logs)", "cerbos", "local"),
)
BY_KEY = {c.key: c for c in CONTENDERS}
AUTHZ_WORKERS = available_cores()
"""authz runs as `authz serve` does by default: one worker process per core (Cerbos, in Go, uses
every core from one process)."""
WORKLOADS = {"check": ("Check", 1), "batch10": ("batch of 10", 10)}


@dataclass(frozen=True)
class Row:
    workload: str  # check | batch10
    server: str  # a Contender key
    clients: int
    streams: int
    quick: bool = True  # also in --quick

    @property
    def in_flight(self) -> int:
        return self.clients * self.streams

    @property
    def key(self) -> str:
        return f"{self.workload}:{self.server}:{self.in_flight}"

    @property
    def label(self) -> str:
        return f"{WORKLOADS[self.workload][0]} — {BY_KEY[self.server].label}"


# In this order in every round, so that authz and Cerbos alternate and a noisy neighbour slows
# both alike.
ROWS = (
    Row("check", "authz_off", 4, 16),
    Row("check", "cerbos_off", 4, 16),
    Row("check", "authz_off_1", 4, 16),
    Row("check", "authz_eval", 4, 16),
    Row("batch10", "authz_off", 4, 16),
    Row("batch10", "cerbos_off", 4, 16),
    Row("batch10", "authz_eval", 4, 16),
    Row("check", "authz_durable", 4, 16),
    Row("check", "cerbos_audit", 4, 16),
    Row("check", "authz_durable_free", 4, 16, quick=False),
    Row("check", "authz_async", 4, 16),
    Row("batch10", "authz_durable", 4, 16, quick=False),
    Row("batch10", "cerbos_audit", 4, 16, quick=False),
    Row("check", "authz_off", 1, 1),
    Row("check", "cerbos_off", 1, 1),
    Row("check", "authz_eval", 1, 1, quick=False),
    Row("check", "authz_durable", 1, 1, quick=False),
    Row("check", "cerbos_audit", 1, 1, quick=False),
)


@dataclass
class Server:
    contender: Contender
    pid: int
    port: int
    client: AuthzClient | CerbosClient
    stop: Callable[[], dict[str, Any]]


def skipped(reason: str) -> tuple[list[Table], dict[str, Any]]:
    progress(f"cerbos: skipped: {reason}")
    return [], {"skipped": reason}


def run_cerbos(
    *,
    quick: bool,
    duration: float,
    warmup: float,
    rounds: int,
    binary: str | None = None,
    authz_policy: str = AUTHZ_POLICY,
) -> tuple[list[Table], dict[str, Any]]:
    """The whole part: correctness over the grid, then the interleaved load rounds.
    `authz_policy` is authz's side of the policy (tests pass a wrong one to see the refusal)."""
    if h2load_path() is None:
        return skipped("h2load not found (apt-get install nghttp2-client; make bench does)")
    path, reason = find_cerbos(binary)
    if path is None:
        return skipped(reason)
    rows = [r for r in ROWS if r.quick or not quick]
    contenders = [c for c in CONTENDERS if c.key in {r.server for r in rows}]
    # Every authz child stops by itself after this long, whatever happens.
    lifetime = 600 + rounds * len(rows) * (duration + warmup + 10)
    results: dict[str, Any] = {
        "cerbos_version": cerbos_version(path),
        "binary": str(path),
        "authz_workers": AUTHZ_WORKERS,
    }
    with started(contenders, cerbos=path, lifetime=lifetime, authz_policy=authz_policy) as servers:
        agreement, agreed = check_agreement(servers)
        results.update(agreed)
        if not agreed["all_agree"]:
            progress("cerbos: answers disagree with the oracle; no speed is measured")
            return [agreement], results
        runs, sizes = _load(servers, rows, duration=duration, warmup=warmup, rounds=rounds)
        progress("cerbos: stopping the servers; reading the audit logs back")
        finals = {key: server.stop() for key, server in servers.items()}
    results["rows"] = _summaries(rows, runs)
    results["incomplete_replies"] = sorted(
        r.key for r in rows if not all(x.result.complete_replies(sizes[r.key]) for x in runs[r.key])
    )
    results["audit_check"] = _audit_check(
        rows, runs, finals, agreed["decisions_per_server"], agreed["principals"]
    )
    tables = _tables(rows, results, rounds=rounds, duration=duration)
    return [agreement, *tables], results


@contextlib.contextmanager
def started(
    contenders: Sequence[Contender],
    *,
    cerbos: Path | None = None,
    lifetime: float = 900.0,
    authz_policy: str = AUTHZ_POLICY,
) -> Iterator[dict[str, Server]]:
    """The contenders' servers on the documents policy, in a temporary directory; all stopped
    on the way out. `cerbos` is the binary (needed only for Cerbos contenders)."""
    servers: dict[str, Server] = {}
    with tempfile.TemporaryDirectory(prefix="authz-bench-cerbos-") as tmp:
        workdir = Path(tmp)
        authz_policies = write_authz_policies(workdir / "authz-policies", authz_policy)
        cerbos_policies = write_cerbos_policies(workdir / "cerbos-policies")
        try:
            for c in contenders:
                progress(f"cerbos: starting {c.label}")
                if c.product == "authz":
                    servers[c.key] = start_authz(c, workdir, authz_policies, lifetime)
                else:
                    if cerbos is None:
                        raise ValueError(f"{c.label} needs the Cerbos binary")
                    servers[c.key] = _start_cerbos(c, cerbos, workdir, cerbos_policies)
            yield servers
        finally:
            for server in reversed(servers.values()):
                with contextlib.suppress(Exception):
                    server.stop()


def _stop_once(client: AuthzClient | CerbosClient, stop: Callable[[], dict[str, Any]]) -> Any:
    final: list[dict[str, Any]] = []

    def once() -> dict[str, Any]:
        if not final:
            client.close()
            final.append(stop())
        return final[0]

    return once


def start_authz(
    c: Contender,
    workdir: Path,
    policies: Path,
    lifetime: float,
    env: Mapping[str, str] | None = None,
) -> Server:
    """`python -m authz.bench.serve --kind authz` for `c`, answering; `env` is added to its
    environment (authz.bench.ab: the source tree on PYTHONPATH)."""
    process = ServerProcess(
        [
            "--kind",
            "authz",
            "--audit",
            c.audit,
            "--policies",
            str(policies),
            "--data-dir",
            str(workdir / f"data-{c.key}"),
            "--max-seconds",
            str(round(lifetime)),
            "--workers",
            str(c.workers or AUTHZ_WORKERS),
            "--cpu-affinity",
            c.affinity,
            # Only when asked for: trees from before AUTHZ_RECALL (authz.bench.ab) lack it.
            *(["--recall", c.recall] if c.recall != "on" else []),
        ],
        workdir / f"{c.key}.log",
        {"AUTHZ_BENCH_TOKEN_KEY": TOKEN_KEY, **(env or {})},
    )
    client = AuthzClient(process.address)
    try:
        grpc.channel_ready_future(client.channel).result(timeout=30)
    except Exception:
        client.close()
        process.stop()
        raise
    return Server(c, process.pid, process.port, client, _stop_once(client, process.stop))


def _start_cerbos(c: Contender, binary: Path, workdir: Path, policies: Path) -> Server:
    audit = c.audit == "local"
    cerbos = CerbosServer(binary, workdir / c.key, policies, audit=audit)

    def stop() -> dict[str, Any]:
        cerbos.stop()
        if not audit:
            return {}
        return {"decision_log_entries": decision_log_entries(binary, workdir / c.key, policies)}

    try:
        client = CerbosClient(cerbos.address)
    except Exception:
        cerbos.stop()
        raise
    return Server(c, cerbos.pid, cerbos.port, client, _stop_once(client, stop))


def check_agreement(servers: dict[str, Server]) -> tuple[Table, dict[str, Any]]:
    """Every server answers the whole grid; each answer is compared with the oracle."""
    cases = grid()
    table = Table(
        "Against Cerbos: agreement with the oracle",
        ["server", "decisions", "allowed", "denied", "disagreements with the oracle"],
    )
    found: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for key, server in servers.items():
        progress(f"cerbos: checking {server.contender.label} on {len(cases):,} decisions")
        answers = server.client.grid_answers(cases)
        wrong = disagreements(key, answers, cases)
        allowed = sum(answers.values())
        table.add(server.contender.label, len(answers), allowed, len(answers) - allowed, len(wrong))
        counts[key] = len(wrong)
        found += [asdict(d) for d in wrong[:10]]
    all_agree = not any(counts.values())
    expected_allowed = sum(oracle(*case) for case in cases.cases())
    table.notes.append(
        f"{len(cases.people)} principals × {len(cases.documents)} documents × {len(ACTIONS)} "
        f"actions = {len(cases):,} decisions per server; the oracle allows {expected_allowed:,}."
    )
    table.notes.append(
        "every server agrees with the oracle on every decision"
        if all_agree
        else "DISAGREEMENTS: no speed is reported; the first ones: "
        + "; ".join(
            f"{d['server']}: {d['principal']} {d['action']} {d['document']} -> "
            f"{d['got']} (expected {d['expected']})"
            for d in found
        )
    )
    return table, {
        "all_agree": all_agree,
        "decisions_per_server": len(cases),
        "principals": len(cases.people),  # Cerbos answers the grid in one call per principal
        "allowed_by_oracle": expected_allowed,
        "disagreements_per_server": counts,
        "disagreements": found,
    }


def _load(
    servers: dict[str, Server], rows: list[Row], *, duration: float, warmup: float, rounds: int
) -> tuple[dict[str, list[Run]], dict[str, int]]:
    requests = {r.key: servers[r.server].client.request(r.workload) for r in rows}
    sizes = {r.key: verify(servers[r.server].client, r.workload, requests[r.key]) for r in rows}
    bodies = {key: grpc_frame(message) for key, message in requests.items()}
    runs: dict[str, list[Run]] = {r.key: [] for r in rows}
    for number in range(1, rounds + 1):
        for r in rows:
            server = servers[r.server]
            progress(f"cerbos: round {number}/{rounds}: {r.label}, {r.in_flight} in flight")
            runs[r.key].append(
                measured_run(
                    server.pid,
                    server.port,
                    server.client.paths[r.workload],
                    bodies[r.key],
                    duration=duration,
                    warmup=warmup,
                    clients=r.clients,
                    streams=r.streams,
                )
            )
    # After the load, every body still gets the oracle's answers.
    for r in rows:
        verify(servers[r.server].client, r.workload, requests[r.key])
    return runs, sizes


def _summaries(rows: list[Row], runs: dict[str, list[Run]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        chosen = sorted(runs[r.key], key=lambda x: x.result.req_per_s)[len(runs[r.key]) // 2]
        rps = statistics.median(x.result.req_per_s for x in runs[r.key])
        cpu = statistics.median(x.cpu_us_per_req for x in runs[r.key])
        decisions = WORKLOADS[r.workload][1]
        out[r.key] = {
            "label": r.label,
            "workload": r.workload,
            "server": r.server,
            "product": BY_KEY[r.server].product,
            "in_flight": r.in_flight,
            "decisions_per_request": decisions,
            "req_per_s_rounds": [x.result.req_per_s for x in runs[r.key]],
            "req_per_s": rps,
            "decisions_per_s": rps * decisions,
            "p50_ms": chosen.result.latency.p50,
            "p99_ms": chosen.result.latency.p99,
            "cpu_us_per_req": cpu,
            "cpu_us_per_decision": cpu / decisions,
            "failed": sum(x.result.failed for x in runs[r.key]),
            "connections_rounds": [list(x.connections) for x in runs[r.key]],
            "threads_us_per_req": median_threads(runs[r.key]),
        }
    return out


def _audit_check(
    rows: list[Row],
    runs: dict[str, list[Run]],
    finals: dict[str, dict[str, Any]],
    grid_decisions: int,
    grid_calls: int,
) -> dict[str, Any]:
    check: dict[str, Any] = {}
    for key in finals:
        if BY_KEY[key].product != "authz" or BY_KEY[key].audit != "durable":
            continue
        written = int(finals[key].get("audit", {}).get("records_written", 0))
        answered = sum(
            x.result.done * WORKLOADS[r.workload][1]
            for r in rows
            if r.server == key
            for x in runs[r.key]
        )
        check[key] = {
            "records_written": written,
            "decisions_answered_under_load": answered,
            "ok": written >= answered + grid_decisions,
        }
    if "cerbos_audit" in finals:
        # One decision log entry per CheckResources call, whatever it asks.
        entries = int(finals["cerbos_audit"].get("decision_log_entries", 0))
        calls = sum(x.result.done for r in rows if r.server == "cerbos_audit" for x in runs[r.key])
        check["cerbos_audit"] = {
            "decision_log_entries": entries,
            "calls_answered_under_load": calls,
            "ok": entries >= calls + grid_calls,
        }
    return check


def _tables(
    rows: list[Row], results: dict[str, Any], *, rounds: int, duration: float
) -> list[Table]:
    summaries = results["rows"]
    at_max = Table(
        "authz and Cerbos at the maximum rate (64 in flight)",
        [
            "scenario",
            "req/s",
            "decisions/s",
            "p50 ms",
            "p99 ms",
            "server CPU µs/req",
            "CPU µs/decision",
        ],
    )
    one = Table(
        "authz and Cerbos at one request in flight",
        ["scenario", "req/s", "p50 ms", "p99 ms", "server CPU µs/req"],
    )
    for r in rows:
        s = summaries[r.key]
        if r.in_flight == 1:
            one.add(r.label, s["req_per_s"], s["p50_ms"], s["p99_ms"], s["cpu_us_per_req"])
        else:
            at_max.add(
                r.label,
                s["req_per_s"],
                s["decisions_per_s"],
                s["p50_ms"],
                s["p99_ms"],
                s["cpu_us_per_req"],
                s["cpu_us_per_decision"],
            )
    at_max.notes.append(
        f"req/s is the median of {rounds} interleaved round(s) of {duration:g} s per scenario "
        "(authz and Cerbos alternate); latencies come from the median round. h2load 4 "
        "connections × 16 streams; server CPU counts every process of the server."
    )
    at_max.notes.append(f"Cerbos {results['cerbos_version']} ({results['binary']}).")
    workers = results.get("authz_workers", 1)
    at_max.notes.append(
        f"authz ran {workers} worker process{'es' if workers != 1 else ''} (`authz serve "
        f"--workers {workers}`, one per core; the '1 worker' row excepted), all on one port, each "
        "worker kept to a core of its own (AUTHZ_CPU_AFFINITY=auto) but in the row 'workers "
        "placed by the kernel' (off); its CPU counts every worker and the supervisor."
    )
    if workers > 1:
        spreads = [
            f"{WORKLOADS[s['workload']][0]} — {BY_KEY[s['server']].label}: "
            + ", ".join("+".join(map(str, c)) or "?" for c in s["connections_rounds"])
            for s in summaries.values()
            if s["product"] == "authz" and s["in_flight"] > 1 and not BY_KEY[s["server"]].workers
        ]
        at_max.notes.append(
            "How the connections were spread over authz's workers, per round (seen halfway "
            "through each run: h2load's 4, and the idle one of the client that checks the "
            "answers while it is open, until AUTHZ_MAX_CONNECTION_AGE closes it; the kernel "
            "places each connection by a hash of its ports, not by load, so "
            "one worker may get 3 or all 4 of h2load's): " + "; ".join(spreads) + ". The row "
            "'authz, audit off, 1 worker' is `authz serve --workers 1`, for what one process "
            "does on its own."
        )
    failed = sum(s["failed"] for s in summaries.values())
    incomplete = results["incomplete_replies"]
    at_max.notes.append(
        f"failed or errored requests: {failed}; "
        + (
            "every reply of every run had a complete body (no gRPC errors)"
            if not incomplete
            else f"INCOMPLETE REPLIES (gRPC errors?) in: {', '.join(incomplete)}"
        )
    )
    audit = results["audit_check"]
    for key, a in audit.items():
        if BY_KEY[key].product != "authz":
            continue
        at_max.notes.append(
            f"{BY_KEY[key].label}: {a['records_written']:,} records written for "
            f"{a['decisions_answered_under_load']:,} decisions answered under load "
            f"({'every answered decision was recorded' if a['ok'] else 'RECORDS MISSING'})."
        )
    if "cerbos_audit" in audit:
        c = audit["cerbos_audit"]
        at_max.notes.append(
            f"Cerbos local audit: {c['decision_log_entries']:,} decision log entries (one per "
            f"call) for {c['calls_answered_under_load']:,} calls answered under load, read back "
            "after a graceful stop "
            f"({'every answered call was recorded' if c['ok'] else 'ENTRIES MISSING'})."
        )
    one.notes.append("h2load 1 connection × 1 stream: each request waits for the one before.")
    return [at_max, one, _by_thread(rows, summaries)]


def _by_thread(rows: list[Row], summaries: dict[str, dict[str, Any]]) -> Table:
    """authz's server CPU at the maximum rate, split by thread: where a durable record's cost
    goes (event loops or audit writers), run after run."""
    table = Table(
        "authz's server CPU by thread at the maximum rate (µs per request)",
        ["scenario", "all threads", *THREAD_ROLES],
    )
    for r in rows:
        s = summaries[r.key]
        if s["product"] == "authz" and r.in_flight > 1:
            threads = s["threads_us_per_req"]
            table.add(r.label, s["cpu_us_per_req"], *(threads[role] for role in THREAD_ROLES))
    table.notes.append(
        "Medians of the rounds above. Each worker's main thread runs its event loop (gRPC, "
        "admission, the decision, the audit record's building and encoding); its audit writer "
        "thread chains and commits records; its other threads are grpc's poller above all. "
        "'all threads' also counts threads that ended during a run, which the split cannot "
        "see (authz.bench.load.thread_cpu_seconds)."
    )
    return table
