"""`mailsync` command line: topics, contract documents, tailing topics, the local demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from aiokafka import AIOKafkaConsumer

from contracts import TOPICS, TOPICS_BY_NAME

from .kafka import apply_topics, client_kwargs
from .settings import ServiceSettings


async def _topics_apply(settings: ServiceSettings, replication: int) -> int:
    changes = await apply_topics(
        settings.kafka_bootstrap_servers, TOPICS, replication_factor=replication, **client_kwargs(settings)
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
        **client_kwargs(settings),
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


def progress_lines(
    state: dict[str, dict[str, tuple[int, int]]], done: set[str], width: int = 30
) -> list[str]:
    """One bar per inbox from `sync progress` events (summed over its folders); pure, for the CLI."""
    lines = []
    for inbox in sorted(state):
        d = sum(v[0] for v in state[inbox].values())
        t = sum(v[1] for v in state[inbox].values())
        frac = 1.0 if inbox in done else (d / t if t else 0.0)
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        tail = "initial sync completed" if inbox in done else f"{d}/{t}"
        lines.append(f"{inbox[:36]:36} [{bar}] {frac * 100:5.1f}% {tail}")
    return lines


async def _progress(settings: ServiceSettings, from_beginning: bool, idle: float | None) -> int:
    """Live initial-sync progress per inbox, redrawn in place, from `mailsync.inbox.v1`."""
    consumer = AIOKafkaConsumer(
        "mailsync.inbox.v1",
        bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        **client_kwargs(settings),
    )
    await consumer.start()
    state: dict[str, dict[str, tuple[int, int]]] = {}
    done: set[str] = set()
    drawn = 0
    try:
        while True:
            try:
                record = await asyncio.wait_for(consumer.getone(), idle)
            except TimeoutError:
                break
            try:
                event = json.loads(record.value or b"null")
                inbox, kind, data = event["inbox_id"], event["type"], event["data"]
            except (ValueError, KeyError, TypeError):
                continue
            if kind == "mailsync.inbox.sync_progress":
                state.setdefault(inbox, {})[data["folder"]] = (int(data["done"]), int(data["total"]))
            elif kind == "mailsync.inbox.initial_sync_completed":
                state.setdefault(inbox, {})
                done.add(inbox)
            else:
                continue
            lines = progress_lines(state, done)
            up = f"\x1b[{drawn}F" if drawn else ""
            print(up + "\n".join(f"{line}\x1b[K" for line in lines), flush=True)
            drawn = len(lines)
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
    prog = sub.add_parser("progress", help="live initial-sync progress bar per inbox")
    prog.add_argument("--from-beginning", action="store_true")
    prog.add_argument("--idle", type=float, default=None, help="stop after N seconds without an event")
    keys = sub.add_parser("keys", help="credential encryption keys")
    ksub = keys.add_subparsers(dest="action", required=True)
    gen = ksub.add_parser("generate", help="print a new `kid:base64key` for MAILSYNC_CREDENTIALS_KEYS")
    gen.add_argument("--id", default="k1", help="key id to prefix (default k1)")
    args = parser.parse_args(argv)
    if args.cmd == "keys":
        from .credentials import generate_key  # noqa: PLC0415 - only this verb needs it

        print(f"{args.id}:{generate_key()}")
        return 0

    settings = ServiceSettings(service_name="cli")
    try:
        if args.cmd == "topics" and args.action == "list":
            return _topics_list()
        if args.cmd == "topics":
            return asyncio.run(_topics_apply(settings, args.replication_factor))
        if args.cmd == "progress":
            return asyncio.run(_progress(settings, args.from_beginning, args.idle))
        return asyncio.run(_tail(settings, args.topics, args.from_beginning, args.max, args.idle))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line a user can act on, not a stack trace
        print(
            f"mailsync: {type(exc).__name__}: {exc} (Kafka at {settings.kafka_bootstrap_servers})",
            file=sys.stderr,
        )
        return 1
