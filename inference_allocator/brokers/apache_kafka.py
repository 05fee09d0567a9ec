"""Apache Kafka 4.x from its published jars: fetched once with Maven, run in KRaft mode.

No Docker and no tarball: ``org.apache.kafka:kafka_2.13`` and a log4j2 binding (Kafka's POM
brings none; Kafka 4.x logs through SLF4J 1.7, so the binding is ``log4j-slf4j-impl``) are
copied by Maven into the cache directory, then ``kafka.tools.StorageTool format
--standalone`` formats the data directory once and ``kafka.Kafka`` runs one combined
broker/controller on loopback. The data directory survives restarts.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO

from ..cache import default_cache_dir
from ..config import DEFAULT_APACHE_KAFKA_VERSION
from ..errors import BrokerStartFailed, BrokerToolMissing, PortInUse
from ..ports import check_port_free, free_port
from .process import BrokerProcess, log_path_file

DEFAULT_VERSION = DEFAULT_APACHE_KAFKA_VERSION
LOG4J_VERSION = "2.24.3"
MIN_JAVA = 17

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.inference-allocator</groupId>
  <artifactId>apache-kafka-runtime</artifactId>
  <version>{version}</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <!-- the console tools (ConsoleProducer, ConsoleConsumer), as Kafka's scripts run them -->
      <groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

# Quiet by default; the one INFO line kept is the one that says the server is up.
_LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = OUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = info
"""


def java_binary() -> str:
    """The ``java`` to run Kafka with (``$JAVA_HOME/bin/java`` first), checked to be 17+."""
    home = os.environ.get("JAVA_HOME")
    candidate = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not candidate or not Path(candidate).exists():
        raise BrokerToolMissing(
            f"Apache Kafka needs Java {MIN_JAVA}+, and no `java` was found "
            "(install a JDK, e.g. `apt-get install openjdk-17-jre-headless`, or set JAVA_HOME)"
        )
    try:
        out = subprocess.run(
            [candidate, "-version"], capture_output=True, text=True, timeout=30
        ).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerToolMissing(f"cannot run {candidate} -version: {exc}") from None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):  # "1.8.0" is Java 8
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise BrokerToolMissing(
            f"Apache Kafka 4 needs Java {MIN_JAVA}+, but {candidate} is Java {major or '?'}"
        )
    return candidate


