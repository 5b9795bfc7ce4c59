"""A TCP proxy the test controls: cut a client off from a server and let it back, at will.

The fault suite puts one between a site and Kafka (and between the sinks and the cloud
database) to make the network fail in the two ways that differ for a client:

- ``cut("reset")``: every open connection is reset (RST) and new ones are accepted and reset at
  once, as when a host or a NAT drops the flows: clients notice immediately;
- ``cut("blackhole")``: nothing passes either way, connections stay open and new ones are
  accepted but get no answer, as in a partition: clients notice only by their own timeouts.
  :meth:`restore` lets the held bytes through (TCP would have retransmitted them).

Threads: one accepts, two per connection copy bytes. Everything is bounded by
:meth:`close`; the proxy listens on 127.0.0.1 only.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from dataclasses import dataclass, field

from devenv.ports import free_port

__all__ = ["TcpProxy", "ProxyError"]

_CHUNK = 65536
_TICK = 0.2  # how often blocked threads look at the state


class ProxyError(RuntimeError):
    """The proxy cannot start (its port is taken) or was used after close."""


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER 0): the peer sees the connection reset."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Conn:
    client: socket.socket
    upstream: socket.socket
    closed: threading.Event = field(default_factory=threading.Event)

    def close(self, reset: bool) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for s in (self.client, self.upstream):
            if reset:
                _reset(s)
            else:
                try:
                    s.close()
                except OSError:
                    pass


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port`` until cut."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1",
                 port: int | None = None, name: str = "proxy") -> None:
        self.name = name
        self.target = (target_host, target_port)
        self.port = port if port is not None else free_port()
        self._flowing = threading.Event()
        self._flowing.set()
        self._refusing = False
        self._closed = threading.Event()
        self._conns: set[_Conn] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.connections = 0  # accepted so far (tests look at it)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._refusing or not self._flowing.is_set()

    def start(self) -> "TcpProxy":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", self.port))
        except OSError as exc:
            listener.close()
            raise ProxyError(f"{self.name}: cannot listen on 127.0.0.1:{self.port}: {exc}") from exc
        listener.listen(128)
        listener.settimeout(_TICK)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"{self.name}-accept",
                                          daemon=True)
        self._acceptor.start()
        return self

    def cut(self, mode: str = "reset") -> None:
        """Cut the traffic (see the module docstring for ``reset`` and ``blackhole``)."""
        if mode not in ("reset", "blackhole"):
            raise ValueError(f"{self.name}: cut mode must be reset or blackhole, not {mode!r}")
        if mode == "blackhole":
            self._flowing.clear()
            return
        self._refusing = True
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            conn.close(reset=True)

    def restore(self) -> None:
        """Let traffic through again (connections held by a blackhole carry on)."""
        self._refusing = False
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()  # wake the pumps so they see the close
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            conn.close(reset=False)
        if self._acceptor is not None:
            self._acceptor.join(5)

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- threads ----------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return  # closed
            self.connections += 1
            if self._refusing:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)  # the server is down: the client sees what it would see
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            conn = _Conn(client, upstream)
            with self._lock:
                self._conns.add(conn)
            for src, dst, way in ((client, upstream, "up"), (upstream, client, "down")):
                threading.Thread(target=self._pump, args=(conn, src, dst),
                                 name=f"{self.name}-{way}", daemon=True).start()

    def _pump(self, conn: _Conn, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not conn.closed.is_set() and not self._closed.is_set():
                if not self._flowing.wait(_TICK):
                    continue  # blackhole: read nothing, so nothing is acknowledged either
                ready, _, _ = select.select([src], [], [], _TICK)
                if not ready:
                    continue
                data = src.recv(_CHUNK)
                if not data:
                    break
                while not self._flowing.is_set():  # cut while this chunk was in hand: hold it
                    if conn.closed.is_set() or self._closed.is_set():
                        return
                    self._flowing.wait(_TICK)
                dst.sendall(data)
        except (OSError, ValueError):  # ValueError: the other direction closed the socket
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close(reset=False)
