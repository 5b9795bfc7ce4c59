"""The daemons' HTTP endpoint: ``/metrics`` (Prometheus text), ``/healthz`` (the process is
alive and its main loop turns) and ``/readyz`` (the source streams its slot, the sink consumes).

A small threaded server of the standard library; the exposition itself is prometheus_client's.
Kubernetes restarts a pod whose liveness fails, so ``/healthz`` only fails when the main loop
has not turned for ``stall_s`` (a wedged process), never because a database or Kafka is away
(the daemon retries those by itself, and a restart would not help).
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


class Health:
    """What the probes report; the daemon's loops update it."""

    def __init__(self, stall_s: float = 300.0) -> None:
        self.ready = False
        self.why_not = "starting"
        self.stall_s = stall_s
        self._beat = time.monotonic()

    def beat(self) -> None:
        """The main loop turned (called from every loop that may run long)."""
        self._beat = time.monotonic()

    def set_ready(self, ready: bool, why_not: str = "") -> None:
        self.ready, self.why_not = ready, why_not

    @property
    def alive(self) -> bool:
        return time.monotonic() - self._beat < self.stall_s


class MetricsServer:
    """Serves one registry and one Health on host:port in a daemon thread."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: Health,
                 on_scrape: Callable[[], None] | None = None) -> None:
        def respond(handler: BaseHTTPRequestHandler) -> None:
            path = handler.path.split("?", 1)[0]
            if path == "/metrics":
                if on_scrape is not None:
                    try:
                        on_scrape()
                    except Exception:  # a figure that cannot be computed now: serve the rest
                        log.debug("metrics refresh failed", exc_info=True)
                status, body, ctype = 200, generate_latest(registry), CONTENT_TYPE_LATEST
            elif path == "/healthz":
                ok = health.alive
                status = 200 if ok else 503
                body = b"ok\n" if ok else b"main loop stalled\n"
                ctype = "text/plain"
            elif path == "/readyz":
                status = 200 if health.ready else 503
                body = b"ready\n" if health.ready else f"not ready: {health.why_not}\n".encode()
                ctype = "text/plain"
            else:
                status, body, ctype = 404, b"not found: /metrics, /healthz, /readyz\n", "text/plain"
            handler.send_response(status)
            handler.send_header("Content-Type", ctype)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                respond(self)

            def log_message(self, format: str, *args: object) -> None:  # probes: no log lines
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics",
                                        daemon=True)

    def start(self) -> "MetricsServer":
        self._thread.start()
        log.info("metrics and health endpoint", extra={
            "address": f"http://{self.server.server_address[0]}:{self.port}",
            "paths": ["/metrics", "/healthz", "/readyz"]})
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
