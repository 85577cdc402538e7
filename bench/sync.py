"""P1: initial sync of one Dovecot mailbox, messages/s, against mbsync and a raw imaplib fetch.

Seeds a fresh lab user with N small messages (pipelined MULTIAPPEND with LITERAL+), then in the same run:
- `mbsync` (Debian isync, C): IMAP → Maildir on disk, full messages;
- stdlib `imaplib`: one `UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER])`, nothing else;
- ours: `FolderSync` initial sync as the service runs it — bounded UID FETCH units of headers and
  bodies together (BODY.PEEK[], after an RFC822.SIZE FETCH so nothing over the size cap is downloaded),
  `message received` events acknowledged by Kafka, message documents and MIME-analysed bodies in
  FerretDB, then the bodies' `message updated` events, cursor stored — timed until all of that is done
  (and any body backlog passes after it, as the service runs them).

    deploy/local/stack.sh up && .venv/bin/python bench/sync.py [--messages 100000] [--profile FILE]

`--profile FILE` runs ours under cProfile (slower) and writes the stats to FILE; every run prints the
CPU seconds of this process during ours, against its wall time (the rest is waiting on the servers).

Both download whole messages; ours also publishes two events per message and writes to FerretDB.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import imaplib
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from email.utils import formatdate
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contracts import TOPICS  # noqa: E402
from mailsync.kafka import EventPublisher, apply_topics, make_broker  # noqa: E402
from mailsync.service import tune_gc  # noqa: E402
from mailsync.settings import ServiceSettings  # noqa: E402
from mailsync.store import database, make_client  # noqa: E402
from services.fetcher.imap.session import ImapSession  # noqa: E402
from services.fetcher.sync.folder import FolderSync, SyncTuning  # noqa: E402
from services.fetcher.sync.messages import FolderContext  # noqa: E402

HOST, PORT = "127.0.0.1", 31143
CA = ROOT / ".stack" / "mail" / "tls" / "cert.pem"


def message(i: int, tag: str) -> bytes:
    body = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 8).strip()
    return (
        f"From: Sender {i % 97} <sender{i % 97}@example.com>\r\nTo: bench@mailsync.test\r\n"
        f"Subject: bench message {i}\r\nDate: {formatdate(time.time() - 3600 + i * 0.01)}\r\n"
        f"Message-ID: <{tag}-{i}@example.com>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()


STACK = ROOT / ".stack"
SERVERS = {
    "ferretdb": STACK / "ferretdb" / "ferretdb.pid",
    "kafka": STACK / "kafka" / "run" / "kafka.pid",
    "dovecot": STACK / "mail" / "run" / "dovecot" / "master.pid",
}


def server_cpu() -> dict[str, float]:
    """CPU seconds used so far by each server process, its exited children included (Dovecot's
    per-session `imap` processes are children of its master; they are counted once they exit)."""
    ticks = 100.0  # USER_HZ on Linux
    cpu: dict[str, float] = {}
    for name, pidfile in SERVERS.items():
        try:
            pid = pidfile.read_text().split()[0]
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, IndexError):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu[name] = sum(int(fields[i]) for i in (11, 12, 13, 14)) / ticks  # utime stime cutime cstime
    return cpu


AT_END: dict[str, float] = {}  # CPU seconds when ours finished (before its checks and cleanup)


def live_children_cpu(name: str) -> float:
    """CPU seconds of the server's children still running (the session under test is one)."""
    try:
        master = SERVERS[name].read_text().split()[0]
    except (OSError, IndexError):
        return 0.0
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[1] == master:
            total += (int(fields[11]) + int(fields[12])) / 100.0
    return total


