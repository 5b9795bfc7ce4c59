"""What the sites do while the fault suite breaks things: the mixed workload and a versioned table.

The mixed workload moves keys up and down (past an initial copy's position and back into what
it copied), moves TOASTed rows whose blob is not sent again, deletes and inserts; the versioned
table's rows only ever rise in ``version``, so a cloud trigger sees any transaction applied
twice or an older state applied over a newer one (:mod:`devenv.fault_check`). A table without a
key holds equal rows (a multiset), and now and then one transaction changes thousands of rows
(a large transaction the sink applies in parts).

Site outages are part of the test: a workload thread reconnects after a lost connection instead
of failing, and stops only when told to (or at its limit).
"""

from __future__ import annotations

import random
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import psycopg

from devenv.pipeline import DEVICE_TABLES_DDL, MARKER_DDL

Transaction = Callable[[psycopg.Connection, random.Random, int], None]

SCHEMA = [
    *DEVICE_TABLES_DDL,
    # a multiset: no key, equal rows, every column compared (REPLICA IDENTITY FULL)
    "CREATE TABLE events (device_id int, kind text, note text)",
    "ALTER TABLE events REPLICA IDENTITY FULL",
    # rows inserted and raised only once the initial copy is done (see VersionedHistory)
    "CREATE TABLE versioned (id int PRIMARY KEY, version bigint NOT NULL)",
    MARKER_DDL,
]
#: site table -> the columns compared (every column)
TABLES = {
    "public.devices": ["id", "name", "firmware", "installed", "updated_at"],
    "public.readings": ["device_id", "ts", "value", "quality"],
    "public.settings": ["key", "value", "blob"],
    "public.events": ["device_id", "kind", "note"],
    "public.versioned": ["id", "version"],
}
VERSIONED_ROWS = 200
READING_DEVICES = 200


def seed(devices: int, settings: int) -> list[str]:
    """The rows a site holds before its source starts (what the initial copy reads)."""
    return [
        "INSERT INTO devices (id, name, firmware, installed) SELECT g, 'dev-' || g, 'v1',"
        f" date '2024-01-01' + g % 1000 FROM generate_series(1, {devices}) g",
        "INSERT INTO readings SELECT d, timestamptz '2025-01-01 00:00+00' + m * interval"
        f" '1 minute', d * 1.5 + m / 7.0, (m % 3)::smallint FROM generate_series(1,"
        f" {READING_DEVICES}) d, generate_series(1, 25) m",
        # 12 kB of hex per blob, stored out of line: updates that leave it alone do not send it
        "INSERT INTO settings SELECT 'k' || lpad(g::text, 5, '0'), 'value ' || g,"
        " (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 400) i)"
        f" FROM generate_series(1, {settings}) g",
        "INSERT INTO events SELECT g % 10, (ARRAY['on', 'off', 'fault'])[g % 3 + 1], NULL"
        " FROM generate_series(1, 300) g",
    ]


def mixed_for(devices: int, settings: int) -> Transaction:
    """One transaction of the mixed workload over ``devices`` devices and ``settings`` settings."""

    def mixed(conn: psycopg.Connection, rnd: random.Random, n: int) -> None:
        """Keys moving up and down, TOASTed rows moving."""
        d = rnd.randint(1, devices)
        s = f"k{rnd.randint(1, settings):05d}"
        kind = n % 6
        if kind == 0:  # a key moves up, past the copy's position
            conn.execute("UPDATE devices SET id = id + 1000000 WHERE id = %s", (d,))
        elif kind == 1:  # and down, into what was copied
            conn.execute("UPDATE devices SET id = -id WHERE id = %s", (d + 1000000,))
        elif kind == 2:  # a TOASTed row's key moves; the blob is not sent
            conn.execute("UPDATE settings SET key = 'z' || key, value = 'moved' WHERE key = %s",
                         (s,))
        elif kind == 3:
            conn.execute("UPDATE settings SET key = substr(key, 2) WHERE key = %s", ("z" + s,))
            conn.execute("UPDATE devices SET firmware = 'v' || %s WHERE id = %s", (n, d))
        elif kind == 4:
            conn.execute("DELETE FROM devices WHERE id = %s", (d,))
            conn.execute("INSERT INTO devices (id, name) VALUES (%s, 'new') ON CONFLICT DO NOTHING",
                         (d + 2000000,))
        else:
            conn.execute("INSERT INTO readings VALUES (%s, now(), %s, 1) ON CONFLICT DO NOTHING",
                         (d, n))
            conn.execute("UPDATE settings SET value = %s WHERE key = %s", (str(n), s))
        time.sleep(0.005)

    return mixed


#: the mixed workload of tests/integration/test_faults.py (200,000 devices, 1,500 settings)
mixed = mixed_for(200000, 1500)


