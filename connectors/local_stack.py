"""The local stack without Docker: one KRaft Kafka broker from Maven jars, one redis-server and
one schema registry (Apicurio Registry from Maven, Confluent-compatible API).

``LocalStack.up()`` fetches what is missing (the broker's jars and the registry's app with Maven,
redis-server with apt), starts them on 127.0.0.1 (the registry after the broker: it keeps its
schemas in the broker, in the ``_schemas`` topics, so schema ids survive a restart), waits until they answer, and records their pids under the
data directory. ``down()`` stops exactly the processes that a pid file names, after checking
that the pid still belongs to this stack (its command line names this stack's directory).
A service runs with its working directory in its own folder of the stack; that, not the pid
alone, is how the stack recognises its own processes. ClickHouse is embedded (chdb) and needs
no process.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from schemas.settings import REPO_ROOT, Settings

KAFKA_POM = REPO_ROOT / "dev" / "kafka" / "pom.xml"
KAFKA_LIB = REPO_ROOT / "dev" / "kafka" / "target" / "lib"
LOG4J_CONFIG = REPO_ROOT / "dev" / "kafka" / "log4j2.yaml"
REGISTRY_POM = REPO_ROOT / "dev" / "registry" / "pom.xml"
REGISTRY_TARGET = REPO_ROOT / "dev" / "registry" / "target"
#: The registry's storage topics on the local broker (like Confluent Schema Registry's ``_schemas``).
REGISTRY_TOPICS = ("_schemas", "_schemas-snapshots", "_schemas-events")


class StackError(RuntimeError):
    """A part of the local stack could not be installed, started or stopped."""


@dataclass(frozen=True)
class ServiceStatus:
    """What ``status`` knows of one service."""

    name: str
    pid: int | None
    address: str
    running: bool
    log: Path


def kafka_jars_version() -> str:
    """The Kafka version pinned in ``dev/kafka/pom.xml``."""
    text = KAFKA_POM.read_text()
    start = text.index("<kafka.version>") + len("<kafka.version>")
    return text[start : text.index("</kafka.version>", start)]


def fetch_kafka_jars(echo: Callable[[str], None] = print) -> Path:
    """Fetch the pinned broker and its runtime dependencies with Maven (once)."""
    version = kafka_jars_version()
    if (KAFKA_LIB / f"kafka_2.13-{version}.jar").exists():
        return KAFKA_LIB
    if shutil.which("mvn") is None:
        raise StackError("Maven (mvn) is needed to fetch the Kafka broker; install it (apt-get install maven)")
    echo(f"fetching Apache Kafka {version} with Maven (first run only)…")
    if KAFKA_LIB.exists():
        shutil.rmtree(KAFKA_LIB)
    result = subprocess.run(
        ["mvn", "-B", "-q", "-f", str(KAFKA_POM), "dependency:copy-dependencies"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise StackError(f"Maven could not fetch Kafka {version}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return KAFKA_LIB


def registry_version() -> str:
    """The Apicurio Registry version pinned in ``dev/registry/pom.xml``."""
    text = REGISTRY_POM.read_text()
    start = text.index("<apicurio.version>") + len("<apicurio.version>")
    return text[start : text.index("</apicurio.version>", start)]


def fetch_registry_app(echo: Callable[[str], None] = print) -> Path:
    """Fetch and unpack the pinned Apicurio Registry app with Maven (once); return its runner jar."""
    version = registry_version()
    app_dir = REGISTRY_TARGET / f"apicurio-registry-{version}"
    runner = app_dir / f"apicurio-registry-app-{version}-runner.jar"
    if runner.exists():
        return runner
    archive = REGISTRY_TARGET / f"apicurio-registry-app-{version}-all.tar.gz"
    if not archive.exists():
        if shutil.which("mvn") is None:
            raise StackError("Maven (mvn) is needed to fetch the schema registry; install it (apt-get install maven)")
        echo(f"fetching Apicurio Registry {version} with Maven (first run only)…")
        result = subprocess.run(["mvn", "-B", "-q", "-f", str(REGISTRY_POM), "process-resources"], capture_output=True, text=True)
        if result.returncode != 0 or not archive.exists():
            raise StackError(f"Maven could not fetch Apicurio Registry {version}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    unpacking = app_dir.with_name(app_dir.name + ".partial")
    shutil.rmtree(unpacking, ignore_errors=True)
    unpacking.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(unpacking, filter="data")
    unpacking.rename(app_dir)
    return runner


def redis_server_binary(echo: Callable[[str], None] = print) -> str:
    """Path of redis-server, installed from apt when it is missing."""
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise StackError("redis-server is missing; install it (apt-get install redis-server) or set AGENTSTREAM_REDIS_URL")
    echo("installing redis-server with apt (first run only)…")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise StackError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    return shutil.which("redis-server") or "/usr/bin/redis-server"


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int, home: Path) -> bool:
    """True when ``pid`` runs with its working directory inside ``home`` (guards against pid reuse)."""
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
        return False
    return state != "Z" and Path(cwd).is_relative_to(home)


class _Service:
    """A server process that this stack starts, tracks by pid file and stops."""

    name = ""

    def __init__(self, home: Path, port: int) -> None:
        self.home = home
        self.port = port
        self.pid_file = home / f"{self.name}.pid"
        self.log_file = home / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _pid_alive(pid, self.home) else None

    def command(self, echo: Callable[[str], None]) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, echo: Callable[[str], None], timeout: float) -> bool:
        """Start unless already running; wait until ready. True when this call started it."""
        if self.pid() is not None:
            echo(f"{self.name}: already running (pid {self.pid()}) on 127.0.0.1:{self.port}")
            return False
        if _port_open(self.port):
            raise StackError(f"{self.name}: port 127.0.0.1:{self.port} is taken by a process this stack did not start")
        self.home.mkdir(parents=True, exist_ok=True)
        cmd = self.command(echo)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(cmd, cwd=self.home, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        echo(f"{self.name}: starting (pid {proc.pid}) on 127.0.0.1:{self.port}…")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                tail = self.log_file.read_text(errors="replace")[-3000:]
                raise StackError(f"{self.name} exited with code {proc.returncode}; log {self.log_file}:\n{tail}")
            if self.ready():
                echo(f"{self.name}: ready")
                return True
            time.sleep(0.3)
        self.stop(echo)
        raise StackError(f"{self.name} did not become ready within {timeout:.0f}s; see {self.log_file}")

    def stop(self, echo: Callable[[str], None], timeout: float = 30.0) -> bool:
        """Stop the process named by the pid file (and only it). True when one was stopped."""
        pid = self.pid()
        self.pid_file.unlink(missing_ok=True)
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(pid, self.home):
            time.sleep(0.2)
        if _pid_alive(pid, self.home):
            os.kill(pid, signal.SIGKILL)
        try:  # reap it when it is our own child (tests run up/down in one process)
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        echo(f"{self.name}: stopped (pid {pid})")
        return True

    def status(self) -> ServiceStatus:
        pid = self.pid()
        return ServiceStatus(self.name, pid, f"127.0.0.1:{self.port}", pid is not None, self.log_file)


class KafkaService(_Service):
    """One combined broker+controller in KRaft mode, transactions usable on a single node."""

    name = "kafka"

    def properties(self) -> str:
        controller = self.port + 1
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{controller}",
                f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={self.home / 'data'}",
                "num.partitions=1",
                # Topics come from topology.yaml; a typo must fail, not create a topic.
                "auto.create.topics.enable=false",
                # A single node: internal topics (offsets, transactions, shares) get RF 1.
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=8",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "transaction.state.log.num.partitions=8",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "",
            ]
        )

    def command(self, echo: Callable[[str], None]) -> list[str]:
        lib = fetch_kafka_jars(echo)
        java = shutil.which("java")
        if java is None:
            raise StackError("java is needed to run the Kafka broker (OpenJDK 17 or newer)")
        props = self.home / "server.properties"
        props.write_text(self.properties())
        classpath = f"{lib}/*"
        if not (self.home / "data" / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
            fmt = subprocess.run(
                # "=" form: a base64url id may start with "-", which argparse would take for an option
                [java, "-cp", classpath, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(props)],
                capture_output=True,
                text=True,
            )
            if fmt.returncode != 0:
                raise StackError(f"formatting KRaft storage failed:\n{fmt.stdout}{fmt.stderr}")
        return [
            java,
            "-Xms256m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(props),
        ]

    def ready(self) -> bool:
        if not _port_open(self.port):
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{self.port}", "log_level": 0})
        try:
            metadata = admin.list_topics(timeout=2)
        except Exception:
            return False
        return bool(metadata.brokers)


class RedisService(_Service):
    """redis-server with append-only persistence, bound to 127.0.0.1."""

    name = "redis"

    def command(self, echo: Callable[[str], None]) -> list[str]:
        binary = redis_server_binary(echo)
        data = self.home / "data"
        data.mkdir(parents=True, exist_ok=True)
        return [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(data),
            "--appendonly", "yes",
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip

    def ready(self) -> bool:
        if not _port_open(self.port):
            return False
        import redis

        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False


class RegistryService(_Service):
    """Apicurio Registry (Confluent-compatible API under ``/apis/ccompat/v7``), storage on the broker.

    KafkaSQL storage keeps every schema in the ``_schemas`` topics of the local broker, so the
    ids already written into the event store still resolve after a restart; in-memory storage
    would orphan them.
    """

    name = "registry"

    def __init__(self, home: Path, port: int, kafka_port: int) -> None:
        super().__init__(home, port)
        self.kafka_port = kafka_port

    def command(self, echo: Callable[[str], None]) -> list[str]:
        runner = fetch_registry_app(echo)
        java = shutil.which("java")
        if java is None:
            raise StackError("java is needed to run the schema registry (OpenJDK 17 or newer)")
        return [
            java,
            "-Xms64m",
            "-Xmx384m",
            "-Djava.awt.headless=true",
            "-Dquarkus.http.host=127.0.0.1",
            f"-Dquarkus.http.port={self.port}",
            "-Dquarkus.http.access-log.enabled=false",
            "-Dapicurio.storage.kind=kafkasql",
            f"-Dapicurio.kafkasql.bootstrap.servers=127.0.0.1:{self.kafka_port}",
            f"-Dapicurio.kafkasql.topic={REGISTRY_TOPICS[0]}",
            f"-Dapicurio.kafkasql.snapshots.topic={REGISTRY_TOPICS[1]}",
            f"-Dapicurio.events.kafka.topic={REGISTRY_TOPICS[2]}",
            "-jar",
            str(runner),
        ]

    def ready(self) -> bool:
        if not _port_open(self.port):
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/apis/ccompat/v7/subjects", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False


class LocalStack:
    """Kafka, Redis and the schema registry for one data directory, on the ports that the settings name."""

    def __init__(self, settings: Settings) -> None:
        home = Path(settings.data_dir).resolve() / "stack"
        self.services: list[_Service] = [
            KafkaService(home / "kafka", settings.kafka_port),
            RedisService(home / "redis", settings.redis_port),
            RegistryService(home / "registry", settings.schema_registry_port, settings.kafka_port),
        ]

    def up(self, echo: Callable[[str], None] = print, timeout: float = 90.0) -> list[str]:
        """Start what is not running yet; return the names of the services this call started."""
        started = []
        try:
            for service in self.services:
                if service.start(echo, timeout):
                    started.append(service.name)
        except Exception:
            for service in self.services:
                if service.name in started:
                    service.stop(echo)
            raise
        return started

    def down(self, echo: Callable[[str], None] = print) -> list[str]:
        """Stop the services that ``up`` started (found by pid file); return their names."""
        return [s.name for s in reversed(self.services) if s.stop(echo)]

    def status(self) -> list[ServiceStatus]:
        """The state of each service."""
        return [s.status() for s in self.services]

    def pids(self) -> list[int]:
        """Pids of the running services of this stack."""
        return [p for p in (s.pid() for s in self.services) if p is not None]
