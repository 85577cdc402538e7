"""Shared by bench/latency.py and bench/idle.py: many idle inboxes on one fetcher process.

- A mail lab instance of its own (`deploy/local/mail.sh` with MAILSYNC_STACK_DIR=/tmp/cb5 and ports
  41xxx; BENCH_STACK_DIR and BENCH_PORT_BASE move it), so the raised limits never touch the shared
  lab: Dovecot's per-instance override file `etc/local.d/limits.conf` (included by dovecot.conf.in)
  lets imap processes serve many clients each, login processes run in high-performance mode, and
  the file-descriptor limit is raised for Dovecot and the fetcher (root may raise its hard limit).
- Users in bulk (`mail.sh addusers`), inboxes written straight into a fresh fetcher database.
- The fetcher as a real process (`python -m services.fetcher`), own consumer group at the topics' end.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contracts import TOPICS  # noqa: E402
from mailsync.credentials import Keyring, generate_key  # noqa: E402

KAFKA = "127.0.0.1:39092"
MONGO = "mongodb://127.0.0.1:37017/"
STACK_DIR = os.environ.get("BENCH_STACK_DIR", "/tmp/cb5")
# Thousands digit(s) of the lab's ports (41 → 41143, 41993, ...): two benches run side by side
# with their own BENCH_STACK_DIR and BENCH_PORT_BASE.
PORT_BASE = int(os.environ.get("BENCH_PORT_BASE", "41"))
PORTS = {
    "IMAP_PORT": PORT_BASE * 1000 + 143,
    "IMAPS_PORT": PORT_BASE * 1000 + 993,
    "LMTP_PORT": PORT_BASE * 1000 + 24,
    "SMTP_PORT": PORT_BASE * 1000 + 25,
    "SUBMISSION_PORT": PORT_BASE * 1000 + 587,
    "SUBMISSIONS_PORT": PORT_BASE * 1000 + 465,
}
FD_LIMIT = 200_000


def raise_fd_limit(n: int = FD_LIMIT) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, n)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def limits_conf(connections: int, per_imap: int) -> str:
    """Dovecot limits for `connections` concurrent IMAP clients (all mail under one uid).

    `per_imap` clients per imap process: 1 is Dovecot's default and the only setting under which
    IDLE notifications are exact — two sessions on the same mailbox inside one process share one
    inotify watch, and one of them only learns of new mail by Dovecot's 30 s fallback check
    (measured here). Many clients per process is fine when only memory is measured.
    """
    imap_procs = connections // per_imap + 20
    return f"""# Written by bench/biglab.py for {connections} connections.
