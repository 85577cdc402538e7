"""P3: memory of one fetcher process holding N idle inboxes (IMAP IDLE over TLS, one per inbox).

The bench's own mail lab (bench/biglab.py: /tmp/cb5, ports 41xxx; imap processes serve 100 clients
each, since only memory is measured here) gets N users; one fetcher process syncs them all. Inboxes
are registered in waves; once every inbox finished its initial sync and idles, the fetcher's resident
memory (VmRSS) is read, and the one of the same process before any inbox was registered is
subtracted to get the cost per inbox.

    IDLE_INBOXES=10000 .venv/bin/python bench/idle.py   # or --inboxes N

Each inbox syncs INBOX and Sent over STARTTLS, as the service does by default: two IDLE connections
per inbox (`--inbox-only` for one, `--security plain` to see what TLS costs). A process here may
hold at most the machine's hard file-descriptor limit of connections (`ulimit -Hn`); the bench says
so, measures the largest N that fits and projects to `--inboxes` (in a container without
CAP_SYS_RESOURCE root cannot raise it either: a hard limit of 20,000 allows 9,750 inboxes).

`--probe DIR` runs the fetcher under bench/memprobe.py and takes a memory probe (malloc counters,
object census; tracemalloc snapshots with MEMPROBE_TRACEMALLOC=frames) at every report row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

import biglab


async def completed_watcher(done: set[str]) -> asyncio.Task[None]:
    """Collects inbox ids of `initial sync completed` events from the end of mailsync.inbox.v1."""
    topic = "mailsync.inbox.v1"
    c = AIOKafkaConsumer(bootstrap_servers=biglab.KAFKA, enable_auto_commit=False, fetch_max_wait_ms=50)
    await c.start()
    meta = AIOKafkaProducer(bootstrap_servers=biglab.KAFKA)
    await meta.start()
    try:
        parts = [TopicPartition(topic, p) for p in sorted(await meta.partitions_for(topic))]
    finally:
        await meta.stop()
    c.assign(parts)
    await c.seek_to_end(*parts)
    for tp in parts:
        await c.position(tp)

    async def read() -> None:
        try:
            while True:
                for records in (await c.getmany(timeout_ms=200)).values():
                    for r in records:
                        try:
                            e = json.loads(r.value or b"{}")
                        except ValueError:
                            continue
                        if e.get("type") == "mailsync.inbox.initial_sync_completed":
                            done.add(str(e.get("inbox_id")))
        finally:
            await c.stop()

    return asyncio.create_task(read())


READY_SECONDS = 300.0


async def ready(fetcher: biglab.Fetcher) -> None:
    """Until the fetcher answers /readyz: its imports and clients are what the empty process holds."""
    url = f"http://127.0.0.1:{fetcher.port}/readyz"
    deadline = time.monotonic() + READY_SECONDS
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if fetcher.proc.poll() is not None:
                raise RuntimeError(f"fetcher exited: see {fetcher.log}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(1)
    raise RuntimeError(f"fetcher not ready after {READY_SECONDS:.0f}s: see {fetcher.log}")


async def probe(fetcher: biglab.Fetcher, probe_dir: Path | None, seq: int) -> None:
    """Ask bench/memprobe.py inside the fetcher for probe `seq` and wait until it is written."""
    if probe_dir is None:
        return
    fetcher.proc.send_signal(signal.SIGUSR1)
    path = probe_dir / f"probe-{seq}.json"
    for _ in range(1200):
        if path.exists():
            await asyncio.sleep(0.5)
            return
        await asyncio.sleep(0.5)
    print(f"probe {seq} not written", flush=True)


def connections(pid: int) -> int:
    try:
        return sum(
            1
            for fd in os.listdir(f"/proc/{pid}/fd")
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        )
    except OSError:
        return -1


async def measure(args: argparse.Namespace) -> None:  # noqa: PLR0915
    per_inbox_conns = 1 if args.inbox_only else 2
    probe_dir: Path | None = args.probe
    probes = 0
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    biglab.raise_fd_limit()
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    cap = (fd_limit - 500) // per_inbox_conns
    n = args.inboxes
    if n > cap:
        print(
            f"file-descriptor limit {fd_limit} (hard {hard}, not raisable here) allows at most {cap} "
            f"inboxes with {per_inbox_conns} connection(s) each in one process: measuring {cap}",
            flush=True,
        )
        n = cap
    ca = biglab.start_lab(n * per_inbox_conns + 500, per_imap=100)
    inboxes = biglab.make_users(n)
    done: set[str] = set()
    watcher = await completed_watcher(done)
    mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(biglab.MONGO)
    fetcher = await biglab.start_fetcher(
        inboxes,
        ca,
        MAILSYNC_FETCHER_SYNC_SCAN_INTERVAL_SECONDS=str(args.scan_interval),
        MAILSYNC_FETCHER_SYNC_LEASE_SECONDS=str(max(120.0, args.scan_interval * 6)),
        MAILSYNC_FETCHER_SYNC_IDLE_RESTART_SECONDS="1500",
        MAILSYNC_FETCHER_SYNC_BODIES="false",
        **({"MEMPROBE_DIR": str(probe_dir)} if probe_dir else {}),
    )
    rows: list[tuple[int, float, int]] = []
    try:
        await ready(fetcher)
        await asyncio.sleep(5)  # the sync manager's first scan
        base = fetcher.rss_mb()
        rows.append((0, base, connections(fetcher.proc.pid)))
        print(f"fetcher with no inbox: {base:.0f} MB", flush=True)
        probes += 1
        await probe(fetcher, probe_dir, probes)
        db = mongo[fetcher.database]
        records = inboxes.records(args.security, ["INBOX"] if args.inbox_only else None)
        started = time.perf_counter()
        budget_note = ""
        for i in range(0, len(records), args.wave):
            if time.perf_counter() - started > args.time_budget:
                budget_note = (
                    f"time budget of {args.time_budget:.0f}s used up after {i} inboxes (onboarding is bound "
                    f"by the local FerretDB/SQLite store): measured {i}, extrapolated to {args.inboxes}"
                )
                print(budget_note, flush=True)
                n = i
                break
            wave = records[i : i + args.wave]
            await db["inboxes"].insert_many(wave)
            wanted = {str(r["inbox_id"]) for r in wave}
            deadline = time.monotonic() + args.wave_timeout
            while not wanted <= done:
                if fetcher.proc.poll() is not None:
                    raise RuntimeError(f"fetcher exited: see {fetcher.log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"wave at {i}: {len(wanted - done)} inboxes never finished initial sync"
                    )
                await asyncio.sleep(0.5)
            held = i + len(wave)
            if held % args.report_every == 0 or held == len(records):
                rows.append((held, fetcher.rss_mb(), connections(fetcher.proc.pid)))
                print(
                    f"{held:6d} inboxes idle after {time.perf_counter() - started:6.0f}s: "
                    f"RSS {rows[-1][1]:7.0f} MB, {rows[-1][2]} sockets, "
                    f"Dovecot {biglab.dovecot_rss_mb():.0f} MB",
                    flush=True,
                )
                probes += 1
                await probe(fetcher, probe_dir, probes)
        await asyncio.sleep(args.settle)
        rss = fetcher.rss_mb()
        socks = connections(fetcher.proc.pid)
        rows.append((n, rss, socks))
        sessions = biglab.doveadm("who", "-1").count(f"b{inboxes.tag}-")
    finally:
        fetcher.stop()
        watcher.cancel()
        await mongo.drop_database(fetcher.database)
        await mongo.close()
        if not args.keep_users:
            biglab.remove_users(inboxes)

    print(f"\n{'inboxes':>8} {'fetcher RSS MB':>15} {'sockets':>8}")
    for held, mb, s in rows:
        print(f"{held:8d} {mb:15.0f} {s:8d}")
    per_kb = (rss - base) * 1024 / n
    projected = base + per_kb * args.inboxes / 1024
    print(
        f"\n{n} idle inboxes ({per_inbox_conns} IDLE connection(s) each, {args.security}): fetcher RSS "
        f"{rss:.0f} MB (empty {base:.0f} MB), {per_kb:.0f} KB per inbox; Dovecot sees {sessions} sessions"
    )
    if budget_note:
        print(budget_note)
    if n < args.inboxes:
        print(f"extrapolated to {args.inboxes} inboxes: {projected:.0f} MB")
    print(
        f"RESULT rss_mb={rss:.0f} per_inbox_kb={per_kb:.0f} inboxes={n} base_mb={base:.0f} "
        f"projected_{args.inboxes}_mb={projected:.0f} target_mb=1536"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inboxes", type=int, default=int(os.environ.get("IDLE_INBOXES", "10000")))
    ap.add_argument("--inbox-only", action="store_true", help="INBOX only: one connection per inbox")
    ap.add_argument("--security", choices=["starttls", "plain"], default="starttls")
    ap.add_argument("--wave", type=int, default=100)
    ap.add_argument("--wave-timeout", type=float, default=300.0)
    ap.add_argument("--report-every", type=int, default=500)
    ap.add_argument(
        "--time-budget", type=float, default=1800.0, help="seconds of onboarding; then measure what idles"
    )
    ap.add_argument("--scan-interval", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=10.0)
    ap.add_argument("--keep-users", action="store_true")
    ap.add_argument("--probe", metavar="DIR", help="memory probes (bench/memprobe.py) at every report row")
    args = ap.parse_args()
    if args.probe:
        args.probe = Path(args.probe).resolve()
        args.probe.mkdir(parents=True, exist_ok=True)
        os.environ["BENCH_FETCHER_WRAPPER"] = str(Path(__file__).resolve().parent / "memprobe.py")
    asyncio.run(measure(args))


if __name__ == "__main__":
    main()
