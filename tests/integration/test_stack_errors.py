"""Bad local-stack configuration stops with one line that says what to do, never a stack trace."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.stack import SCRIPTS

pytestmark = pytest.mark.integration


def _run(script: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / script), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _one_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr and "Exception" not in stderr, stderr
    return errors[0]


def _busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ferretdb_port_in_use(tmp_path: Path) -> None:
    # A stack dir of its own: the shared FerretDB may be running. The build reuses Go's caches.
    with _busy_port() as busy:
        port = busy.getsockname()[1]
        proc = _run(
            "ferretdb.sh", ["start"], {"FERRETDB_PORT": str(port), "MAILSYNC_STACK_DIR": str(tmp_path)}
        )
    assert proc.returncode == 1
    line = _one_line(proc.stderr)
    assert str(port) in line and "FERRETDB_PORT" in line


def test_kafka_missing_java(tmp_path: Path, stack) -> None:  # type: ignore[no-untyped-def]
    stack.kafka()
    env = {
        "JAVA_HOME": str(tmp_path / "no-jdk"),
        "MAILSYNC_STACK_DIR": str(tmp_path / "stack"),
        "KAFKA_PORT": str(_free_port()),
        "KAFKA_CONTROLLER_PORT": str(_free_port()),
    }
    proc = _run("kafka.sh", ["start"], env)
    assert proc.returncode == 1
    line = _one_line(proc.stderr)
    assert "java" in line.lower() and "JAVA_HOME" in line


def test_mail_lab_port_in_use() -> None:
    # Dovecot's unix socket paths are limited to ~100 bytes: pytest's tmp_path is too long.
    short = tempfile.mkdtemp(prefix="ms-", dir="/tmp")
    ports = {
        name: str(_free_port())
        for name in ("IMAP_PORT", "IMAPS_PORT", "LMTP_PORT", "SMTP_PORT", "SUBMISSIONS_PORT")
    }
    with _busy_port() as busy:
        port = busy.getsockname()[1]
        proc = _run(
            "mail.sh",
            ["start"],
            {**ports, "SUBMISSION_PORT": str(port), "MAILSYNC_STACK_DIR": short},
        )
    shutil.rmtree(short, ignore_errors=True)
    assert proc.returncode == 1
    line = _one_line(proc.stderr)
    assert str(port) in line and "SUBMISSION_PORT" in line


def test_unknown_component_is_named(tmp_path: Path) -> None:
    proc = _run("stack.sh", ["up", "redis"], {"MAILSYNC_STACK_DIR": str(tmp_path)})
    assert proc.returncode == 1
    assert "unknown component 'redis'" in _one_line(proc.stderr)
