"""`mailsync` command line: topics, contract documents, tailing topics, the local demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from aiokafka import AIOKafkaConsumer

from contracts import TOPICS, TOPICS_BY_NAME

from .kafka import apply_topics, security
from .settings import ServiceSettings


def _admin_kwargs(settings: ServiceSettings) -> dict[str, Any]:
    sec = security(settings)
    if sec is None:
        return {}
    kwargs: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if sec.ssl_context is not None:
        kwargs["ssl_context"] = sec.ssl_context
    if settings.kafka_sasl_mechanism:
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        kwargs["sasl_plain_password"] = password.get_secret_value() if password else None
    return kwargs


async def _topics_apply(settings: ServiceSettings, replication: int) -> int:
    changes = await apply_topics(
        settings.kafka_bootstrap_servers, TOPICS, replication_factor=replication, **_admin_kwargs(settings)
    )
    for line in changes or ["topics up to date"]:
        print(line)
    return 0


def _topics_list() -> int:
    for t in TOPICS:
        types = ", ".join(cls.event_type for cls in t.events)
        print(f"{t.name}  key={t.key}  partitions={t.partitions}  compacted={t.compacted}\n    {types}")
    return 0


async def _tail(
    settings: ServiceSettings, topics: list[str], from_beginning: bool, limit: int | None, idle: float | None
) -> int:
    unknown = [t for t in topics if t not in TOPICS_BY_NAME]
    if unknown:
        print(f"mailsync: unknown topic(s) {', '.join(unknown)}; see `mailsync topics list`", file=sys.stderr)
        return 2
    consumer = AIOKafkaConsumer(
        *(topics or list(TOPICS_BY_NAME)),
        bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        **_admin_kwargs(settings),
    )
    await consumer.start()
    seen = 0
    try:
        while limit is None or seen < limit:
            try:
                record = await asyncio.wait_for(consumer.getone(), idle)
            except TimeoutError:
                break
            try:
                body: Any = json.loads(record.value or b"null")
            except ValueError:
                body = (record.value or b"").decode("utf-8", "replace")
            print(json.dumps({"topic": record.topic, "offset": record.offset, "event": body}), flush=True)
            seen += 1
    finally:
        await consumer.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailsync", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    topics = sub.add_parser("topics", help="Kafka topics from the contracts' registry")
    tsub = topics.add_subparsers(dest="action", required=True)
    apply_p = tsub.add_parser("apply", help="create missing topics, grow partitions (idempotent)")
    apply_p.add_argument("--replication-factor", type=int, default=1)
    tsub.add_parser("list", help="print the registry")
    tail = sub.add_parser("tail", help="print events from topics as JSON lines")
    tail.add_argument("topics", nargs="*", help="topic names (default: all)")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--max", type=int, default=None, help="stop after N events")
    tail.add_argument("--idle", type=float, default=None, help="stop after N seconds without an event")
    args = parser.parse_args(argv)

    settings = ServiceSettings(service_name="cli")
    try:
        if args.cmd == "topics" and args.action == "list":
            return _topics_list()
        if args.cmd == "topics":
            return asyncio.run(_topics_apply(settings, args.replication_factor))
        return asyncio.run(_tail(settings, args.topics, args.from_beginning, args.max, args.idle))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line a user can act on, not a stack trace
        print(
            f"mailsync: {type(exc).__name__}: {exc} (Kafka at {settings.kafka_bootstrap_servers})",
            file=sys.stderr,
        )
        return 1
