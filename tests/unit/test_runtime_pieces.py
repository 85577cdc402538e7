"""Shared runtime pieces: secret scrubbing, JSON logs, settings, service boundaries."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

from pydantic import SecretStr

from mailsync.logs import JsonFormatter, scrub
from mailsync.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]


def test_scrub_removes_credentials() -> None:
    lines = {
        "A001 LOGIN ann@example.com hunter2": "hunter2",
        "AUTH PLAIN AGFubkBleGFtcGxlLmNvbQBodW50ZXIy": "AGFubkBleGFtcGxlLmNvbQBodW50ZXIy",
        "password=hunter2 user=ann": "hunter2",
        '{"token": "ya29.secret"}': "ya29.secret",
        "Authorization: Bearer abc.def.ghi": "abc.def.ghi",
        "mongodb://admin:s3cret@db:27017/": "s3cret",
    }
    for line, secret in lines.items():
        out = scrub(line)
        assert secret not in out, out
        assert "***" in out


def test_json_log_lines_are_scrubbed_and_structured() -> None:
    fmt = JsonFormatter("test")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "login with password=%s", ("hunter2",), None)
    record.inbox_id = "i1"
    entry = json.loads(fmt.format(record))
    assert entry["service"] == "test" and entry["inbox_id"] == "i1" and entry["level"] == "INFO"
    assert "hunter2" not in json.dumps(entry)


def test_settings_from_env_and_secrets_hidden(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MAILSYNC_KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("MAILSYNC_MONGO_URI", "mongodb://u:topsecret@db/")
    s = ServiceSettings()
    assert s.kafka_bootstrap_servers == "k1:9092,k2:9092"
    assert isinstance(s.mongo_uri, SecretStr)
    assert "topsecret" not in repr(s) and "topsecret" not in str(s.model_dump())


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_services_never_import_each_other() -> None:
    services = [p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").exists()]
    assert sorted(services) == ["fetcher", "janitor", "linker", "sender"]
    for svc in services:
        for path in (ROOT / "services" / svc).rglob("*.py"):
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] == "services":
                    assert parts[1:2] == [svc], f"{path.relative_to(ROOT)} imports {name}"


def test_contracts_and_shared_library_do_not_import_services() -> None:
    for pkg in ("contracts", "mailsync"):
        for path in (ROOT / pkg).rglob("*.py"):
            assert not any(n.startswith("services") for n in _imports(path)), path
