"""A real Apache Kafka broker (KRaft, single combined broker+controller node)
for tests and local development.

The broker jars come from Maven Central (``devenv/kafka-pom.xml``) and are
cached once in ``~/.cache/tributary/kafka-<version>/libs`` (``$TRIBUTARY_CACHE``
overrides the cache root).  The broker runs as
``java -cp '<libs>/*' kafka.Kafka server.properties`` after its storage was
formatted with ``kafka.tools.StorageTool``; it logs (log4j 1 / reload4j) to
``base_dir/kafka.log``, JVM output goes to ``base_dir/kafka.out``.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from devenv import _file_size, _kill_group, _log_tail, _register, _spawn, _unregister
from devenv.ports import free_port

__all__ = ["KafkaBroker", "ensure_kafka", "cache_root", "KAFKA_VERSION"]

KAFKA_VERSION = "3.9.1"
POM = Path(__file__).with_name("kafka-pom.xml")
_MAIN_JAR = f"kafka_2.13-{KAFKA_VERSION}.jar"
_FETCH_TIMEOUT = 1800.0

# Applied to every broker; KafkaBroker(settings=...) overrides them.
BASE_SETTINGS: dict[str, str] = {
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "1",
    "group.initial.rebalance.delay.ms": "0",
    "auto.create.topics.enable": "true",
    "delete.topic.enable": "true",
    # after kill9 the restarted broker cannot register until the controller
    # expired its previous incarnation's session (default 9 s)
    "broker.session.timeout.ms": "3000",
    "broker.heartbeat.interval.ms": "500",
}
_RESERVED = {
    "process.roles", "node.id", "controller.quorum.voters", "listeners",
    "advertised.listeners", "controller.listener.names", "log.dirs",
}

_LOG4J = """\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log}
log4j.appender.file.Append=true
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.clients=WARN
"""


# ---------------------------------------------------------------- fetching


def cache_root(cache_dir: Path | str | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("TRIBUTARY_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "tributary"


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def _complete(libs: Path, marker: Path) -> bool:
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if info.get("pom_sha256") != _pom_digest():
        return False
    jars = info.get("jars") or []
    return _MAIN_JAR in jars and all(
        (libs / jar).is_file() and (libs / jar).stat().st_size > 0 for jar in jars
    )


def _require(tool: str, what: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise RuntimeError(
            f"`{tool}` not found on PATH; {what} (Debian: apt-get install -y "
            f"{'openjdk-17-jre-headless' if tool == 'java' else 'maven'})"
        )
    return path


def ensure_kafka(cache_dir: Path | str | None = None) -> Path:
    """Fetch the Kafka broker jars (once) and return the ``libs`` directory.

    Idempotent and safe to call concurrently (file lock); a completed fetch is
    recorded in ``complete.json`` next to ``libs`` (with a hash of the POM, so
    editing the POM triggers a refetch).
    """
    root = cache_root(cache_dir) / f"kafka-{KAFKA_VERSION}"
    libs, marker = root / "libs", root / "complete.json"
    if not POM.is_file():
        raise RuntimeError(
            f"{POM} is missing; use the source tree (pip install -e .) or pass libs= explicitly"
        )
    if _complete(libs, marker):
        return libs
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        deadline = time.monotonic() + _FETCH_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"timed out waiting for the lock on {root}") from None
                time.sleep(0.5)
        if _complete(libs, marker):  # fetched by someone else meanwhile
            return libs
        mvn = _require("mvn", "Maven is needed to fetch the Kafka broker jars")
        _require("java", "a JDK/JRE (>= 11) is needed to run Kafka")
        print(
            f"devenv: fetching Kafka {KAFKA_VERSION} jars from Maven Central into {libs} ...",
            file=sys.stderr, flush=True,
        )
        partial = Path(tempfile.mkdtemp(prefix="libs.partial-", dir=root))
        try:
            cmd = [
                mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
                f"-DoutputDirectory={partial}", "-DincludeScope=runtime",
            ]
            try:
                res = subprocess.run(
                    cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                    timeout=_FETCH_TIMEOUT,
                )
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"Maven fetch of Kafka timed out after {_FETCH_TIMEOUT}s") from None
            if res.returncode != 0:
                tail = "\n".join((res.stdout + res.stderr).splitlines()[-40:])
                raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{tail}")
            jars = sorted(p.name for p in partial.glob("*.jar"))
            if _MAIN_JAR not in jars:
                raise RuntimeError(f"Maven did not produce {_MAIN_JAR} in {partial}")
            marker.unlink(missing_ok=True)
            if libs.exists():
                shutil.rmtree(libs)
            partial.rename(libs)
            marker.write_text(json.dumps({"pom_sha256": _pom_digest(), "jars": jars}, indent=1))
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
    return libs


# ------------------------------------------------------------------ broker


def _new_cluster_id() -> str:
    # Kafka's Uuid string form: url-safe base64 of 16 bytes, no padding.  Like
    # Kafka's Uuid.randomUuid(), never start with '-' (command lines take it
    # for an option).
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _prop_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


class KafkaBroker:
    """A single-node KRaft Kafka broker with its data under ``base_dir``.

    ``base_dir`` holds ``server.properties``, ``log4j.properties``, the data
    (``data/``), the broker log ``kafka.log`` and JVM output ``kafka.out``.
    Ports (client and controller) are fixed for the object's lifetime, so
    stop()/kill9() followed by start() keeps ``bootstrap_servers``.
    """

    def __init__(
        self,
        base_dir: Path | str,
        port: int | None = None,
        libs: Path | None = None,
        settings: dict[str, Any] | None = None,
        *,
        controller_port: int | None = None,
        heap: str = "512m",
        extra_listeners: dict[str, int] | None = None,
    ) -> None:
        """``extra_listeners``: listener name -> the port it is advertised at, for clients that
        reach the broker through something in between (a TCP proxy a test cuts): Kafka clients
        connect to the advertised address from metadata, not to the bootstrap address, so the
        proxy's port must be what the broker advertises to them. Each gets a port of its own
        (:meth:`listener_port`), where the proxy forwards to."""
        settings = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in (settings or {}).items()}
        bad = _RESERVED & settings.keys()
        if bad:
            raise ValueError(f"{sorted(bad)} are managed by KafkaBroker")
        self.base_dir = Path(base_dir).absolute()
        self.settings = settings
        self._ports_given = port is not None
        self._port = port if port is not None else free_port()
        self._controller_port = controller_port if controller_port is not None else free_port()
        self._libs = Path(libs) if libs else None
        self._heap = heap
        for name in extra_listeners or {}:
            if not name.isidentifier() or not name.isupper() or name in ("PLAINTEXT", "CONTROLLER"):
                raise ValueError(f"extra listener name {name!r}: upper case letters, digits and "
                                 f"_, not PLAINTEXT or CONTROLLER")
        self._advertised = dict(extra_listeners or {})
        self._listener_ports = {name: free_port() for name in self._advertised}
        self._proc: subprocess.Popen | None = None
        self._started_once = False

    # ------------------------------------------------------------ properties
    @property
    def port(self) -> int:
        return self._port

    @property
    def controller_port(self) -> int:
        return self._controller_port

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self._port}"

    def listener_port(self, name: str) -> int:
        """The port the extra listener ``name`` listens on (it advertises another)."""
        return self._listener_ports[name]

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "kafka.log"

    @property
    def out_file(self) -> Path:
        return self.base_dir / "kafka.out"

    @property
    def config_file(self) -> Path:
        return self.base_dir / "server.properties"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.is_running() else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<KafkaBroker {self.bootstrap_servers} {state} {self.base_dir}>"

    # ------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 60.0) -> "KafkaBroker":
        """Format the storage (first time), start the JVM and wait (up to
        ``timeout`` s) until an AdminClient can list topics; returns self."""
        if self.is_running():
            return self
        libs = self._libs or ensure_kafka()
        self._libs = libs
        java = _require("java", "a JDK/JRE (>= 11) is needed to run Kafka")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        (self.base_dir / "log4j.properties").write_text(_LOG4J.format(log=self.log_file))
        attempts = 1 if (self._ports_given or self._started_once) else 3
        for attempt in range(1, attempts + 1):
            self._write_config()
            if not (self.data_dir / "meta.properties").exists():
                self._format(java, libs)
            offsets = (_file_size(self.log_file), _file_size(self.out_file))
            self._proc = _spawn(
                self._java_cmd(java, libs, "kafka.Kafka", str(self.config_file)),
                log_path=self.out_file,
                cwd=self.base_dir,
                death_signal=signal.SIGKILL,
            )
            _register(self)
            try:
                self._wait_ready(timeout, offsets)
            except _PortTaken:
                if attempt == attempts:
                    raise RuntimeError(
                        f"Kafka broker: ports {self._port}/{self._controller_port} in use; "
                        f"log tail:\n{self._tails(offsets)}"
                    ) from None
                self._port, self._controller_port = free_port(), free_port()
                self._listener_ports = {name: free_port() for name in self._advertised}
                continue
            self._started_once = True
            return self
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 30.0) -> None:
        """Controlled shutdown (SIGTERM); SIGKILL after ``timeout`` seconds."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                    proc.wait(timeout)
                except ProcessLookupError:
                    pass
                except subprocess.TimeoutExpired:
                    print(f"devenv: Kafka broker did not stop within {timeout}s, killing",
                          file=sys.stderr)
            _kill_group(proc)
            self._proc = None
        _unregister(self)

    def kill9(self) -> None:
        """SIGKILL the broker JVM; a later :meth:`start` recovers its logs."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError("Kafka broker is not running")
        _kill_group(proc)
        self._proc = None
        _unregister(self)

    def _atexit_stop(self) -> None:
        self.stop(timeout=10)

    def __enter__(self) -> "KafkaBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------- helpers
    def _java_cmd(self, java: str, libs: Path, main: str, *args: str) -> list[str]:
        return [
            java,
            f"-Xmx{self._heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            # C1 only: ~35% less CPU to start (2-core CI); plenty for tests
            "-XX:TieredStopAtLevel=1",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.base_dir / 'log4j.properties'}",
            f"-Dkafka.logs.dir={self.base_dir}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def _write_config(self) -> None:
        extra = sorted(self._advertised)
        listen = "".join(f",{n}://127.0.0.1:{self._listener_ports[n]}" for n in extra)
        advertise = "".join(f",{n}://127.0.0.1:{self._advertised[n]}" for n in extra)
        protocols = "".join(f",{n}:PLAINTEXT" for n in extra)
        props: dict[str, str] = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self._controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self._port},"
                         f"CONTROLLER://127.0.0.1:{self._controller_port}{listen}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self._port}{advertise}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map":
                f"PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT{protocols}",
            "log.dirs": str(self.data_dir),
        }
        props.update(BASE_SETTINGS)
        props.update(self.settings)
        lines = ["# Managed by devenv: rewritten on every KafkaBroker.start()"]
        lines += [f"{k}={_prop_escape(v)}" for k, v in props.items()]
        self.config_file.write_text("\n".join(lines) + "\n")

    def _format(self, java: str, libs: Path) -> None:
        cmd = self._java_cmd(
            java, libs, "kafka.tools.StorageTool", "format",
            f"--cluster-id={_new_cluster_id()}", f"--config={self.config_file}",
            "--ignore-formatted",
        )
        try:
            res = subprocess.run(
                cmd, cwd=self.base_dir, stdin=subprocess.DEVNULL, capture_output=True,
                text=True, timeout=120,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError("Kafka StorageTool format timed out") from None
        if res.returncode != 0:
            raise RuntimeError(
                f"Kafka StorageTool format failed ({res.returncode}):\n{res.stdout}{res.stderr}\n"
                f"{_log_tail(self.log_file)}"
            )

    def _tails(self, offsets: tuple[int, int]) -> str:
        return (
            f"--- {self.log_file} ---\n{_log_tail(self.log_file, since=offsets[0])}\n"
            f"--- {self.out_file} ---\n{_log_tail(self.out_file, lines=20, since=offsets[1])}"
        )

    def _wait_ready(self, timeout: float, offsets: tuple[int, int]) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        assert self._proc is not None
        deadline = time.monotonic() + timeout
        admin = None
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                _unregister(self)
                tails = self._tails(offsets)
                if (
                    not self._ports_given
                    and not self._started_once
                    and "Address already in use" in tails
                ):
                    raise _PortTaken()
                raise RuntimeError(
                    f"Kafka broker exited with code {code} while starting:\n{tails}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill9()
                raise RuntimeError(
                    f"Kafka broker at {self.bootstrap_servers} not ready within {timeout}s:\n"
                    f"{self._tails(offsets)}"
                )
            if admin is None and _accepts(self._port):
                # log_level 0: no librdkafka connection-refused noise on stderr
                admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
            if admin is not None:
                try:
                    md = admin.list_topics(timeout=max(0.5, min(5.0, remaining)))
                    if md.brokers:
                        return
                except KafkaException:
                    pass
            time.sleep(0.1)


class _PortTaken(Exception):
    pass


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
