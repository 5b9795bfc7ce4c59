"""What a user meets first: bad config gives one line and exit 2; unreachable servers are retried."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cdc.cli import main

REPO = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", [["source", "run"], ["sink", "run"], ["check"]])
@pytest.mark.parametrize("text, expected", [
    (None, "config file not found"),
    ("[kafka]\nbootstrap_servers = 'x'\n[site]\nid = 'a'\n", "site.dsn: required key is missing"),
    ("[kafka]\nbootstrap_servers = 1\n", "kafka.bootstrap_servers: Input should be a valid string"),
    ("[kafka\n", "not valid TOML"),
])
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, command: list[str],
                                           text: str | None, expected: str) -> None:
    path = tmp_path / "site.toml"
    if text is not None:
        path.write_text(text)
    result = CliRunner().invoke(main, [*command, "--config", str(path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0] and str(path) in lines[0], result.output


def test_unreadable_config_file(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        path = tmp_path  # a directory: unreadable as a file even for root
    else:
        path = tmp_path / "c.toml"
        path.write_text("")
        path.chmod(0)
    result = CliRunner().invoke(main, ["check", "--config", str(path)])
    assert result.exit_code == 2 and "cannot read config file" in result.output


def test_section_missing_for_the_command(tmp_path: Path) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text("[kafka]\nbootstrap_servers = 'x'\n[sink]\ndsn = 'host=x'\n")
    result = CliRunner().invoke(main, ["source", "run", "--config", str(path)])
    assert result.exit_code == 2 and "[site] section is required" in result.output


def test_help_answers() -> None:
    for args in ([], ["source", "run"], ["sink", "run"], ["check"]):
        result = CliRunner().invoke(main, [*args, "--help"])
        assert result.exit_code == 0 and "--config" in result.output or not args


@pytest.mark.parametrize("kind", ["source", "sink"])
def test_unreachable_database_is_retried_with_backoff_not_a_crash(tmp_path: Path, kind: str) -> None:
    dsn = f"host=127.0.0.1 port={closed_port()} user=x dbname=x connect_timeout=2"
    path = tmp_path / "c.toml"
    section = f"[site]\nid = 'a'\ndsn = '{dsn}'\n" if kind == "source" else f"[sink]\ndsn = '{dsn}'\n"
    path.write_text(section + f"[kafka]\nbootstrap_servers = '127.0.0.1:{closed_port()}'\n")
    proc = subprocess.Popen([sys.executable, "-m", "cdc.cli", kind, "run", "--config", str(path),
                             "--log-format", "text"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        time.sleep(4)
        assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    retries = [line for line in out.splitlines() if "interrupted; retrying in" in line]
    assert len(retries) >= 2 and "cannot connect" in out, out