def seed(email: str, password: str, n: int, tag: str) -> None:
    """MULTIAPPEND with non-synchronizing literals: one command per 1,000 messages."""
    ctx = ssl.create_default_context(cafile=str(CA))
    raw = socket.create_connection((HOST, PORT))
    raw.recv(4096)
    raw.sendall(b"s1 STARTTLS\r\n")
    raw.recv(4096)
    sock = ctx.wrap_socket(raw, server_hostname=HOST)
    f = sock.makefile("rb")

    def until(tagname: bytes) -> bytes:
        while True:
            line = f.readline()
            if not line:
                raise RuntimeError("connection closed while seeding")
            if line.startswith(tagname + b" "):
                if not line.startswith(tagname + b" OK"):
                    raise RuntimeError(line.decode(errors="replace"))
                return line

    sock.sendall(b'l1 LOGIN "' + email.encode() + b'" "' + password.encode() + b'"\r\n')
    until(b"l1")
    for start in range(0, n, 1000):
        parts = [b"a%d APPEND INBOX" % start]
        for i in range(start, min(n, start + 1000)):
            m = message(i, tag)
            parts.append(b" {%d+}\r\n" % len(m) + m)
        sock.sendall(b"".join(parts) + b"\r\n")
        until(b"a%d" % start)
    sock.sendall(b"z LOGOUT\r\n")
    sock.close()


def run_mbsync(email: str, password: str, workdir: Path) -> float:
    maildir = workdir / "maildir"
    maildir.mkdir()
    cfg = workdir / "mbsyncrc"
    # The lab certificate names `localhost` and 127.0.0.1; mbsync matches host names only.
    cfg.write_text(
        f"""IMAPAccount bench
Host localhost
Port {PORT}
User {email}
Pass {password}
SSLType STARTTLS
CertificateFile {CA}

IMAPStore remote
Account bench

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel bench
Far :remote:
Near :local:
Patterns INBOX
Sync Pull
Create Near
Expunge None
SyncState *
"""
    )
    started = time.perf_counter()
    subprocess.run(["mbsync", "-q", "-c", str(cfg), "bench"], check=True)
    elapsed = time.perf_counter() - started
    got = len(list((maildir / "INBOX" / "new").iterdir())) + len(list((maildir / "INBOX" / "cur").iterdir()))
    return elapsed if got else float("nan")


def run_imaplib(email: str, password: str) -> tuple[float, int]:
    started = time.perf_counter()
    m = imaplib.IMAP4(HOST, PORT)
    m.starttls(ssl.create_default_context(cafile=str(CA)))
    m.login(email, password)
    m.select("INBOX", readonly=True)
    _, data = m.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER])")
    count = sum(1 for d in data if isinstance(d, tuple))
    m.logout()
    return time.perf_counter() - started, count


