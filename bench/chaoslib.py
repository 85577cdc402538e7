"""Shared parts of `bench/chaos.py` and `bench/soak.py`: a private stack instance, seeding, inventory.

The chaos run restarts Kafka, FerretDB and Dovecot, so it never touches the shared stack: it runs its own
instance under `CHAOS_STACK_DIR` (default `/tmp/cx`; short, because of Dovecot's unix-socket path limit)
on its own ports (`CHAOS_PORT_BASE`, default 24000: Kafka 24092/24093, FerretDB 24017, IMAP 24143,
IMAPS 24993, LMTP 24024, SMTP 24025, submission 24587/24465, OAuth2 24080, services 24081-24084;
below 32768, so no outgoing connection can hold one of them as its ephemeral port),
through the ordinary `deploy/local/*.sh` scripts with those variables set.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import imaplib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate, getaddresses
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "deploy" / "local"))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402

from contracts import TOPICS, TOPICS_BY_NAME, Envelope  # noqa: E402
from contracts.common import Address  # noqa: E402
from contracts.crm import CrmRecordUpserted, CrmRecordUpsertedData  # noqa: E402
from contracts.sending import SendRequested, SendRequestedData  # noqa: E402
from mailsync.credentials import Keyring, generate_key  # noqa: E402
from mailsync.inbox_record import InboxRecord, PasswordAuth, ServerSettings, SyncOptions  # noqa: E402
from mailsync.kafka import EventPublisher, apply_topics  # noqa: E402
from mailsync.outbound_ids import send_id_for  # noqa: E402

DOMAIN = "mailsync.test"
TENANT = "chaos"
SERVICES = ("fetcher", "linker", "sender", "janitor")


# The bench's own Kafka clients: broker restarts are expected here, their retry noise is not news.
logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Instance:
    stack_dir: Path = field(default_factory=lambda: Path(os.environ.get("CHAOS_STACK_DIR", "/tmp/cx")))
    base: int = field(default_factory=lambda: int(os.environ.get("CHAOS_PORT_BASE", "24000")))

    @property
    def ports(self) -> dict[str, int]:
        b = self.base
        return {
            "KAFKA_PORT": b + 92,
            "KAFKA_CONTROLLER_PORT": b + 93,
            "FERRETDB_PORT": b + 17,
            "IMAP_PORT": b + 143,
            "IMAPS_PORT": b + 993,
            "LMTP_PORT": b + 24,
            "SMTP_PORT": b + 25,
            "SUBMISSION_PORT": b + 587,
            "SUBMISSIONS_PORT": b + 465,
            "OAUTH2_INTROSPECTION_PORT": b + 80,
            "FETCHER_HTTP_PORT": b + 81,
            "LINKER_HTTP_PORT": b + 82,
            "SENDER_HTTP_PORT": b + 83,
            "JANITOR_HTTP_PORT": b + 84,
        }

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSYNC_")}
        env["MAILSYNC_STACK_DIR"] = str(self.stack_dir)
        env.update({k: str(v) for k, v in self.ports.items()})
        return env

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports['KAFKA_PORT']}"

    @property
    def mongo_uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.ports['FERRETDB_PORT']}/"

    @property
    def ca(self) -> Path:
        return self.stack_dir / "mail" / "tls" / "cert.pem"

    @property
    def pf_conf(self) -> Path:
        return self.stack_dir / "mail" / "etc" / "postfix"

    def sh(self, script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ROOT / "deploy" / "local" / script), *args],
            env=self.env(),
            check=check,
            capture_output=True,
            text=True,
        )

    def lock(self) -> None:
        """One run per instance: a second one would wipe the stack under the first."""
        self.stack_dir.mkdir(parents=True, exist_ok=True)
        self._lock = (self.stack_dir / ".bench.lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SystemExit(f"another chaos/soak run is using {self.stack_dir}; wait for it") from None

    def prepare(self, *, fresh: bool) -> None:
        """Reuse the main stack's Kafka jars and FerretDB binary (no download/build), then start all."""
        main = ROOT / ".stack"
        libs = main / "kafka" / "4.1.1" / "libs"
        mine = self.stack_dir / "kafka" / "4.1.1" / "libs"
        if libs.is_dir() and not mine.exists():
            mine.parent.mkdir(parents=True, exist_ok=True)
            mine.symlink_to(libs)
        fdb = main / "ferretdb" / "v1.24.2" / "ferretdb"
        mine_fdb = self.stack_dir / "ferretdb" / "v1.24.2" / "ferretdb"
        if fdb.exists() and not mine_fdb.exists():
            mine_fdb.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(fdb, mine_fdb)
        if fresh:
            for script in ("kafka.sh", "ferretdb.sh"):
                self.sh(script, "reset", check=False)
            self.sh("mail.sh", "start")
            self.sh("mail.sh", "reset")
        out = self.sh("stack.sh", "up", check=False)
        if out.returncode:
            raise SystemExit(f"stack.sh up failed for {self.stack_dir}:\n{out.stderr[-3000:]}")

    def service_env(
        self, name: str, keys: str, extra: dict[str, str] | None = None
    ) -> tuple[dict[str, str], int]:
        port = self.ports[f"{name.upper()}_HTTP_PORT"]
        env = self.env()
        env.update(
            {
                "MAILSYNC_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                "MAILSYNC_MONGO_URI": self.mongo_uri,
                "MAILSYNC_HTTP_PORT": str(port),
                "MAILSYNC_CREDENTIALS_KEYS": keys,
                "MAILSYNC_FETCHER_TLS_CA_FILE": str(self.ca),
                "MAILSYNC_SENDER_TLS_CAFILE": str(self.ca),
                "MAILSYNC_FETCHER_ALLOWED_NETWORKS": '["127.0.0.1"]',
                "MAILSYNC_SENDER_EHLO_HOSTNAME": "chaos.mailsync.test",
                "MAILSYNC_LOG_LEVEL": os.environ.get("CHAOS_LOG_LEVEL", "WARNING"),
            }
        )
        env.update(extra or {})
        return env, port

    def down(self) -> None:
        """Stop this instance (its dir keeps the data and logs for a look afterwards)."""
        self.sh("stack.sh", "down", check=False)

    def adduser(self, email: str, password: str) -> None:
        self.sh("mail.sh", "adduser", email, password)

    def postfix_queue_empty(self) -> bool:
        out = subprocess.run(
            ["postqueue", "-c", str(self.pf_conf), "-p"], capture_output=True, text=True, check=False
        )
        return "Mail queue is empty" in out.stdout

    def postfix_flush(self) -> None:
        subprocess.run(["postqueue", "-c", str(self.pf_conf), "-f"], capture_output=True, check=False)

    # ---- restarts (of this instance only) --------------------------------------------------------
    def restart_kafka(self) -> None:
        self.sh("kafka.sh", "stop")
        self.sh("kafka.sh", "start")

    def restart_ferretdb(self) -> None:
        self.sh("ferretdb.sh", "stop")
        self.sh("ferretdb.sh", "start")

    def restart_dovecot(self) -> None:
        """TERM this instance's Dovecot master only (Postfix stays up and queues), then start it again."""
        pidfile = self.stack_dir / "mail" / "run" / "dovecot" / "master.pid"
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 15)
        for _ in range(200):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        self.sh("mail.sh", "start")


