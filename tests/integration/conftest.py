"""Fixtures that start real servers (via tests/stack.py) and real service processes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pymongo import AsyncMongoClient

from contracts import TOPICS, Envelope, topic_of
from mailsync.credentials import generate_key
from mailsync.kafka import apply_topics
from tests.stack import ROOT, LocalStack, MailLab

pytestmark = pytest.mark.integration

# One credential key for every service process of a test session (fetcher and sender share it).
TEST_CREDENTIALS_KEYS = f"test:{generate_key()}"


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: LocalStack) -> str:
    bootstrap = stack.kafka()
    asyncio.run(apply_topics(bootstrap, TOPICS))
    return bootstrap


@pytest.fixture(scope="session")
def mongo_uri(stack: LocalStack) -> str:
    return stack.mongo_uri()


@pytest.fixture(scope="session")
def mail_lab(stack: LocalStack) -> MailLab:
    return stack.mail()


@dataclass(frozen=True)
class MailUser:
    email: str
    password: str


@pytest.fixture
def mail_user_factory(stack: LocalStack, mail_lab: MailLab) -> Callable[[str], MailUser]:
    def make(prefix: str) -> MailUser:
        user = MailUser(f"{prefix}-{uuid.uuid4().hex[:8]}@{mail_lab.domain}", f"pw-{uuid.uuid4().hex}")
        stack.add_mail_user(user.email, user.password)
        return user

    return make


@pytest_asyncio.fixture
async def mongo(mongo_uri: str) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    yield client
    await client.close()


@pytest_asyncio.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[Callable[[Envelope[Any]], Awaitable[None]]]:
    """Publishes a contract event the way any external producer would: JSON body, registry key."""
    prod = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await prod.start()

    async def send(event: Envelope[Any]) -> None:
        topic = topic_of(event)
        await prod.send_and_wait(topic.name, event.model_dump_json().encode(), key=topic.key_for(event))

    yield send
    await prod.stop()


class TopicWatcher:
    """Reads a topic from the end as of creation; `wait_for` returns the first event matching."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self.seen: list[dict[str, Any]] = []

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        for event in self.seen:
            if predicate(event):
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await self._consumer.getmany(timeout_ms=500)
            # Keep the whole batch before matching, so a later wait_for still sees the rest of it.
            fresh = [json.loads(r.value) for records in batch.values() for r in records]
            self.seen.extend(fresh)
            for event in fresh:
                if predicate(event):
                    return event
        raise AssertionError(f"no matching event within {timeout}s; saw {[e.get('type') for e in self.seen]}")


async def consumer_at_end(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    """A started consumer assigned every partition of `topic`, its positions pinned to the current
    end: it reads only what is published after this returns."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    meta = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await meta.start()
    try:
        ids = await meta.partitions_for(topic)  # public call that waits for the topic's metadata
    finally:
        await meta.stop()
    partitions = [TopicPartition(topic, p) for p in sorted(ids)]
    assert partitions, f"topic {topic} has no partitions"
    consumer.assign(partitions)
    await consumer.seek_to_end(*partitions)
    for tp in partitions:
        await consumer.position(tp)
    return consumer


@pytest_asyncio.fixture
async def watch(kafka_bootstrap: str) -> AsyncIterator[Callable[[str], Awaitable[TopicWatcher]]]:
    consumers: list[AIOKafkaConsumer] = []

    async def make(topic: str) -> TopicWatcher:
        consumer = await consumer_at_end(kafka_bootstrap, topic)
        consumers.append(consumer)
        return TopicWatcher(consumer)

    yield make
    for c in consumers:
        await c.stop()


async def skip_history(bootstrap: str, group: str) -> None:
    """Commit the current end of every registry topic for `group`, so a fresh consumer group starts at
    the end instead of replaying the shared topics' whole history (deterministic, unlike `latest`)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    meta = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await asyncio.gather(consumer.start(), meta.start())
    try:
        partitions = [
            TopicPartition(t.name, p) for t in TOPICS for p in sorted(await meta.partitions_for(t.name))
        ]
        ends = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        await consumer.commit(dict(ends))
    finally:
        await asyncio.gather(consumer.stop(), meta.stop())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServiceProcess:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    database: str
    log_path: Path

    def http(self, path: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"{self.name} ignored SIGTERM for {timeout}s") from None
        return int(self.proc.returncode)


@pytest.fixture
def service(kafka_bootstrap: str, mongo_uri: str, tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Starts `python -m services.<name>` as a real process, isolated by database and consumer group."""
    started: list[ServiceProcess] = []

    def start(name: str, *, history: bool | None = None, **extra_env: str) -> ServiceProcess:
        """A fresh consumer group starts at the topics' end unless `history=True`. A caller-chosen group
        (e.g. a restart that must resume from its committed offsets) is left as it is by default."""
        run = uuid.uuid4().hex[:8]
        own_group = "MAILSYNC_KAFKA_CONSUMER_GROUP_PREFIX" in extra_env
        if history is False or (history is None and not own_group):
            prefix = extra_env.get("MAILSYNC_KAFKA_CONSUMER_GROUP_PREFIX", f"test-{run}")
            group = f"{prefix}.{name}"
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, skip_history(kafka_bootstrap, group)).result(60)
        port = _free_port()
        database = f"test_{name}_{run}"
        env = {
            **os.environ,
            "MAILSYNC_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "MAILSYNC_MONGO_URI": mongo_uri,
            "MAILSYNC_MONGO_DATABASE": database,
            "MAILSYNC_KAFKA_CONSUMER_GROUP_PREFIX": f"test-{run}",
            "MAILSYNC_HTTP_PORT": str(port),
            # The fetcher refuses to start without a credential key (issue #3); tests get a fresh one.
            "MAILSYNC_CREDENTIALS_KEYS": os.environ.get("MAILSYNC_CREDENTIALS_KEYS") or TEST_CREDENTIALS_KEYS,
            **extra_env,
        }
        log_path = tmp_path / f"{name}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            cwd=ROOT,
            env=env,
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        svc = ServiceProcess(name, proc, port, database, log_path)
        started.append(svc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{svc.log()[-3000:]}")
            try:
                if svc.http("/readyz")[0] == 200:
                    return svc
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{name} not ready in 60s:\n{svc.log()[-3000:]}")

    yield start
    for svc in started:
        svc.stop()


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 30.0, interval: float = 0.2
) -> Any:
    """Polls `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)