def multiset(conn: psycopg.Connection, rnd: random.Random, n: int) -> None:
    """The keyless table: equal rows added, one of several equal rows changed or removed."""
    device, kind = rnd.randint(0, 9), rnd.choice(["on", "off", "fault"])
    step = n % 3
    if step == 0:
        conn.execute("INSERT INTO events VALUES (%s, %s, NULL), (%s, %s, NULL)",
                     (device, kind, device, kind))
    elif step == 1:
        conn.execute("DELETE FROM events WHERE ctid = (SELECT ctid FROM events WHERE device_id"
                     " = %s AND kind = %s LIMIT 1)", (device, kind))
    else:
        conn.execute("UPDATE events SET note = %s WHERE ctid = (SELECT ctid FROM events WHERE"
                     " device_id = %s AND kind = %s AND note IS NULL LIMIT 1)",
                     (f"n{n}", device, kind))


def large(conn: psycopg.Connection, rnd: random.Random, n: int) -> None:
    """Thousands of rows in one transaction: applied in parts by a sink whose
    batch_max_changes is smaller, streamed for a long while by the source."""
    first = rnd.randint(1, READING_DEVICES - 100)
    conn.execute("UPDATE readings SET quality = quality + 1 WHERE device_id BETWEEN %s AND %s",
                 (first, first + 99))


def bump_versions(conn: psycopg.Connection, rnd: random.Random, n: int) -> None:
    """Raise the version of a few rows: every cloud apply of a row must raise it too."""
    conn.execute("UPDATE versioned SET version = version + 1 WHERE id = ANY(%s)",
                 (sorted(rnd.sample(range(1, VERSIONED_ROWS + 1), 3)),))


def fault_suite_workload(devices: int, settings: int, large_every: int = 600) -> Transaction:
    """The fault suite's transaction mix: mostly the mixed workload, the multiset table and
    version bumps (once the versioned rows exist), now and then a large transaction."""
    mix = mixed_for(devices, settings)

    def transaction(conn: psycopg.Connection, rnd: random.Random, n: int) -> None:
        if n % large_every == large_every - 1:
            large(conn, rnd, n)
        elif n % 4 == 3:
            multiset(conn, rnd, n)
        else:
            mix(conn, rnd, n)
            if n % 2 and conn.execute("SELECT EXISTS (SELECT FROM versioned)").fetchone()[0]:
                bump_versions(conn, rnd, n)

    return transaction


@contextmanager
def workloads(dsns: Iterable[str], transaction: Transaction, limit: int) -> Iterator[None]:
    """One thread per site running ``transaction(conn, rnd, n)`` in a loop (at most ``limit``
    times) while the block runs; an error in any of them fails the test after the block."""
    stop, errors = threading.Event(), []

    def run(dsn: str, seed: int) -> None:
        rnd = random.Random(seed)
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                for n in range(limit):
                    if stop.is_set():
                        return
                    with conn.transaction():
                        transaction(conn, rnd, n)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(f"workload on {dsn}: {exc!r}")

    threads = [threading.Thread(target=run, args=(dsn, i), daemon=True)
               for i, dsn in enumerate(dsns)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors


class SiteWorkload(threading.Thread):
    """Runs ``transaction`` at one site until stopped, riding out site outages: a lost
    connection is opened again (a commit whose answer was lost may or may not have happened;
    the checker compares final states, so either is fine)."""

    def __init__(self, dsn: str, transaction: Transaction, seed: int, rate: float = 30.0,
                 limit: int = 10**9) -> None:
        super().__init__(name=f"workload-{seed}", daemon=True)
        self.dsn, self.transaction, self.limit = dsn, transaction, limit
        self.interval = 1.0 / rate  # a steady load a 2-core machine carries between faults
        self.rnd = random.Random(seed)
        self.stop_event = threading.Event()
        self.committed = self.outages = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        n = 0
        conn: psycopg.Connection | None = None
        next_at = time.monotonic()
        try:
            while n < self.limit and not self.stop_event.is_set():
                next_at += self.interval
                pause = next_at - time.monotonic()
                if pause > 0:
                    self.stop_event.wait(pause)
                else:
                    next_at = time.monotonic()  # behind (an outage): no burst to catch up
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
                    with conn.transaction():
                        self.transaction(conn, self.rnd, n)
                    self.committed += 1
                    n += 1
                except psycopg.OperationalError:
                    self.outages += 1
                    if conn is not None:
                        conn.close()
                    conn = None
                    self.stop_event.wait(0.5)
        except BaseException as exc:  # noqa: BLE001 - reported by the runner
            self.error = exc
        finally:
            if conn is not None:
                conn.close()

    def finish(self, timeout: float = 60) -> None:
        self.stop_event.set()
        self.join(timeout)