default_client_limit = {connections * 2 + 2000}
default_vsz_limit = 1G
service imap-login {{
  service_count = 0
  process_min_avail = 2
  process_limit = 16
  client_limit = {connections // 4 + 1000}
}}
service imap {{
  # default service_count = 1 (one client per process for life); 0 lets a process serve many.
  service_count = {1 if per_imap == 1 else 0}
  process_limit = {imap_procs}
  client_limit = {per_imap}
}}
service anvil {{
  client_limit = {connections * 2 + 2000}
}}
mail_max_userip_connections = 1000
"""


def lab_env() -> dict[str, str]:
    return {**os.environ, "MAILSYNC_STACK_DIR": STACK_DIR, **{k: str(v) for k, v in PORTS.items()}}


def mail_sh(*args: str, stdin: str | None = None) -> None:
    subprocess.run(
        [str(ROOT / "deploy/local/mail.sh"), *args],
        env=lab_env(),
        input=stdin.encode() if stdin is not None else None,
        check=True,
    )


def raise_inotify_instances(n: int) -> None:
    """Every imap process watches its mailbox with one inotify instance, all under the mail uid
    (kernel default: 128 per user); a process beyond that falls back to 30 s polling."""
    knob = Path("/proc/sys/fs/inotify/max_user_instances")
    try:
        if int(knob.read_text()) < n:
            knob.write_text(str(n))
            print(f"raised fs.inotify.max_user_instances to {n}", flush=True)
    except (OSError, ValueError) as exc:
        print(f"cannot raise fs.inotify.max_user_instances ({exc}): IDLE may lag", flush=True)


def start_lab(connections: int, per_imap: int = 1) -> Path:
    raise_fd_limit()
    if per_imap == 1:
        raise_inotify_instances(connections + 512)
    etc = Path(STACK_DIR) / "mail" / "etc" / "local.d"
    etc.mkdir(parents=True, exist_ok=True)
    conf = etc / "limits.conf"
    text = limits_conf(connections, per_imap)
    changed = not conf.exists() or conf.read_text() != text
    conf.write_text(text)
    conf.chmod(0o644)
    mail_sh("start")
    if changed:
        mail_sh("reload")
    return Path(STACK_DIR) / "mail" / "tls" / "cert.pem"


def doveadm(*args: str) -> str:
    conf = Path(STACK_DIR) / "mail" / "etc" / "dovecot.conf"
    out = subprocess.run(["doveadm", "-c", str(conf), *args], capture_output=True, text=True, check=False)
    return out.stdout


def dovecot_rss_mb() -> float:
    """Resident memory of every process of the bench lab's Dovecot (master's session)."""
    pidfile = Path(STACK_DIR) / "mail" / "run" / "dovecot.sid"
    try:
        sid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return float("nan")
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[3]) != sid:
                continue
            total += rss_kb(int(pid))
        except (OSError, ValueError, IndexError):
            continue
    return total / 1024


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Inboxes:
    tag: str
    password: str
    emails: list[str]
    keys: str = field(default_factory=lambda: f"k1:{generate_key()}")

    def inbox_id(self, i: int) -> str:
        return f"b{self.tag}-{i}"

    def records(self, security: str, folders: list[str] | None) -> list[dict[str, Any]]:
        keyring = Keyring.from_spec(self.keys)
        port = PORTS["IMAP_PORT"]
        out = []
        for i, email in enumerate(self.emails):
            key = f"bench:{self.inbox_id(i)}"
            out.append(
                {
                    "_id": key,
                    "tenant_id": "bench",
                    "inbox_id": self.inbox_id(i),
                    "owner_user_id": f"u{i}",
                    "email": email,
                    "imap": {"host": "127.0.0.1", "port": port, "security": security},
                    "smtp": {"host": "127.0.0.1", "port": PORTS["SUBMISSION_PORT"], "security": "starttls"},
                    "imap_auth": {
                        "kind": "password",
                        "username": email,
                        "password": keyring.encrypt(self.password, f"{key}:imap_auth.password").model_dump(),
                    },
                    "sync": {"folders": folders, "backfill_days": None},
                    "status": "connecting",
                    "created_at": datetime.now(UTC),
                }
            )
        return out


def make_users(n: int) -> Inboxes:
    tag = uuid.uuid4().hex[:6]
    emails = [f"b{tag}-{i}@mailsync.test" for i in range(n)]
    password = f"pw-{tag}"
    t = time.perf_counter()
    mail_sh("addusers", password, stdin="\n".join(emails) + "\n")
    print(f"{n} lab users created in {time.perf_counter() - t:.1f}s", flush=True)
    return Inboxes(tag, password, emails)


def remove_users(inboxes: Inboxes) -> None:
    """Drop the bench users and their mail from the bench lab (it is the bench's own)."""
    users = Path(STACK_DIR) / "mail" / "etc" / "users"
    vmail = Path(STACK_DIR) / "mail" / "vmail" / "mailsync.test"
    prefix = f"b{inboxes.tag}-"
    try:
        lines = users.read_text().splitlines()
        keep = [ln for ln in lines if not ln.startswith(prefix)]
        tmp = users.with_suffix(".bench")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.chown(tmp, 0, users.stat().st_gid)
        tmp.chmod(0o640)
        tmp.replace(users)
    except OSError:
        pass
    doveadm("kick", f"{prefix}*")
    if vmail.is_dir():
        subprocess.run(
            f"find {vmail} -maxdepth 1 -name '{prefix}*' -exec rm -rf {{}} +", shell=True, check=False
        )


async def skip_history(group: str) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, group_id=group, enable_auto_commit=False)
    meta = AIOKafkaProducer(bootstrap_servers=KAFKA)
    await asyncio.gather(consumer.start(), meta.start())
    try:
        parts = [TopicPartition(t.name, p) for t in TOPICS for p in sorted(await meta.partitions_for(t.name))]
        ends = await consumer.end_offsets(parts)
        consumer.assign(parts)
        await consumer.commit(dict(ends))
    finally:
        await asyncio.gather(consumer.stop(), meta.stop())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Fetcher:
    proc: subprocess.Popen[bytes]
    database: str
    port: int
    log: Path

    def rss_mb(self) -> float:
        return rss_kb(self.proc.pid) / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def start_fetcher(inboxes: Inboxes, ca_file: Path, **env: str) -> Fetcher:
    run = uuid.uuid4().hex[:8]
    prefix = f"bench-{run}"
    await skip_history(f"{prefix}.fetcher")
    port = free_port()
    database = f"bench_fetcher_{run}"
    log = Path(f"/tmp/bench-fetcher-{run}.log")
    full_env = {
        **os.environ,
        "MAILSYNC_KAFKA_BOOTSTRAP_SERVERS": KAFKA,
        "MAILSYNC_MONGO_URI": MONGO,
        "MAILSYNC_MONGO_DATABASE": database,
        "MAILSYNC_KAFKA_CONSUMER_GROUP_PREFIX": prefix,
        "MAILSYNC_HTTP_PORT": str(port),
        "MAILSYNC_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        "MAILSYNC_CREDENTIALS_KEYS": inboxes.keys,
        "MAILSYNC_FETCHER_TLS_CA_FILE": str(ca_file),
        "MAILSYNC_FETCHER_SYNC_BACKOFF_CAP_SECONDS": "15",
        **env,
    }
    proc = _spawn(full_env, log)
    print(f"fetcher pid {proc.pid}, log {log}, database {database}", flush=True)
    return Fetcher(proc, database, port, log)


def _spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    wrapper = os.environ.get("BENCH_FETCHER_WRAPPER")  # e.g. a script that patches in timing probes
    cmd = [sys.executable, *(wrapper.split() if wrapper else ["-m", "services.fetcher"])]
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
