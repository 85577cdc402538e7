"""Operating mailsync: /metrics after traffic, topic configs kept in line, SCRAM-authenticated Kafka.

The SASL test runs its own Kafka (own stack dir under pytest's tmp, own ports, SASL listener on) so the
shared local Kafka is never restarted; the fixture stops it at the end.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient

from contracts import Topic
from contracts.crm import CrmRecordUpserted, CrmRecordUpsertedData
from contracts.inbox import InboxCommandData, InboxCommandRequested
from mailsync.kafka import apply_topics
from tests.integration.conftest import _free_port, eventually
from tests.integration.test_fetcher_sync import append, record, sync_env
from tests.integration.test_sender_delivery import inbox_doc, send_command, sender_env
from tests.stack import ROOT

pytestmark = pytest.mark.integration
# The linker (a fresh consumer group) may first work through what other runs publish meanwhile on the
# shared messages topic, in the reply's partition.
BACKLOG_S = 120.0
KAFKA_SH = ROOT / "deploy/local/kafka.sh"


def scrape(svc: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{svc.port}/metrics", timeout=5) as r:
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/plain")
        text = r.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= set(lbl))


async def test_metrics_counters_move_after_traffic(service, producer, kafka_bootstrap: str, mongo) -> None:  # type: ignore[no-untyped-def]
    fetcher = service("fetcher")
    topic = "mailsync.inbox.commands.v1"
    consumed = "mailsync_events_consumed_total"

    # A fresh consumer group reads the topic from the start (other tests' commands): wait until that
    # backlog is done (no lag, no change for a second), then count from there.
    async def settled() -> dict[Any, float] | None:
        first = await asyncio.to_thread(scrape, fetcher)
        await asyncio.sleep(1.0)
        second = await asyncio.to_thread(scrape, fetcher)
        lags = [
            v for (n, lbl), v in second.items() if n == "mailsync_consumer_lag" and ("topic", topic) in lbl
        ]
        same = total(first, consumed, topic=topic) == total(second, consumed, topic=topic)
        return second if same and not any(lags) else None

    before = await eventually(settled, timeout=60)
    assert total(before, "mailsync_inboxes", status="paused") == 0
    # The inbox gauge is read from the registry at each scrape.
    await mongo[fetcher.database].inboxes.insert_one({"_id": "t1:gauge", "status": "paused"})

    # One valid command for an unknown inbox (handled: refused with an error event) and one record
    # that fails the contract (rejected).
    data = InboxCommandData(request_id=f"r-{uuid.uuid4().hex}", action="pause", by_user_id="ops")
    unknown = f"metrics-{uuid.uuid4().hex[:8]}"
    await producer(InboxCommandRequested.build(data=data, tenant_id="t1", inbox_id=unknown, source="/ops"))
    raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await raw.start()
    try:
        await raw.send_and_wait(topic, b'{"not": "an event"}', key=unknown.encode())
    finally:
        await raw.stop()

    def delta(after: dict[Any, float], name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    async def moved() -> dict[Any, float] | None:
        after = await asyncio.to_thread(scrape, fetcher)
        return after if delta(after, consumed, topic=topic) >= 2 else None

    after = await eventually(moved)
    cmd_type = InboxCommandRequested.event_type
    assert delta(after, consumed, topic=topic, type=cmd_type, outcome="handled") == 1
    assert delta(after, consumed, topic=topic, type="unknown", outcome="rejected") == 1
    assert delta(after, "mailsync_events_rejected_total", topic=topic) == 1
    assert delta(after, "mailsync_handler_seconds_count", topic=topic) == 2
    assert delta(after, "mailsync_events_produced_total", topic="mailsync.rejected.v1") == 2
    assert total(after, "mailsync_inboxes", status="paused") == 1
    lag = [v for (n, lbl), v in after.items() if n == "mailsync_consumer_lag" and ("topic", topic) in lbl]
    assert lag and all(v >= 0 for v in lag)
    assert fetcher.stop() == 0


async def test_domain_metrics_move_with_real_mail(  # type: ignore[no-untyped-def]  # noqa: PLR0917
    service, producer, watch, mongo, mail_lab, mail_user_factory
) -> None:
    """Alice sends to Bob through the sender (Postfix), the fetcher syncs Bob's inbox over IMAP IDLE,
    Bob gets a reply to Alice's mail and the linker classifies it: each service's /metrics shows it."""
    alice, bob = mail_user_factory("alice"), mail_user_factory("bob")
    tag = uuid.uuid4().hex[:8]
    fetch_inbox, send_inbox = f"bob-{tag}", f"alice-{tag}"
    inbox_events = await watch("mailsync.inbox.v1")
    send_events = await watch("mailsync.send.events.v1")
    replies = await watch("mailsync.replies.v1")
    linker = service("linker")
    sender = service("sender", **sender_env())
    # IDLE restarted every second, so restarts show within the test.
    fetcher = service("fetcher", **sync_env(MAILSYNC_FETCHER_SYNC_IDLE_RESTART_SECONDS="1"))
    await mongo[sender.database].inboxes.insert_one(
        inbox_doc(send_inbox, alice.email, alice.password, mail_lab)
    )
    await mongo[fetcher.database].inboxes.insert_one(record(bob, mail_lab.imap_port, "t1", fetch_inbox))
    await inbox_events.wait_for(
        lambda e: e["inbox_id"] == fetch_inbox and e["type"] == "mailsync.inbox.initial_sync_completed", 60
    )

    # The fetcher holds IMAP connections (INBOX and Sent) that IDLE and restart IDLE.
    async def idling() -> dict[Any, float] | None:
        got = await asyncio.to_thread(scrape, fetcher)
        idle = total(got, "mailsync_imap_connections", state="idle")
        return got if idle >= 1 and total(got, "mailsync_imap_idle_total", ended="restart") >= 1 else None

    fetched = await eventually(idling, timeout=30)
    assert total(fetched, "mailsync_imap_connections") >= 2  # INBOX and Sent, by state
    assert {lbl for (n, lbl), _ in fetched.items() if n == "mailsync_imap_connections"} >= {
        (("state", s),) for s in ("syncing", "idle", "polling")
    }

    # Alice → Bob over SMTP submission: one 250, one Sent copy appended.
    key = f"k-{tag}"
    await producer(send_command(send_inbox, key, alice.email, bob.email, subject=f"offer {tag}"))
    sent = await send_events.wait_for(
        lambda e: e["type"] == "mailsync.send.message_sent" and e["data"]["idempotency_key"] == key, 60
    )
    await send_events.wait_for(
        lambda e: (
            e["type"] == "mailsync.send.sent_copy_stored" and e["data"]["send_id"] == sent["data"]["send_id"]
        )
    )
    sender_after = await asyncio.to_thread(scrape, sender)
    assert total(sender_after, "mailsync_smtp_outcomes_total", code="250") == 1
    assert total(sender_after, "mailsync_sent_copy_outcomes_total", outcome="appended") == 1

    # Bob's answer lands in his inbox: synced as new mail, classified as a reply by the linker.
    mid = sent["data"]["message_id"]
    answer = (
        f"From: Ann <ann-{tag}@example.com>\r\nTo: {bob.email}\r\nSubject: Re: offer {tag}\r\n"
        f"Message-ID: <answer-{tag}@example.com>\r\nIn-Reply-To: <{mid}>\r\n\r\nyes\r\n"
    ).encode()
    await asyncio.to_thread(append, bob, mail_lab.imap_port, [answer])
    await replies.wait_for(
        lambda e: e["inbox_id"] == fetch_inbox and e["type"] == "mailsync.message.reply_received", BACKLOG_S
    )

    async def synced() -> dict[Any, float] | None:
        got = await asyncio.to_thread(scrape, fetcher)
        # Alice's mail via Postfix and the answer; IDLE woke for them.
        moved = total(got, "mailsync_sync_messages_total", phase="incremental") >= 2
        return got if moved and total(got, "mailsync_imap_idle_total", ended="changes") >= 1 else None

    await eventually(synced, timeout=30)
    linked = await asyncio.to_thread(scrape, linker)
    assert total(linked, "mailsync_linker_signals_total", kind="reply") >= 1
    assert total(linked, "mailsync_linker_links_total", outcome="unlinked") >= 1  # no CRM records here
    for svc in (fetcher, sender, linker):
        assert svc.stop() == 0, svc.log()[-3000:]


async def test_topics_apply_aligns_retention_and_cleanup_idempotently(kafka_bootstrap: str) -> None:
    name = f"test.ops.{uuid.uuid4().hex[:8]}"
    first = Topic(name, "inbox_id", (), "test", partitions=2, retention_ms=3_600_000)
    assert await apply_topics(kafka_bootstrap, [first]) == [f"created {name} (2 partitions)"]
    assert await apply_topics(kafka_bootstrap, [first]) == []

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        # An operator's own setting on the topic must survive the realignment.
        await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    name,
                    {"cleanup.policy": "delete", "retention.ms": "3600000", "max.message.bytes": "2000000"},
                )
            ]
        )
        changed = Topic(name, "inbox_id", (), "test", partitions=3, compacted=True)
        changes = await apply_topics(kafka_bootstrap, [changed])
        assert changes == [
            f"grew {name} to 3 partitions",
            f"updated {name} config: cleanup.policy=compact, retention.ms=-1",
        ]
        assert await apply_topics(kafka_bootstrap, [changed]) == []
        [resp] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        [res] = resp.to_object()["resources"]
        cfg = {e["config_names"]: e["config_value"] for e in res["config_entries"]}
        assert cfg["cleanup.policy"] == "compact" and cfg["retention.ms"] == "-1"
        assert cfg["max.message.bytes"] == "2000000"
    finally:
        await admin.delete_topics([name])
        await admin.close()


@dataclass(frozen=True)
class SaslKafka:
    plaintext: str
    sasl: str
    sasl_ssl: str
    cafile: str
    user: str
    password: str

    def env(
        self, mechanism: str = "SCRAM-SHA-512", password: str | None = None, *, tls: bool = True
    ) -> dict[str, str]:
        """Service settings for this Kafka: SASL over TLS (the production setup) unless tls=False."""
        env = {
            "MAILSYNC_KAFKA_BOOTSTRAP_SERVERS": self.sasl_ssl if tls else self.sasl,
            "MAILSYNC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL" if tls else "SASL_PLAINTEXT",
            "MAILSYNC_KAFKA_SASL_MECHANISM": mechanism,
            "MAILSYNC_KAFKA_SASL_USERNAME": self.user,
            "MAILSYNC_KAFKA_SASL_PASSWORD": self.password if password is None else password,
        }
        if tls:
            env["MAILSYNC_KAFKA_SSL_CAFILE"] = self.cafile
        return env


@pytest.fixture(scope="module")
def sasl_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslKafka]:
    stack_dir = tmp_path_factory.mktemp("sasl-stack")
    version = os.environ.get("KAFKA_VERSION", "4.1.1")
    shared_libs = Path(os.environ.get("MAILSYNC_STACK_DIR", ROOT / ".stack")) / "kafka" / version / "libs"
    if (shared_libs / ".mailsync-installed").exists():  # reuse the jars instead of fetching them again
        (stack_dir / "kafka" / version).mkdir(parents=True)
        (stack_dir / "kafka" / version / "libs").symlink_to(shared_libs)
    port, controller, sasl_port, ssl_port = _free_port(), _free_port(), _free_port(), _free_port()
    password = f"pw-{uuid.uuid4().hex}"
    env = {
        **os.environ,
        "MAILSYNC_STACK_DIR": str(stack_dir),
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(controller),
        "KAFKA_SASL_PORT": str(sasl_port),
        "KAFKA_SASL_SSL_PORT": str(ssl_port),
        "KAFKA_SASL_USER": "svc-mailsync",
        "KAFKA_SASL_PASSWORD": password,
        "KAFKA_HEAP_OPTS": "-Xms128m -Xmx320m",
    }
    started = subprocess.run(
        [str(KAFKA_SH), "start"], env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert started.returncode == 0, f"SASL Kafka did not start:\n{started.stderr[-3000:]}"
    try:
        yield SaslKafka(
            f"127.0.0.1:{port}",
            f"127.0.0.1:{sasl_port}",
            f"127.0.0.1:{ssl_port}",
            str(stack_dir / "kafka/tls/ca.crt"),
            "svc-mailsync",
            password,
        )
    finally:
        subprocess.run([str(KAFKA_SH), "stop"], env=env, capture_output=True, timeout=90, check=False)


def _mailsync_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from mailsync.cli import main; sys.exit(main())", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_scram_authenticated_kafka_end_to_end(service, sasl_kafka: SaslKafka, mongo_uri: str) -> None:  # type: ignore[no-untyped-def]
    # Topic provisioning (what the Helm hook Job runs) with SCRAM over TLS, then with PLAIN without
    # TLS: the second run finds nothing to change.
    applied = _mailsync_cli("topics", "apply", env=sasl_kafka.env())
    assert applied.returncode == 0, applied.stderr
    assert "created crm.records.v1" in applied.stdout
    again = _mailsync_cli("topics", "apply", env=sasl_kafka.env("PLAIN", tls=False))
    assert again.returncode == 0 and again.stdout.strip() == "topics up to date", again.stderr

    # The service runs with SASL_SSL + SCRAM-SHA-512 and the local CA.
    linker = service("linker", **sasl_kafka.env())
    assert linker.http("/readyz") == (200, {"kafka": True, "database": True})

    # An external producer authenticates with SCRAM on the SASL_PLAINTEXT listener.
    rid = f"sasl-{uuid.uuid4().hex[:8]}"
    data = CrmRecordUpsertedData(
        record_id=rid, record_type="lead", revision=1, owner_user_id="u1", primary_email="s@example.com"
    )
    event = CrmRecordUpserted.build(data=data, tenant_id="t1", source="/crm", subject=rid)
    prod = AIOKafkaProducer(
        bootstrap_servers=sasl_kafka.sasl,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username=sasl_kafka.user,
        sasl_plain_password=sasl_kafka.password,
    )
    await prod.start()
    try:
        await prod.send_and_wait("crm.records.v1", event.model_dump_json().encode(), key=rid.encode())
    finally:
        await prod.stop()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    try:
        db = client[linker.database]
        await eventually(lambda: db.crm_records.find_one({"_id": f"t1:{rid}"}))
    finally:
        await client.close()
    assert linker.stop() == 0


def test_wrong_sasl_password_is_a_clear_startup_error(sasl_kafka: SaslKafka, tmp_path: Path) -> None:
    env = {
        **os.environ,
        **sasl_kafka.env(password="not-the-password"),
        "MAILSYNC_HTTP_PORT": str(_free_port()),
        "MAILSYNC_MONGO_DATABASE": f"test_sasl_{uuid.uuid4().hex[:8]}",
    }
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "services.linker"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert time.monotonic() - t0 < 30
    out = proc.stdout + proc.stderr
    assert "cannot connect to Kafka" in out and "SaslAuthenticationFailed" in out, out[-2000:]
    assert "not-the-password" not in out

    cli = _mailsync_cli("topics", "apply", env=sasl_kafka.env(password="not-the-password", tls=False))
    assert cli.returncode == 1 and "not-the-password" not in cli.stdout + cli.stderr
    assert "SaslAuthenticationFailed" in cli.stderr

    # TLS without the CA that signed the broker's certificate: refused by certificate verification.
    no_ca = {**sasl_kafka.env(), "MAILSYNC_KAFKA_SSL_CAFILE": ""}
    untrusted = _mailsync_cli("topics", "apply", env=no_ca)
    assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