# ---- mail -------------------------------------------------------------------------------------------


def customer(c: int) -> str:
    return f"contact{c}@customers.example"


def seed_message(i: int, tag: str, to: str, senders: int) -> bytes:
    body = ("Chaos test body line, nothing to see here. " * 6).strip()
    cc = f"Cc: {customer((i * 7 + 3) % senders)}\r\n" if i % 5 == 0 else ""
    return (
        f"From: Contact {i % senders} <{customer(i % senders)}>\r\nTo: {to}\r\n{cc}"
        f"Subject: chaos message {i}\r\nDate: {formatdate(time.time() - 86400 + i * 0.01)}\r\n"
        f"Message-ID: <{tag}-{i}@customers.example>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()


def imap_append(
    port: int, email: str, password: str, messages: Iterable[bytes], folder: str = "INBOX"
) -> int:
    """MULTIAPPEND with LITERAL+ over plain IMAP on loopback: one command per 1,000 messages."""
    sock = socket.create_connection(("127.0.0.1", port))
    f = sock.makefile("rb")
    f.readline()

    def until(tag: bytes) -> None:
        while True:
            line = f.readline()
            if not line:
                raise RuntimeError("connection closed while seeding")
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(line.decode(errors="replace"))
                return

    sock.sendall(b'l1 LOGIN "' + email.encode() + b'" "' + password.encode() + b'"\r\n')
    until(b"l1")
    n = 0
    batch: list[bytes] = []

    def flush() -> None:
        if not batch:
            return
        tag = b"a%d" % n
        sock.sendall(tag + b" APPEND " + folder.encode() + b"".join(batch) + b"\r\n")
        until(tag)
        batch.clear()

    for m in messages:
        batch.append(b" {%d+}\r\n" % len(m) + m)
        n += 1
        if len(batch) == 1000:
            flush()
    flush()
    sock.sendall(b"z LOGOUT\r\n")
    sock.close()
    return n


@dataclass
class MailItem:
    uid: int
    message_id: str | None
    send_id: str | None
    addresses: set[str]


def imap_inventory(port: int, email: str, password: str, folder: str) -> list[MailItem]:
    """Every message in a folder: UID, Message-ID, X-Mailsync-Send-Id and its From/To/Cc addresses."""
    m = imaplib.IMAP4("127.0.0.1", port, timeout=120)
    try:
        m.login(email, password)
        typ, _ = m.select(f'"{folder}"', readonly=True)
        if typ != "OK":
            return []
        typ, data = m.uid(
            "FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID FROM TO CC X-MAILSYNC-SEND-ID)])"
        )
        out: list[MailItem] = []
        for d in data:
            if not isinstance(d, tuple):
                continue
            meta, raw = d
            mm = re.search(rb"UID (\d+)", meta)
            if not mm:
                continue
            text = raw.decode("utf-8", "replace")
            headers: dict[str, list[str]] = {}
            current = ""
            for line in text.split("\r\n"):
                if line[:1] in (" ", "\t") and current:
                    headers[current][-1] += " " + line.strip()
                elif ":" in line:
                    current, _, value = line.partition(":")
                    current = current.strip().lower()
                    headers.setdefault(current, []).append(value.strip())
            addrs = {
                a.lower()
                for _, a in getaddresses(
                    headers.get("from", []) + headers.get("to", []) + headers.get("cc", [])
                )
                if a
            }
            mid = (headers.get("message-id") or [None])[0]
            out.append(
                MailItem(
                    uid=int(mm.group(1)),
                    message_id=mid.strip("<> ") if mid else None,
                    send_id=(headers.get("x-mailsync-send-id") or [None])[0],
                    addresses=addrs,
                )
            )
        return out
    finally:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            m.logout()


# ---- registry and events ----------------------------------------------------------------------------


def inbox_doc(inbox_id: str, email: str, password: str, keyring: Keyring, inst: Instance) -> dict[str, Any]:
    rid = InboxRecord.key(TENANT, inbox_id)
    now = datetime.now(UTC)
    rec = InboxRecord(
        id=rid,
        tenant_id=TENANT,
        inbox_id=inbox_id,
        owner_user_id=f"user-{inbox_id}",
        email=email,
        imap=ServerSettings(host="127.0.0.1", port=inst.ports["IMAPS_PORT"], security="tls"),
        smtp=ServerSettings(host="127.0.0.1", port=inst.ports["SUBMISSION_PORT"], security="starttls"),
        imap_auth=PasswordAuth(
            username=email, password=keyring.encrypt(password, f"{rid}:imap_auth.password")
        ),
        sent_copy="always",
        sync=SyncOptions(backfill_days=None),
        status="connecting",
        created_at=now,
        updated_at=now,
    )
    return rec.model_dump(by_alias=True)


def new_keys() -> tuple[str, Keyring]:
    keys = f"chaos1:{generate_key()}"
    return keys, Keyring.from_spec(keys)


def record_event(
    record_id: str, email: str, revision: int = 1, extra: Sequence[str] = ()
) -> CrmRecordUpserted:
    return CrmRecordUpserted.build(
        data=CrmRecordUpsertedData(
            record_id=record_id,
            record_type="contact" if zlib.crc32(record_id.encode()) % 2 else "lead",
            revision=revision,
            owner_user_id="crm-owner",
            name=f"Record {record_id}",
            primary_email=email,
            secondary_emails=list(extra),
        ),
        tenant_id=TENANT,
        source="/chaos",
        subject=record_id,
    )


def send_command(key: str, inbox_id: str, sender: str, to: str) -> SendRequested:
    return SendRequested.build(
        data=SendRequestedData(
            idempotency_key=key,
            from_=Address(email=sender, name="Chaos Sender"),
            to=[Address(email=to)],
            subject=f"chaos send {key}",
            text="A message sent while the chaos run kills things.\n" * 3,
        ),
        tenant_id=TENANT,
        inbox_id=inbox_id,
        source="/chaos",
    )


def send_id(inbox_id: str, key: str) -> str:
    return send_id_for(TENANT, inbox_id, key)


class Producer:
    """Contract events to Kafka; retries through a broker restart (same event → same id, so harmless)."""

    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        self._p: AIOKafkaProducer | None = None

    async def start(self) -> None:
        await apply_topics(self._bootstrap, TOPICS)
        self._p = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap, acks="all", enable_idempotence=True, request_timeout_ms=15000
        )
        await self._p.start()

    async def stop(self) -> None:
        if self._p is not None:
            await self._p.stop()

    async def publish(self, events: Sequence[Envelope[Any]], attempts: int = 60) -> None:
        for attempt in range(attempts):
            try:
                assert self._p is not None
                futs = []
                for e in events:
                    topic, key, body = EventPublisher.route(e)
                    headers = [(k, v.encode()) for k, v in EventPublisher.headers(e).items()]
                    futs.append(await self._p.send(topic.name, body, key=key, headers=headers))
                await asyncio.gather(*futs)
                return
            except Exception as exc:  # Kafka down for a restart: wait and send again
                if attempt == attempts - 1:
                    raise
                log(f"publish failed ({type(exc).__name__}), retrying")
                await asyncio.sleep(2)


