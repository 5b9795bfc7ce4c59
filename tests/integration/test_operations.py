"""What operators watch and do: metrics and health endpoints, idle sites' lag kept fresh by
heartbeats, the retained-WAL alarm, and SIGTERM during an initial copy."""

from __future__ import annotations

import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from devenv.pipeline import count, execute, rows_of, wait_until
from tests.integration.sites import SEED, TABLES, TIMEOUT, Pipeline


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_metrics(config: Path) -> int:
    port = free_port()
    with config.open("a") as f:
        f.write(f'\n[metrics]\nhost = "127.0.0.1"\nport = {port}\n')
    return port


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""  # not listening yet


def metric(port: int, name: str, **labels: str) -> float | None:
    """One sample's value from /metrics (None when absent)."""
    _, text = get(port, "/metrics")
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(?:\{([^}]*)\})? (\S+)$", line)
        if m and m.group(1) == name:
            have = ",".join(sorted((m.group(2) or "").split(","))) if m.group(2) else ""
            if have == want:
                return float(m.group(3))
    return None


def test_metrics_health_and_the_lag_of_an_idle_site(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",), site_extra="heartbeat_interval_s = 1\n"
                                                  "max_retained_wal_bytes = 1")
    src = serve_metrics(p.sources["a"].config)
    snk = serve_metrics(p.sink.config)
    for config in (p.sources["a"].config, p.sink.config):  # trust auth: accepted, ignored
        config.write_text(re.sub(r'dsn = "([^"]*)"', r'dsn = "\1 password=hunter2-secret"',
                                 config.read_text()))
    p.start()
    p.seed(*SEED)
    a = p.site_dsn["a"]
    for port in (src, snk):
        wait_until(lambda port=port: get(port, "/readyz")[0] == 200, TIMEOUT, "ready", p.daemons)
        assert get(port, "/healthz") == (200, "ok\n")
        assert get(port, "/nope")[0] == 404
    assert metric(src, "tributary_source_streaming", site="a") == 1
    wait_until(lambda: (metric(src, "tributary_source_events_total", site="a") or 0) > 1000,
               TIMEOUT, "the source's event counter", p.daemons)
    inserted = sum(count(a, f"SELECT count(*) FROM {t}") for t in TABLES)
    wait_until(lambda: (metric(snk, "tributary_sink_rows_applied_total", site="a", op="insert")
                        or 0) >= inserted, TIMEOUT, "the sink's insert counter", p.daemons)
    assert (metric(snk, "tributary_sink_end_to_end_latency_seconds_count") or 0) >= len(SEED)
    assert (metric(snk, "tributary_sink_apply_batch_seconds_count") or 0) >= 1
    lsn = count(a, "SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots")
    assert metric(snk, "tributary_sink_last_applied_lsn", site="a") is not None

    # idle: no change for 8 s; heartbeats keep the lag fresh and the slot moving
    time.sleep(8)
    lag = metric(snk, "tributary_sink_lag_seconds", site="a")
    assert lag is not None and lag < 5, lag
    assert (metric(src, "tributary_source_seconds_since_last_commit", site="a") or 99) < 5
    assert count(a, "SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots") > lsn
    assert (metric(src, "tributary_source_wal_lag_bytes", site="a") or 0) >= 0
    assert metric(snk, "tributary_sink_lag_bytes", site="a") is not None

    # the retained-WAL alarm (the limit is 1 byte here)
    wait_until(lambda: metric(src, "tributary_source_slot_over_limit", site="a") == 1, TIMEOUT,
               "the retained-WAL alarm", p.daemons)
    assert (metric(src, "tributary_source_slot_retained_wal_bytes", site="a") or 0) > 1
    assert "retains more WAL than site.max_retained_wal_bytes" in p.sources["a"].log()
    assert p.sources["a"].stop() == 0 and p.sink.stop() == 0
    for daemon in (p.sources["a"], p.sink):  # logs never carry a password
        text = daemon.log_path.read_text()
        assert "starting" in text and "hunter2" not in text, daemon.name
    p.stop()


