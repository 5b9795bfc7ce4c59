"""Throwaway PostgreSQL clusters for tests and local development.

Each :class:`PgCluster` is a real ``initdb``'d data directory served by a real
``postgres`` postmaster listening on 127.0.0.1 (plus a unix socket in its own
directory), configured for logical replication.  initdb/postgres refuse to run
as root, so when this process is root they run as the ``postgres`` OS user
(the directories they need are chown'ed to it).

Durability is deliberately off (``fsync=off``, ``synchronous_commit=off``,
``full_page_writes=off``): the clusters are throwaway and the tests are faster.
Note for crash tests: with ``synchronous_commit=off`` a commit acknowledged
just before :meth:`PgCluster.kill9` may be lost; use
``SET synchronous_commit = on`` in sessions whose commits must survive a
kill9 (``fsync=off`` is fine: the OS keeps the writes, only the processes die).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from devenv import (
    _file_size,
    _is_root,
    _kill_group,
    _log_tail,
    _register,
    _spawn,
    _unregister,
)
from devenv.ports import free_port

__all__ = ["PgCluster", "pg_bindir", "ensure_postgres_installed"]

MIN_MAJOR = 15
APT_PACKAGE = "postgresql-15"
APT_HINT = f"apt-get update && apt-get install -y {APT_PACKAGE}"
_DEBIAN_ROOT = Path("/usr/lib/postgresql")

# Applied to every cluster; PgCluster(settings=...) overrides them.
BASE_SETTINGS: dict[str, str] = {
    "listen_addresses": "127.0.0.1",
    "wal_level": "logical",
    "max_replication_slots": "50",
    "max_wal_senders": "50",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "timezone": "UTC",
    "log_timezone": "UTC",
    "log_line_prefix": "%m [%p] %q%u@%d ",
    "logging_collector": "off",
}
_RESERVED = {"port", "unix_socket_directories"}


def _server_major(bindir: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\b(\d+)(?:\.\d+)?", out)
    return int(m.group(1)) if m else None


def _usable(bindir: Path) -> bool:
    return all((bindir / exe).is_file() for exe in ("initdb", "postgres"))


def pg_bindir() -> Path:
    """Directory of the newest installed PostgreSQL (>= 15) server binaries.

    Looks at ``$TRIBUTARY_PG_BINDIR`` first, then Debian's
    ``/usr/lib/postgresql/<major>/bin``, then an ``initdb`` on ``PATH``.
    Raises RuntimeError (with the apt command to run) when there is none.
    """
    override = os.environ.get("TRIBUTARY_PG_BINDIR")
    if override:
        bindir = Path(override)
        if not _usable(bindir):
            raise RuntimeError(
                f"TRIBUTARY_PG_BINDIR={override} does not contain initdb and postgres"
            )
        return bindir
    found: list[tuple[int, Path]] = []
    if _DEBIAN_ROOT.is_dir():
        for bindir in _DEBIAN_ROOT.glob("*/bin"):
            try:
                major = int(bindir.parent.name)
            except ValueError:
                continue
            if major >= MIN_MAJOR and _usable(bindir):
                found.append((major, bindir))
    if found:
        return max(found)[1]
    initdb = shutil.which("initdb")
    if initdb:
        bindir = Path(initdb).resolve().parent
        major = _server_major(bindir) if _usable(bindir) else None
        if major is not None and major >= MIN_MAJOR:
            return bindir
    raise RuntimeError(
        f"No PostgreSQL >= {MIN_MAJOR} server binaries found (looked in "
        f"{_DEBIAN_ROOT}/<version>/bin and PATH). Install them as root with:\n"
        f"    {APT_HINT}\n"
        "or point TRIBUTARY_PG_BINDIR at a directory containing initdb and postgres."
    )


def ensure_postgres_installed() -> Path:
    """Return :func:`pg_bindir`, first installing ``postgresql-15`` with apt-get
    when it is missing and this process is root (otherwise re-raise)."""
    try:
        return pg_bindir()
    except RuntimeError:
        if not (_is_root() and shutil.which("apt-get")):
            raise
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"devenv: installing {APT_PACKAGE} with apt-get ...", file=sys.stderr, flush=True)
    for cmd in (
        ["apt-get", "-o", "DPkg::Lock::Timeout=600", "update"],
        ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", APT_PACKAGE],
    ):
        try:
            res = subprocess.run(
                cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                text=True, timeout=1800,
            )
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"{' '.join(cmd)} timed out after {e.timeout}s") from None
        if res.returncode != 0:
            tail = "\n".join((res.stdout + res.stderr).splitlines()[-30:])
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{tail}")
    return pg_bindir()


def _conf_value(value: Any) -> str:
    if isinstance(value, bool):
        value = "on" if value else "off"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


_HBA = """\
# Managed by devenv (throwaway test cluster): trust everything on loopback.
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
host    all          all   127.0.0.1/32   trust
host    all          all   ::1/128        trust
local   replication  all                  trust
host    replication  all   127.0.0.1/32   trust
host    replication  all   ::1/128        trust
"""
_CONF_NAME = "devenv.conf"
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; keep a margin


class PgCluster:
    """A throwaway PostgreSQL cluster in ``base_dir/name``.

    ``data_dir`` is ``base_dir/name/data``, the server log ``base_dir/name/postgres.log``
    (appended across restarts).  ``settings`` override :data:`BASE_SETTINGS`;
    they are written to ``data_dir/devenv.conf`` (included from postgresql.conf)
    on every start, so ``ALTER SYSTEM`` still takes precedence.

    The port is fixed for the object's lifetime (restarts and kill9/start keep
    the same DSN).  When no port was given and the first start fails because
    someone else took the port meanwhile, another free port is tried.
    """

    def __init__(
        self,
        name: str,
        base_dir: Path | str,
        port: int | None = None,
        settings: dict[str, Any] | None = None,
        *,
        bindir: Path | None = None,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"cluster name must match [A-Za-z0-9_.-]+: {name!r}")
        settings = dict(settings or {})
        bad = _RESERVED & settings.keys()
        if bad:
            raise ValueError(f"set {sorted(bad)} through PgCluster arguments, not settings")
        self.name = name
        self.base_dir = Path(base_dir).absolute()
        self.settings: dict[str, Any] = settings
        self._dir = self.base_dir / name
        self._port_given = port is not None
        self._port = port if port is not None else free_port()
        self._bindir = Path(bindir) if bindir else None
        self._proc: subprocess.Popen | None = None
        self._socket_dir: Path | None = None
        self._tmp_socket_dir = False
        self._started_once = False

    # ------------------------------------------------------------ properties
    @property
    def port(self) -> int:
        return self._port

    @property
    def data_dir(self) -> Path:
        return self._dir / "data"

    @property
    def log_file(self) -> Path:
        return self._dir / "postgres.log"

    @property
    def socket_dir(self) -> Path | None:
        """Directory of the unix socket (``None`` before the first start)."""
        return self._socket_dir

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.is_running() else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def dsn(self, dbname: str = "postgres") -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", dbname):
            dbname = "'" + dbname.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return f"host=127.0.0.1 port={self._port} user=postgres dbname={dbname}"

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<PgCluster {self.name} port={self._port} {state} {self._dir}>"

    # ------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 60.0) -> "PgCluster":
        """initdb if needed, start the postmaster and wait (up to ``timeout``
        seconds) until it accepts connections; returns self."""
        if self.is_running():
            return self
        bindir = self._bindir or ensure_postgres_installed()
        self._bindir = bindir
        owner = pwd.getpwnam("postgres") if _is_root() else None
        self._prepare_dirs(owner)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bindir, owner)
        attempts = 1 if (self._port_given or self._started_once) else 3
        for attempt in range(1, attempts + 1):
            self._write_conf(owner)
            offset = _file_size(self.log_file)
            self._proc = _spawn(
                [str(bindir / "postgres"), "-D", str(self.data_dir)],
                log_path=self.log_file,
                cwd=self._dir,
                death_signal=signal.SIGQUIT,  # immediate shutdown
                env=self._child_env(),
                user_kwargs=self._user_kwargs(owner),
            )
            _register(self)
            try:
                self._wait_ready(timeout, offset)
            except _PortTaken:
                if attempt == attempts:
                    raise RuntimeError(
                        f"PostgreSQL cluster {self.name}: port {self._port} is in use; "
                        f"log tail:\n{_log_tail(self.log_file, since=offset)}"
                    ) from None
                self._port = free_port()
                continue
            self._started_once = True
            return self
        raise AssertionError("unreachable")

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Shut the cluster down: ``smart`` (wait for clients), ``fast``
        (disconnect clients; default) or ``immediate`` (no checkpoint, crash
        recovery at next start).  Escalates to SIGKILL after ``timeout``."""
        signals = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
        if mode not in signals:
            raise ValueError(f"mode must be one of {sorted(signals)}: {mode!r}")
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signals[mode])
                    proc.wait(timeout)
                except ProcessLookupError:
                    pass
                except subprocess.TimeoutExpired:
                    print(
                        f"devenv: {self.name}: {mode} shutdown took over {timeout}s, killing",
                        file=sys.stderr,
                    )
            _kill_group(proc)  # no-op when already gone; reaps stragglers
            self._proc = None
        _unregister(self)
        self._drop_tmp_socket_dir()

    def kill9(self) -> None:
        """SIGKILL the postmaster together with all its backends (its whole
        process group), like a host crash; a later :meth:`start` runs crash
        recovery on the same data directory and port."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"PostgreSQL cluster {self.name} is not running")
        _kill_group(proc)
        self._proc = None
        _unregister(self)

    def _atexit_stop(self) -> None:
        self.stop("immediate", timeout=10)

    def __enter__(self) -> "PgCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ databases
    def create_database(self, name: str, *, exist_ok: bool = False) -> str:
        """CREATE DATABASE ``name``; returns its DSN."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not (exists and exist_ok):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    # -------------------------------------------------------------- helpers
    @staticmethod
    def _user_kwargs(owner: pwd.struct_passwd | None) -> dict[str, Any]:
        if owner is None:
            return {}
        return {
            "user": owner.pw_uid,
            "group": owner.pw_gid,
            "extra_groups": os.getgrouplist(owner.pw_name, owner.pw_gid),
        }

    @staticmethod
    def _child_env() -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.setdefault("LC_ALL", "C")
        return env

    def _prepare_dirs(self, owner: pwd.struct_passwd | None) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        sock = self._dir / "sock"
        if len(str(sock / f".s.PGSQL.{self._port}.lock")) > _SOCKET_PATH_MAX:
            if self._socket_dir is None or not self._tmp_socket_dir:
                sock = Path(tempfile.mkdtemp(prefix="devenv-pgsock-"))
                self._tmp_socket_dir = True
            else:
                sock = self._socket_dir
        sock.mkdir(exist_ok=True)
        self._socket_dir = sock
        self.log_file.touch()
        if owner is not None:
            for path in (self._dir, sock, self.log_file):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            os.chmod(self._dir, 0o700)
            os.chmod(sock, 0o700)
            _make_traversable(self._dir.parent, owner)
            _make_traversable(sock.parent, owner)

    def _drop_tmp_socket_dir(self) -> None:
        if self._tmp_socket_dir and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def _initdb(self, bindir: Path, owner: pwd.struct_passwd | None) -> None:
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise RuntimeError(f"{self.data_dir} exists but is not a PostgreSQL data directory")
        cmd = [
            str(bindir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
        ]
        try:
            res = subprocess.run(
                cmd, cwd=self._dir, env=self._child_env(), stdin=subprocess.DEVNULL,
                capture_output=True, text=True, timeout=180, **self._user_kwargs(owner),
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"initdb for {self.name} timed out") from None
        if res.returncode != 0:
            raise RuntimeError(
                f"initdb for {self.name} failed ({res.returncode}):\n{res.stdout}{res.stderr}"
            )
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(_HBA)
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write(f"\n# devenv settings (rewritten on every start)\ninclude_if_exists = '{_CONF_NAME}'\n")
        if owner is not None:
            os.chown(hba, owner.pw_uid, owner.pw_gid)

    def _write_conf(self, owner: pwd.struct_passwd | None) -> None:
        values: dict[str, Any] = dict(BASE_SETTINGS)
        values.update(self.settings)
        values["port"] = self._port
        values["unix_socket_directories"] = str(self._socket_dir)
        lines = ["# Managed by devenv: rewritten on every PgCluster.start()"]
        lines += [f"{k} = {_conf_value(v)}" for k, v in values.items()]
        conf = self.data_dir / _CONF_NAME
        conf.write_text("\n".join(lines) + "\n")
        if owner is not None:
            os.chown(conf, owner.pw_uid, owner.pw_gid)

    def _wait_ready(self, timeout: float, log_offset: int) -> None:
        import psycopg

        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                _unregister(self)
                tail = _log_tail(self.log_file, since=log_offset)
                if not self._port_given and not self._started_once and (
                    "could not bind" in tail or "Address already in use" in tail
                ):
                    raise _PortTaken()
                raise RuntimeError(
                    f"PostgreSQL cluster {self.name} exited with code {code} while starting; "
                    f"log {self.log_file} tail:\n{tail}"
                )
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                pass
            if time.monotonic() >= deadline:
                self.stop("immediate", timeout=10)
                raise RuntimeError(
                    f"PostgreSQL cluster {self.name} did not accept connections within "
                    f"{timeout}s; log {self.log_file} tail:\n"
                    f"{_log_tail(self.log_file, since=log_offset)}"
                )
            time.sleep(0.1)


class _PortTaken(Exception):
    pass


def _make_traversable(path: Path, owner: pwd.struct_passwd) -> None:
    """Make every directory from / down to ``path`` searchable by ``owner``
    (adds only the missing x bit; e.g. pytest's 0700 /tmp/pytest-of-root).
    Root can write anywhere, but the postgres user must reach its data dir."""
    groups = set(os.getgrouplist(owner.pw_name, owner.pw_gid))
    for p in [*reversed(path.parents), path]:
        st = os.stat(p)
        if st.st_uid == owner.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            os.chmod(p, stat.S_IMODE(st.st_mode) | bit)
