"""Where the integration tests find their servers.

Default provider `local`: the project's own scripts (`deploy/local/*.sh`) install and start real Kafka,
FerretDB, Dovecot and Postfix as local processes; a component the tests had to start is stopped again
at the end of the session, one that was already running is left alone.

Provider `testcontainers` (`MAILSYNC_TEST_STACK=testcontainers`, needs a Docker engine): Kafka and
MongoDB run in containers; the mail lab still comes from the local scripts. Not exercised on machines
without Docker.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "deploy" / "local"


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class MailLab:
    host: str
    imap_port: int  # STARTTLS
    imaps_port: int  # implicit TLS
    smtp_port: int  # MTA, no auth
    submission_port: int  # STARTTLS + AUTH
    submissions_port: int  # implicit TLS + AUTH
    domain: str


class StackError(RuntimeError):
    pass


def _script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(SCRIPTS / f"{name}.sh"), *args], capture_output=True, text=True, timeout=900, check=False
    )
    if proc.returncode not in (0, 3):
        raise StackError(f"deploy/local/{name}.sh {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    return proc


@dataclass
class LocalStack:
    started: list[str] = field(default_factory=list)

    def ensure(self, component: str) -> None:
        running = _script(component, "status").returncode == 0
        if not running:
            _script(component, "install")
            _script(component, "start")
            self.started.append(component)

    def kafka(self) -> str:
        self.ensure("kafka")
        return f"127.0.0.1:{_env_int('KAFKA_PORT', 39092)}"

    def mongo_uri(self) -> str:
        self.ensure("ferretdb")
        return f"mongodb://127.0.0.1:{_env_int('FERRETDB_PORT', 37017)}/"

    def mail(self) -> MailLab:
        self.ensure("mail")
        return MailLab(
            host="127.0.0.1",
            imap_port=_env_int("IMAP_PORT", 31143),
            imaps_port=_env_int("IMAPS_PORT", 31993),
            smtp_port=_env_int("SMTP_PORT", 31025),
            submission_port=_env_int("SUBMISSION_PORT", 31587),
            submissions_port=_env_int("SUBMISSIONS_PORT", 31465),
            domain=os.environ.get("MAIL_DOMAIN", "mailsync.test"),
        )

    def add_mail_user(self, email: str, password: str) -> None:
        _script("mail", "adduser", email, password)

    def close(self) -> None:
        for component in reversed(self.started):
            _script(component, "stop")
        self.started.clear()


@dataclass
class ContainerStack(LocalStack):
    """Kafka and MongoDB from testcontainers; everything else as LocalStack."""

    containers: list[Any] = field(default_factory=list)
    _kafka: str | None = None
    _mongo: str | None = None

    def kafka(self) -> str:
        if self._kafka is None:
            from testcontainers.kafka import KafkaContainer

            container = KafkaContainer().with_kraft()
            container.start()
            self.containers.append(container)
            self._kafka = container.get_bootstrap_server()
        return self._kafka

    def mongo_uri(self) -> str:
        if self._mongo is None:
            from testcontainers.mongodb import MongoDbContainer

            container = MongoDbContainer("mongo:7")
            container.start()
            self.containers.append(container)
            self._mongo = container.get_connection_url()
        return self._mongo

    def close(self) -> None:
        for container in self.containers:
            container.stop()
        super().close()


def provider() -> LocalStack:
    name = os.environ.get("MAILSYNC_TEST_STACK", "local")
    if name == "local":
        return LocalStack()
    if name == "testcontainers":
        return ContainerStack()
    raise StackError(f"MAILSYNC_TEST_STACK={name!r}: use 'local' (default) or 'testcontainers'")
