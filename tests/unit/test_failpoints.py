"""Failpoints: the syntax of TRIBUTARY_FAILPOINTS, its triggers and actions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from cdc.core.errors import ConfigError, ConnectionLost
from cdc.runtime import failpoints
from cdc.runtime.failpoints import CRASH_EXIT, FailpointConfigError, FailpointError, failpoint, parse

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def disarmed() -> Iterator[None]:
    yield
    failpoints.arm("")


def test_an_unset_variable_arms_nothing() -> None:
    assert parse("") == {} and parse(" , ") == {}
    failpoint("sink.after_cloud_commit")  # no-op


def test_the_nth_hit_fires_once() -> None:
    failpoints.arm("sink.on_assign=error@3")
    failpoint("sink.on_assign")
    failpoint("sink.on_assign")
    with pytest.raises(FailpointError, match="sink.on_assign.*hit 3"):
        failpoint("sink.on_assign")
    failpoint("sink.on_assign")  # only the 3rd


def test_no_trigger_fires_on_every_hit_and_error_is_a_retried_outage() -> None:
    failpoints.arm("sink.on_revoke=error")
    for _ in range(3):
        with pytest.raises(ConnectionLost):
            failpoint("sink.on_revoke")


def test_a_probability_fires_by_a_seeded_rng() -> None:
    def fired(seed: int) -> list[int]:
        fp = parse("source.after_produce=error@0.3", seed)["source.after_produce"]
        return [i for i in range(1000) if fp.fires()]

    a = fired(1)
    assert a == fired(1)  # repeatable
    assert a != fired(2)
    assert 200 < len(a) < 400


def test_sleep_stalls_the_caller() -> None:
    fp = parse("sink.in_copy=sleep:0.25@2")["sink.in_copy"]
    assert (fp.action, fp.sleep_s, fp.nth) == ("sleep", 0.25, 2)


@pytest.mark.parametrize("spec, message", [
    ("sink.after_commit=crash", "unknown failpoint.*sink.after_commit"),
    ("nope=crash,also.not=error", "unknown failpoint.*also.not, nope"),
    ("sink.on_assign", "not name=action"),
    ("sink.on_assign=explode", "crash, error or sleep"),
    ("sink.on_assign=sleep", "crash, error or sleep"),
    ("sink.on_assign=sleep:x", "sleep seconds 'x' is not a number"),
    ("sink.on_assign=crash@0", "hits count from 1"),
    ("sink.on_assign=crash@1.5", "probability is in"),
    ("sink.on_assign=crash@soon", "hit number"),
    ("sink.on_assign=crash,sink.on_assign=error", "given twice"),
])
def test_a_bad_spec_is_refused_naming_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(FailpointConfigError, match=message) as info:
        parse(spec)
    assert isinstance(info.value, ConfigError)


def _python(code: str, spec: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TRIBUTARY_FAILPOINTS=spec, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def test_crash_exits_at_once_like_kill9_and_the_variable_is_read_at_import() -> None:
    res = _python("import atexit, sys\n"
                  "atexit.register(lambda: print('atexit ran'))\n"
                  "from cdc.runtime.failpoints import failpoint\n"
                  "failpoint('sink.after_cloud_commit'); print('first')\n"
                  "failpoint('sink.after_cloud_commit'); print('second')\n",
                  "sink.after_cloud_commit=crash@2")
    assert res.returncode == CRASH_EXIT
    assert res.stdout.split() == ["first"]  # no atexit handler, nothing after the crash
    assert "failpoint sink.after_cloud_commit: crash (hit 2)" in res.stderr


def test_a_daemon_refuses_an_unknown_failpoint_as_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "cloud.toml"
    config.write_text('[sink]\ndsn = "host=127.0.0.1 port=1"\ngroup_id = "g"\n'
                      '[kafka]\nbootstrap_servers = "127.0.0.1:1"\ntopic_prefix = "t"\n')
    res = _python(f"import sys; sys.argv = ['cdc', 'sink', 'run', '--config', {str(config)!r}]\n"
                  "from cdc.cli import main; main()", "sink.typo=crash")
    assert res.returncode == 2, res.stderr
    assert "unknown failpoint(s) sink.typo" in res.stderr


def test_every_name_is_called_somewhere_in_the_code() -> None:
    code = "".join(p.read_text() for d in ("cdc", "sinks") for p in (REPO / d).rglob("*.py"))
    missing = [n for n in failpoints.NAMES if f'failpoint("{n}")' not in code]
    assert missing == []
