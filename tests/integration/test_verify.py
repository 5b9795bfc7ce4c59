"""cdc verify: all agree -> exit 0; tampered cloud rows are named by key; live writes settle."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Callable

from devenv.pipeline import REPO, execute
from tests.integration.sites import SEED, Pipeline


def verify(p: Pipeline, site: str, *args: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "cdc.cli", "verify", "--config",
                           str(p.sources[site].config), "--cloud", str(p.sink.config), *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    return done.returncode, done.stdout + done.stderr


def test_verify_agrees_then_names_every_difference_by_key(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a", "b")).start()
    p.seed(*SEED)
    code, out = verify(p, "a", "--chunk-rows", "100", "--settle", "5")
    assert code == 0, out
    assert "public.readings" in out and " 1000 " in out and "DIFFERS" not in out, out
    # the cloud loses a row, gains one and changes one, for site a only
    execute(p.cloud_dsn,
            "DELETE FROM public.readings WHERE site_id = 'a' AND device_id = 7"
            " AND ts = '2025-01-01 00:13:00+00'",
            "INSERT INTO public.tags VALUES ('a', 99, 'ghost', NULL)",
            "UPDATE public.devices SET name = 'tampered' WHERE site_id = 'a' AND id = 4")
    code, out = verify(p, "a", "--chunk-rows", "100", "--settle", "2")
    assert code == 1, out
    lines = out.splitlines()
    assert any("public.readings" in line and "DIFFERS" in line for line in lines), out
    assert "missing in the cloud: (7, 2025-01-01 00:13:00+00:00)" in out, out
    assert "extra in the cloud: (99, 'ghost')" in out, out
    assert "different values: 4" in out, out
    code, out = verify(p, "b", "--chunk-rows", "100", "--settle", "2")
    assert code == 0, out  # site b's rows were not touched
    p.stop()


def test_verify_while_the_site_writes_settles_to_agreement(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",)).start()
    a = p.site_dsn["a"]
    execute(a, *SEED)
    p.sync("a")
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 400:
            execute(a, f"UPDATE readings SET value = value + 1 WHERE device_id = {i % 20 + 1}",
                    f"INSERT INTO devices (id, name) VALUES ({1000 + i}, 'live {i}')")
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        code, out = verify(p, "a", "--chunk-rows", "200", "--settle", "60")
    finally:
        stop.set()
        thread.join(30)
    assert code == 0, out
    p.stop()
