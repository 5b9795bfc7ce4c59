"""Free loopback TCP ports for the servers the test environment starts."""

from __future__ import annotations

import errno
import random
import socket
import threading

# Ports handed out by this process; never handed out twice, so two servers
# started by one test session cannot be given the same port before either
# has bound it.
_issued: set[int] = set()
_lock = threading.Lock()

# Below Linux's default ephemeral range (32768-60999) so outgoing client
# connections do not grab the port between free_port() and the server's bind,
# and randomised so concurrent test sessions rarely pick the same one.
_LOW, _HIGH = 20000, 32000


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    There is an unavoidable window between this check and the server binding
    the port; the servers in :mod:`devenv` retry with another port when their
    first start fails because the port was taken meanwhile.
    """
    with _lock:
        for _ in range(200):
            port = random.randrange(_LOW, _HIGH)
            if port in _issued or not _bindable(port):
                continue
            _issued.add(port)
            return port
        # Extremely crowded machine: let the kernel choose.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        _issued.add(port)
        return port