class KafkaDistribution:
    """Apache Kafka's jars for one version, in ``<cache>/apache-kafka/<version>/lib``."""

    def __init__(self, version: str = DEFAULT_VERSION, cache_dir: Path | None = None):
        self.version = version
        self.home = (cache_dir or default_cache_dir()) / "apache-kafka" / version
        self.lib = self.home / "lib"

    @property
    def classpath(self) -> str:
        return str(self.lib / "*")

    @property
    def present(self) -> bool:
        # A cache fetched before the console tools were added is fetched again (from
        # Maven's own cache, mostly).
        return (self.lib / ".complete").exists() and (
            self.lib / f"kafka-tools-{self.version}.jar"
        ).exists()

    def ensure(self, out: IO[str] | None = None) -> KafkaDistribution:
        """Fetch the jars with Maven unless the cache has them; progress goes to ``out``."""
        if self.present:
            return self
        out = out or sys.stderr
        maven = shutil.which("mvn")
        if maven is None:
            raise BrokerToolMissing(
                "fetching Apache Kafka needs Maven (`mvn`), which was not found "
                "(install it, e.g. `apt-get install maven`)"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "pom.xml").write_text(_POM.format(version=self.version, log4j=LOG4J_VERSION))
        partial = self.home / "lib.partial"
        shutil.rmtree(partial, ignore_errors=True)
        print(
            f"fetching Apache Kafka {self.version} with Maven into {self.lib} (once; ~45 MB)",
            file=out,
            flush=True,
        )
        started = time.monotonic()
        command = [
            maven, "-B", "-f", str(self.home / "pom.xml"), "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}", "-DincludeScope=runtime",
        ]  # fmt: skip
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        tail: list[str] = []
        assert process.stdout is not None
        for line in process.stdout:
            tail = (tail + [line.rstrip()])[-15:]
            fetched = re.match(r"Downloaded from \S+: (\S+\.jar) \((.*?)\)", line)
            if fetched:
                print(f"  {fetched.group(1).rsplit('/', 1)[-1]} ({fetched.group(2)})", file=out)
        if process.wait() != 0:
            errors = [x for x in tail if "[ERROR]" in x] or tail
            raise BrokerStartFailed(
                f"Maven could not fetch Apache Kafka {self.version}: "
                + " | ".join(errors[:3]).replace("[ERROR] ", "")
            )
        (partial / ".complete").write_text(self.version)
        shutil.rmtree(self.lib, ignore_errors=True)
        partial.rename(self.lib)
        print(
            f"Apache Kafka {self.version} ready ({time.monotonic() - started:.0f} s)",
            file=out,
            flush=True,
        )
        return self


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (22 chars),
    never starting with "-" (StorageTool would read it as an option; Kafka's own
    ``Uuid.randomUuid`` draws again in that case too)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class ApacheKafkaBroker(BrokerProcess):
    """A single-node Apache Kafka (KRaft, broker and controller in one JVM) on loopback.

    ``data_dir`` holds the storage, the generated ``server.properties`` and ``broker.log``;
    starting again on the same directory keeps every topic, offset and committed group.

    ``sasl_users`` (name -> password) adds a ``SASL_PLAINTEXT`` listener on ``sasl_port``
    that takes SASL/PLAIN and SCRAM-SHA-256 for those users (SCRAM credentials are written
    when the storage is formatted), next to the plaintext one: for trying and testing the
    clients' security settings. It is a listener for loopback tests, not a hardened set-up.
    """

    name = "Apache Kafka broker"
    stop_timeout = 30.0  # a controlled shutdown takes a few seconds

    def __init__(
        self,
        port: int,
        data_dir: Path | None = None,
        host: str = "127.0.0.1",
        *,
        version: str = DEFAULT_VERSION,
        cache_dir: Path | None = None,
        start_timeout: float = 90.0,
        sasl_users: dict[str, str] | None = None,
        sasl_port: int | None = None,
    ):
        super().__init__(port, host, start_timeout)
        if sasl_users and sasl_port is None:
            raise ValueError("sasl_users needs a sasl_port")
        self.sasl_users = dict(sasl_users or {})
        self.sasl_port = sasl_port
        self.distribution = KafkaDistribution(version, cache_dir)
        self.data_dir = Path(
            data_dir or self.distribution.home.parent / "data" / f"port-{port}"
        ).resolve()
        self._java = ""

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def _state_path(self) -> Path:
        return self.data_dir / "inference-allocator.json"

    def _prepare(self) -> None:
        self._java = java_binary()
        self.distribution.ensure()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        state = self._load_or_create_state()
        (self.data_dir / "server.properties").write_text(self._server_properties(state))
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2)
        if not (self.data_dir / "logs" / "meta.properties").exists():
            self._format(state["cluster_id"])

    def _load_or_create_state(self) -> dict[str, object]:
        """The cluster id and controller port of this data directory, kept across restarts
        (the controller's address is recorded in the KRaft log when it is formatted)."""
        if self._state_path.exists():
            state = json.loads(self._state_path.read_text())
            controller = int(state["controller_port"])
            try:
                check_port_free(self.host, controller, "Apache Kafka controller", "--data-dir")
            except PortInUse as exc:
                raise PortInUse(
                    f"{exc}: the data directory {self.data_dir} was formatted with controller "
                    f"port {controller}; free it or use another --data-dir"
                ) from None
            return state
        state = {"cluster_id": new_cluster_id(), "controller_port": free_port(self.host)}
        self._state_path.write_text(json.dumps(state))
        return state

    def _server_properties(self, state: dict[str, object]) -> str:
        controller = f"{self.host}:{state['controller_port']}"
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": controller,
            "listeners": f"PLAINTEXT://{self.bootstrap_servers},CONTROLLER://{controller}",
            "advertised.listeners": f"PLAINTEXT://{self.bootstrap_servers}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir / "logs"),
            # One node: every internal topic has one replica.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # A group forms at once, and short session timeouts (tests, bench) are allowed.
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "1000",
            # Two cores on the machines this runs on.
            "num.network.threads": "2",
            "num.io.threads": "4",
            "log.cleaner.backoff.ms": "5000",
            # The controller appends a no-op record to the metadata log every 500 ms by
            # default (a sign of life for other nodes; there are none): every 5 s costs an
            # idle broker less CPU (measured in BENCHMARKS.md's history).
            "metadata.max.idle.interval.ms": "5000",
        }
        if self.sasl_users:
            sasl = f"SASL_PLAINTEXT://{self.host}:{self.sasl_port}"
            settings["listeners"] += f",{sasl}"
            settings["advertised.listeners"] += f",{sasl}"
            settings["listener.security.protocol.map"] += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
            settings["sasl.enabled.mechanisms"] = "PLAIN,SCRAM-SHA-256"
            users = " ".join(f'user_{name}="{pw}"' for name, pw in self.sasl_users.items())
            prefix = "listener.name.sasl_plaintext"
            settings[f"{prefix}.plain.sasl.jaas.config"] = (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
            )
            settings[f"{prefix}.scram-sha-256.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def _format(self, cluster_id: object) -> None:
        command = [
            self._java, *self._jvm_options(heap="-Xmx256m"), "-cp",
            self.distribution.classpath, "kafka.tools.StorageTool", "format", "--standalone",
            "-t", str(cluster_id), "-c", str(self.data_dir / "server.properties"),
        ]  # fmt: skip
        for name, password in self.sasl_users.items():
            command += ["--add-scram", f"SCRAM-SHA-256=[name={name},password={password}]"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            lines = (result.stdout + result.stderr).strip().splitlines()
            raise BrokerStartFailed(
                f"formatting Kafka storage in {self.data_dir} failed: " + " | ".join(lines[-3:])
            )

    def _jvm_options(self, heap: str | None = None) -> list[str]:
        """Kafka's own start script's options, overridable by the same variables
        (``KAFKA_HEAP_OPTS``, ``KAFKA_JVM_PERFORMANCE_OPTS``), with one change: C1 only.

        This broker lives for a dev session, a test run or a benchmark on a small machine,
        where the C2 compiler's threads burn CPU for minutes after start-up: on a small
        machine under load, C1 only cut the broker's CPU per request substantially and left
        more of the machine to the allocator (figures in BENCHMARKS.md's history). A
        long-lived broker wants C2: set ``KAFKA_JVM_PERFORMANCE_OPTS`` without
        ``-XX:TieredStopAtLevel=1``.
        """
        heap_options = os.environ.get("KAFKA_HEAP_OPTS", heap or "-Xms256m -Xmx1g")
        performance = os.environ.get(
            "KAFKA_JVM_PERFORMANCE_OPTS",
            "-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 "
            "-XX:+ExplicitGCInvokesConcurrent -XX:TieredStopAtLevel=1",
        )
        return [
            *heap_options.split(),
            *performance.split(),
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
        ]

    def _command(self) -> list[str]:
        return [
            self._java,
            *self._jvm_options(),
            "-cp",
            self.distribution.classpath,
            "kafka.Kafka",
            str(self.data_dir / "server.properties"),
        ]

    def _log_file(self) -> IO[bytes]:
        return log_path_file(self.log_path)