async def run_ours(email: str, password: str, chunk: int, inline: bool = False) -> tuple[float, int]:
    settings = ServiceSettings(service_name="bench", mongo_database=f"bench_sync_{uuid.uuid4().hex[:8]}")
    await apply_topics(settings.kafka_bootstrap_servers, TOPICS)
    broker = make_broker(settings)
    await broker.start()
    mongo = make_client(settings)
    db = database(mongo, settings)
    try:
        ctx = FolderContext(
            tenant_id="bench",
            inbox_id=f"bench-{uuid.uuid4().hex[:8]}",
            folder="INBOX",
            uidvalidity=0,
            source="/bench",
            own_addresses=frozenset({email}),
        )
        fs = FolderSync(
            ctx,
            db=db,
            publisher=EventPublisher(broker),
            tuning=SyncTuning(fetch_chunk=chunk, backfill_days=None, inline_bodies=inline),
        )
        started = time.perf_counter()
        session = await ImapSession.connect(
            HOST, PORT, "starttls", ssl_context=ssl.create_default_context(cafile=str(CA))
        )
        await session.login(email, password)
        result = await fs.run_pass(session)
        headers_done = time.perf_counter() - started
        bodies = result.bodies
        while result.more:  # the body backlog, in bounded slices like the service runs it
            result2 = await fs.run_pass(session)
            bodies += result2.bodies
            result.more = result2.more
        await session.logout()
        elapsed = time.perf_counter() - started
        AT_END.update(server_cpu(), ours=time.process_time())
        AT_END["dovecot"] = AT_END.get("dovecot", 0.0) + live_children_cpu("dovecot")
        print(
            f"ours: first pass (headers and bodies of the initial sync) done after {headers_done:.1f}s, "
            f"all {bodies} bodies stored after {elapsed:.1f}s"
        )
        if bodies != result.received:
            raise RuntimeError(f"bodies {bodies} != received {result.received}")
        stored = await db["messages"].count_documents({"inbox_id": ctx.inbox_id})
        if stored != result.received:
            raise RuntimeError(f"stored {stored} != received {result.received}")
        return elapsed, result.received
    finally:
        await mongo.drop_database(settings.mongo_database)
        await mongo.close()
        await broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=1000)
    ap.add_argument("--inline-bodies", action="store_true", help="bodies in the initial FETCHes (SyncTuning)")
    ap.add_argument("--profile", metavar="FILE", help="run ours under cProfile, stats written to FILE")
    args = ap.parse_args()
    if not shutil.which("mbsync"):
        sys.exit("mbsync not found: apt-get install isync")
    tag = uuid.uuid4().hex[:8]
    email, password = f"bench-{tag}@mailsync.test", f"pw-{tag}"
    mail_sh = str(ROOT / "deploy/local/mail.sh")
    subprocess.run([mail_sh, "adduser", email, password], check=True)
    try:
        t = time.perf_counter()
        seed(email, password, args.messages, tag)
        print(f"seeded {args.messages} messages in {time.perf_counter() - t:.1f}s", flush=True)
        n = args.messages
        with tempfile.TemporaryDirectory() as tmp:
            mb = run_mbsync(email, password, Path(tmp))
        raw_s, raw_n = run_imaplib(email, password)
        tune_gc(ServiceSettings())  # the collector tuned as the fetcher service runs it
        profiler = cProfile.Profile() if args.profile else None
        servers_before = server_cpu()
        servers_before["dovecot"] = servers_before.get("dovecot", 0.0) + live_children_cpu("dovecot")
        cpu = ours_cpu0 = time.process_time()
        if profiler is not None:
            profiler.enable()
        ours_s, ours_n = asyncio.run(run_ours(email, password, args.chunk, args.inline_bodies))
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        cpu = time.process_time() - cpu
        print(f"ours: {cpu:.1f} CPU seconds in this process (setup and teardown included)")
        # Where the machine's CPU went during ours (2 cores: wall time can not fall below total / 2).
        split = {k: v - servers_before.get(k, v) for k, v in AT_END.items() if k != "ours"}
        ours_cpu = AT_END["ours"] - ours_cpu0
        total = ours_cpu + sum(split.values())
        print(
            "CPU seconds during ours (until its last body was stored): "
            + " ".join(f"{k}={v:.1f}" for k, v in {"ours": ours_cpu, **split}.items())
            + f" total={total:.1f} (wall {ours_s:.1f} s)"
        )
    finally:  # the seeded mailbox is large; do not leave it in the lab
        subprocess.run([mail_sh, "deluser", email], check=False)
    if ours_n != n or raw_n != n:
        sys.exit(f"count mismatch: ours {ours_n}, imaplib {raw_n}, seeded {n}")
    rows = [
        ("mbsync (IMAP → Maildir, full messages)", mb, n / mb),
        ("imaplib one FETCH (headers, no processing)", raw_s, n / raw_s),
        ("mailsync (events on Kafka + headers & bodies in FerretDB)", ours_s, n / ours_s),
    ]
    print(f"\n{'method':58} {'seconds':>9} {'msgs/s':>10}")
    for name, secs, rate in rows:
        print(f"{name:58} {secs:9.2f} {rate:10.0f}")
    ratio = (n / ours_s) / (n / mb)
    print(
        f"RESULT p1_msgs_per_s={n / ours_s:.0f} mbsync_msgs_per_s={n / mb:.0f} "
        f"imaplib_msgs_per_s={n / raw_s:.0f} ratio_vs_mbsync={ratio:.2f} messages={n}"
    )


if __name__ == "__main__":
    main()