def test_sigterm_during_the_initial_copy_exits_0_and_resumes(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    from tests.integration.test_snapshot import BIG, progress, wait_for
    p = pipeline_factory(sites=("a",), site_extra="snapshot_chunk_rows = 200")
    a = p.site_dsn["a"]
    execute(a, BIG.replace("60000", "400000"))
    port = serve_metrics(p.sources["a"].config)
    p.start(streaming=False)
    wait_for(p, "public.readings", "the initial copy to be under way", rows=2000)
    status, why = get(port, "/readyz")
    assert status == 503 and "initial copy" in why, (status, why)
    started = time.monotonic()
    assert p.sources["a"].stop(timeout=30) == 0
    assert time.monotonic() - started < 30
    state, copied = progress(a, "public.readings")  # type: ignore[misc]
    assert state == "running" and copied < 400000, (state, copied)
    p.sources["a"].start()
    wait_for(p, "public.readings", "the initial copy to finish", state="done")
    p.sync("a")
    assert count(p.cloud_dsn, "SELECT count(*) FROM public.readings") == 400000
    assert rows_of(p.cloud_dsn, "public.readings", TABLES["public.readings"], where_site="a") \
        == rows_of(a, "public.readings", TABLES["public.readings"])
    p.stop()


def cdc(*args: str) -> tuple[int, str, str]:
    import subprocess
    import sys

    from devenv.pipeline import REPO
    done = subprocess.run([sys.executable, "-m", "cdc.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    return done.returncode, done.stdout, done.stderr


def stored_offset(p: Pipeline, site: str) -> int:
    return count(p.cloud_dsn, "SELECT next_offset FROM tributary.offsets WHERE topic LIKE %s",
                 ("%." + site,))


def test_status_and_replay_repair_a_damaged_table(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    import json
    p = pipeline_factory(sites=("a", "b"))
    p.start()
    p.seed(*SEED)
    cloud = str(p.sink.config)
    lines: dict = {}
    for _ in range(20):  # bounded: a Position record that just arrived waits for a batch
        code, out, err = cdc("status", "--config", cloud, "--json")
        assert code == 0, err
        lines = {x["site"]: x for x in json.loads(out)}
        if all(x["lag_records"] == 0 for x in lines.values()):
            break
        time.sleep(0.5)
    assert set(lines) == {"a", "b"} and all(x["state"] == "applying" for x in lines.values())
    assert all(x["lag_records"] == 0 and x["lag_seconds"] < 60 for x in lines.values()), lines
    assert all(isinstance(x["lag_bytes"], int) and 0 <= x["lag_bytes"] < 16 * 1024**2
               for x in lines.values()), lines  # from the sites' Position records
    code, out, err = cdc("status", "--config", str(p.sources["a"].config))
    assert code == 0 and "active" in out and "wal_status reserved" in out, (out, err)

    # damage site a's rows in the cloud
    execute(p.cloud_dsn, "DELETE FROM readings WHERE site_id = 'a' AND device_id <= 5",
            "UPDATE devices SET name = 'broken' WHERE site_id = 'a'")
    code, _, err = cdc("replay", "--config", cloud, "--site", "a", "--from-beginning")
    assert code == 1 and "running" in err, err  # refused while the sink runs
    assert p.sink.stop() == 0
    before = stored_offset(p, "a")
    code, out, err = cdc("replay", "--config", cloud, "--site", "a", "--from-beginning",
                         "--dry-run")
    assert code == 0 and "dry run" in out and stored_offset(p, "a") == before, (out, err)

    # a replay without --reapply re-reads and skips: the damage stays (exactly once)
    code, out, err = cdc("replay", "--config", cloud, "--site", "a", "--from-beginning")
    assert code == 0 and stored_offset(p, "a") == 0, (out, err)
    p.sink.start()
    p.sync("a")
    assert count(p.cloud_dsn, "SELECT count(*) FROM devices WHERE name = 'broken'") == 20

    # --reapply of one table repairs it and leaves the other tables as they are
    assert p.sink.stop() == 0
    code, out, err = cdc("replay", "--config", cloud, "--site", "a", "--from-beginning",
                         "--reapply", "--table", "public.readings")
    assert code == 0, err
    p.sink.start()
    p.sync("a")
    cols = TABLES["public.readings"]
    assert rows_of(p.cloud_dsn, "public.readings", cols, where_site="a") == \
        rows_of(p.site_dsn["a"], "public.readings", cols)
    assert count(p.cloud_dsn, "SELECT count(*) FROM devices WHERE name = 'broken'") == 20
    assert count(p.cloud_dsn, "SELECT count(*) FROM tributary.replays") == 0  # finished
    p.assert_equal("b")
    p.stop()


def test_a_cloud_restored_from_an_earlier_dump_catches_up_by_itself(
        pipeline_factory: Callable[..., Pipeline], tmp_path: Path) -> None:
    import subprocess

    from devenv.postgres import pg_bindir
    p = pipeline_factory(sites=("a",))
    p.start()
    p.seed(*SEED)
    a = p.site_dsn["a"]
    dump = tmp_path / "cloud.dump"
    subprocess.run([str(pg_bindir() / "pg_dump"), "-Fc", "-f", str(dump), "-d", p.cloud_dsn],
                   check=True, timeout=120)
    # the pipeline goes on after the backup
    execute(a, "UPDATE readings SET value = value + 1 WHERE device_id % 3 = 0",
            "DELETE FROM readings WHERE device_id = 7",
            "INSERT INTO devices (id, name) SELECT g, 'later ' || g FROM generate_series(100, 140) g",
            "TRUNCATE tags")
    p.sync("a")
    assert p.sink.stop() == 0
    subprocess.run([str(pg_bindir() / "pg_restore"), "--clean", "--if-exists", "-d",
                    p.cloud_dsn, str(dump)], check=True, timeout=120)
    assert count(p.cloud_dsn, "SELECT count(*) FROM devices WHERE site_id = 'a'") == 20
    p.sink.start()  # no replay command: the restored progress rewinds the sink with the rows
    execute(a, "UPDATE devices SET firmware = 'v2' WHERE id <= 3")
    p.sync("a")
    p.assert_equal("a")
    p.stop()


def test_an_invalidated_slot_stops_the_source_with_what_to_do(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",))
    a = p.site_dsn["a"]
    p.start()
    p.seed(*SEED)
    assert p.sources["a"].stop() == 0
    slot = count(a, "SELECT count(*) FROM pg_replication_slots")  # one slot: this test's
    assert slot == 1
    try:  # the site caps slot WAL; changes go on while the source is away, then a checkpoint
        execute(a, "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'", "SELECT pg_reload_conf()")
        for i in range(4):
            execute(a, f"UPDATE devices SET firmware = 'gap {i}'", "SELECT pg_switch_wal()")
        execute(a, "CHECKPOINT")
        wait_until(lambda: count(a, "SELECT count(*) FROM pg_replication_slots"
                                    " WHERE wal_status = 'lost'") == 1, TIMEOUT, "invalidation")
    finally:
        execute(a, "ALTER SYSTEM RESET max_slot_wal_keep_size", "SELECT pg_reload_conf()")
    p.sources["a"].start()
    wait_until(lambda: not p.sources["a"].alive(), TIMEOUT, "the source to stop")
    assert p.sources["a"].proc is not None and p.sources["a"].proc.returncode == 1
    assert "was invalidated" in p.sources["a"].log()
    code, out, _ = cdc("status", "--config", str(p.sources["a"].config))
    assert code == 1 and "wal_status lost" in out and "copy the site anew" in out, out
    # what the message says: drop the slot, start again -> a new slot and a fresh copy
    execute(a, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots")
    p.sources["a"].start()
    p.sync("a")
    p.assert_equal("a")
    p.stop()


def test_sigterm_during_start_up_exits_0_and_the_next_start_is_whole(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",))
    a = p.site_dsn["a"]
    execute(a, *SEED)
    # from just after the interpreter's start (the handler is set before the heavy imports; a
    # SIGTERM before Python runs at all ends it by the default action) to the slot and topic set up
    for delay in (0.6, 1.2, 2.5):
        p.sources["a"].start()
        p.sink.start()
        time.sleep(delay)
        started = time.monotonic()
        assert p.sources["a"].stop(timeout=30) == 0
        assert p.sink.stop(timeout=30) == 0
        assert time.monotonic() - started < 30
    p.start()
    p.sync("a")
    p.assert_equal("a")
    p.stop()