async def read_topic(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every record of a topic from the beginning to the current end, decoded."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(TOPICS_BY_NAME[topic].partitions)]
        c.assign(parts)
        await c.seek_to_beginning(*parts)
        ends = await c.end_offsets(parts)
        out: list[dict[str, Any]] = []
        pending = {tp for tp, end in ends.items() if end > 0}
        while pending:
            batch = await c.getmany(timeout_ms=1000, max_records=5000)
            for tp, records in batch.items():
                for r in records:
                    try:
                        out.append(json.loads(r.value))
                    except ValueError:
                        out.append({"type": "<undecodable>"})
                    if r.offset + 1 >= ends[tp]:
                        pending.discard(tp)
        return out
    finally:
        await c.stop()


async def consumer_lag(bootstrap: str, groups: Sequence[str]) -> dict[str, int]:
    """Records not yet committed per consumer group, over every partition of the topics it consumes."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await probe.start()
    try:
        out: dict[str, int] = {}
        for group in groups:
            done = {
                (tp.topic, tp.partition): o.offset
                for tp, o in (await admin.list_consumer_group_offsets(group)).items()
            }
            topics = {t for t, _ in done}
            parts = [TopicPartition(t, p) for t in topics for p in range(TOPICS_BY_NAME[t].partitions)]
            ends = await probe.end_offsets(parts) if parts else {}
            out[group] = sum(
                max(0, end - max(0, done.get((tp.topic, tp.partition), 0))) for tp, end in ends.items()
            )
        return out
    finally:
        await probe.stop()
        await admin.close()


def smtp_submissions(postfix_log: Path) -> dict[str, int]:
    """Per send id: how many times mailsync handed the message to Postfix (distinct queue ids)."""
    seen: dict[str, set[str]] = {}
    pattern = re.compile(r"cleanup\[\d+\]: (\w+): message-id=<mailsync\.([0-9a-f]{32})@")
    if postfix_log.exists():
        for line in postfix_log.read_text(errors="replace").splitlines():
            m = pattern.search(line)
            if m:
                seen.setdefault(m.group(2), set()).add(m.group(1))
    return {k: len(v) for k, v in seen.items()}


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_main(coro: Any) -> None:
    """asyncio.run, with SIGTERM/SIGINT cancelling the run so its cleanup (services, stack) happens."""

    async def wrapper() -> None:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        await task

    asyncio.run(wrapper())


def run_tag() -> str:
    return uuid.uuid4().hex[:6]
