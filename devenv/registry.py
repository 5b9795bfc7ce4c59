"""A real schema registry for tests: Apicurio Registry, which speaks the Confluent API.

Its server is published on Maven Central as a distribution (``io.apicurio:apicurio-registry-app:
<version>:tar.gz:all``, a Quarkus runner jar with its ``lib/``; 2.6.x runs on JDK 17). It is
fetched once into ``~/.cache/tributary/apicurio-<version>/`` (about 140 MB) and run with its
in-memory storage on a free loopback port; the Confluent-compatible API is under
``/apis/ccompat/v7``. Global compatibility is set to BACKWARD (the Confluent default; Apicurio's
is NONE), so the registry refuses what a Confluent registry would.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from devenv import _kill_group, _log_tail, _register, _spawn, _unregister
from devenv.kafka import _require, cache_root
from devenv.ports import free_port

APICURIO_VERSION = "2.6.13.Final"
_ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
_RUNNER = f"apicurio-registry-app-{APICURIO_VERSION}-runner.jar"
_FETCH_TIMEOUT = 1800.0
CCOMPAT = "/apis/ccompat/v7"


def ensure_apicurio(cache_dir: Path | str | None = None) -> Path:
    """Fetch and unpack the registry (once); returns the directory holding the runner jar."""
    root = cache_root(cache_dir) / f"apicurio-{APICURIO_VERSION}"
    app = root / "app"
    if (app / _RUNNER).is_file():
        return app
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be fetching it
        if (app / _RUNNER).is_file():
            return app
        mvn = _require("mvn", "Maven is needed to fetch the schema registry")
        print(f"devenv: fetching Apicurio Registry {APICURIO_VERSION} from Maven Central "
              f"(~140 MB) into {app} ...", file=sys.stderr, flush=True)
        partial = Path(tempfile.mkdtemp(prefix="partial-", dir=root))
        try:
            cmd = [mvn, "-q", "-B", "dependency:copy", f"-Dartifact={_ARTIFACT}",
                   f"-DoutputDirectory={partial}"]
            res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                 timeout=_FETCH_TIMEOUT)
            if res.returncode != 0:
                tail = "\n".join((res.stdout + res.stderr).splitlines()[-30:])
                raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{tail}")
            archive = next(partial.glob("*.tar.gz"))
            unpacked = partial / "app"
            with tarfile.open(archive) as tar:
                tar.extractall(unpacked, filter="data")
            runner = next(unpacked.rglob(_RUNNER))
            if app.exists():
                shutil.rmtree(app)
            runner.parent.rename(app)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return app


class SchemaRegistryServer:
    """Apicurio Registry on 127.0.0.1 with in-memory storage; ``url`` is its Confluent API."""

    def __init__(self, base_dir: Path | str, port: int | None = None) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.port = port or free_port()
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CCOMPAT}"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "registry.out"

    def start(self, timeout: float = 120.0) -> "SchemaRegistryServer":
        app = ensure_apicurio()
        java = _require("java", "a JDK/JRE (>= 17) is needed to run the schema registry")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._proc = _spawn(
            [java, "-Xmx384m", "-XX:TieredStopAtLevel=1", "-Dquarkus.http.host=127.0.0.1",
             f"-Dquarkus.http.port={self.port}", "-jar", str(app / _RUNNER)],
            log_path=self.log_file, cwd=self.base_dir, death_signal=signal.SIGKILL)
        _register(self)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"schema registry exited while starting:\n"
                                   f"{_log_tail(self.log_file)}")
            try:
                with urllib.request.urlopen(f"{self.url}/subjects", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"schema registry not ready within {timeout}s:\n"
                                   f"{_log_tail(self.log_file)}")
            time.sleep(0.3)
        self._put("/config", {"compatibility": "BACKWARD"})
        return self

    def _put(self, path: str, body: dict) -> None:
        req = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(),
                                     method="PUT",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def stop(self, timeout: float = 20.0) -> None:
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            _kill_group(proc)
            self._proc = None
        _unregister(self)

    def _atexit_stop(self) -> None:
        self.stop(timeout=5)
