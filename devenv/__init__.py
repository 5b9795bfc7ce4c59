"""Development and test environment: real PostgreSQL clusters and a real Kafka
broker started as local processes (no Docker, no mocks).

Public API (see the submodules)::

    from devenv.postgres import PgCluster, pg_bindir, ensure_postgres_installed
    from devenv.kafka import KafkaBroker, ensure_kafka
    from devenv.ports import free_port

Every server started here is registered for an ``atexit`` stop, runs in its
own process group, and (on Linux, when started from the main thread) gets a
parent-death signal, so nothing outlives the Python process that started it,
even when that process is killed.

This module also holds the small process helpers the submodules share; names
starting with ``_`` are internal.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["unique_name"]

_counter = itertools.count(1)


def unique_name(prefix: str = "t") -> str:
    """A fresh lower-case name usable as a PostgreSQL identifier/database name
    and as a Kafka topic or consumer-group name (``[a-z0-9_]``, <= 63 chars)."""
    clean = re.sub(r"[^a-z0-9_]", "_", prefix.lower()).strip("_") or "t"
    if clean[0].isdigit():
        clean = "t_" + clean
    return f"{clean[:40]}_{next(_counter)}_{secrets.token_hex(4)}"


# --------------------------------------------------------------------------
# internal helpers shared by devenv.postgres and devenv.kafka


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _log_tail(path: Path, lines: int = 60, since: int = 0) -> str:
    """Last ``lines`` lines of a log file, starting at byte offset ``since``."""
    try:
        with open(path, "rb") as f:
            f.seek(since)
            data = f.read()
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    text = data.decode("utf-8", "replace").rstrip("\n")
    if not text:
        return f"<{path} is empty>"
    return "\n".join(text.splitlines()[-lines:])


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


_PR_SET_PDEATHSIG = 1


def _death_signal_preexec(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when the process
    that spawned it dies (Linux only).  Only used from the main thread: the
    signal fires when the spawning *thread* exits, which would kill servers
    started from short-lived worker threads."""
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child, after setuid/setsid
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # parent already gone
            os.kill(os.getpid(), sig)

    return preexec


def _spawn(
    argv: list[str],
    *,
    log_path: Path,
    cwd: Path,
    death_signal: int,
    env: dict[str, str] | None = None,
    user_kwargs: dict[str, Any] | None = None,
) -> subprocess.Popen:
    """Start a server process in its own session (process group), with stdout
    and stderr appended to ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=_death_signal_preexec(death_signal),
            **(user_kwargs or {}),
        )


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in process group ``pgid``."""
    if not sys.platform.startswith("linux"):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces/parens
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc; empty elsewhere)."""
    found = []
    if not sys.platform.startswith("linux"):
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid and fields[0] != b"Z":
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] != b"Z"


def _kill_group(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGKILL ``proc``, its process group and its direct children, and wait until all are gone.

    PostgreSQL's backends each call setsid(), so they are not in the postmaster's group: the
    postmaster is stopped first (no new children), then its children and it are killed.
    """
    try:
        os.kill(proc.pid, signal.SIGSTOP)
    except (ProcessLookupError, PermissionError):
        pass
    children = _children(proc.pid)
    for child in children:
        try:
            os.kill(child, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:  # pragma: no cover - kernel trouble
        pass
    deadline = time.monotonic() + timeout
    while (_group_alive(proc.pid) or any(_alive(c) for c in children)) \
            and time.monotonic() < deadline:
        time.sleep(0.05)


# servers to stop at interpreter exit (fixtures normally stop them earlier)
_running: dict[int, Any] = {}
_running_lock = threading.Lock()


def _register(server: Any) -> None:
    with _running_lock:
        _running[id(server)] = server


def _unregister(server: Any) -> None:
    with _running_lock:
        _running.pop(id(server), None)


@atexit.register
def _stop_all() -> None:
    with _running_lock:
        servers = list(_running.values())
    for server in servers:
        try:
            server._atexit_stop()
        except Exception as e:  # noqa: BLE001 - best effort at exit
            print(f"devenv: failed to stop {server!r} at exit: {e}", file=sys.stderr)
