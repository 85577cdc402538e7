"""Soak (issue #9): steady traffic through all four services for `SOAK_SECONDS` (600), RSS sampled.

    make soak             # or: .venv/bin/python bench/soak.py
    SOAK_SECONDS=300 make soak

Runs on a private stack instance (`SOAK_STACK_DIR`, default `/tmp/cs`, ports from `SOAK_PORT_BASE`,
default 25000; see `bench/chaoslib.py`), wiped first, the services under `deploy/local/supervise.py`.
Traffic, all the time: new mail delivered through Postfix's MTA port into two synced inboxes
(`SOAK_MAIL_RATE`, 2/s; delivered over LMTP, picked up by the fetcher over IDLE), CRM records that
match the senders (one new record every 5 s, so links and relinks happen), and `send requested`
commands (`SOAK_SEND_RATE`, 0.5/s) with Sent copies. The RSS of every service process is read from
/proc every `SOAK_SAMPLE` (5) seconds; after the warm-up (`SOAK_WARMUP`, 120 s) a least-squares line is
fitted per service and its slope reported in MB/min.
Ends with `RESULT seconds=… max_slope_mb_per_min=… <service>_slope_mb_per_min=… …`.
"""

from __future__ import annotations

import asyncio
import os
import smtplib
import time
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from chaoslib import (
    DOMAIN,
    SERVICES,
    TENANT,
    Instance,
    Producer,
    customer,
    imap_append,
    inbox_doc,
    log,
    new_keys,
    record_event,
    rss_mb,
    run_main,
    run_tag,
    seed_message,
    send_command,
)
from pymongo import AsyncMongoClient
from supervise import Supervisor

SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
WARMUP = float(os.environ.get("SOAK_WARMUP", "120"))
SAMPLE = float(os.environ.get("SOAK_SAMPLE", "5"))
MAIL_RATE = float(os.environ.get("SOAK_MAIL_RATE", "2"))
SEND_RATE = float(os.environ.get("SOAK_SEND_RATE", "0.5"))
CUSTOMERS = 1000


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    sxy = sum((t - mx) * (v - my) for t, v in points)
    return 60.0 * sxy / sxx if sxx else 0.0


class Soak:
    def __init__(self) -> None:
        self.inst = Instance(
            stack_dir=__import__("pathlib").Path(os.environ.get("SOAK_STACK_DIR", "/tmp/cs")),
            base=int(os.environ.get("SOAK_PORT_BASE", "25000")),
        )
        self.tag = run_tag()
        self.inboxes = [(f"soak-in{k}", f"in{k}@{DOMAIN}", f"pw-in{k}-{self.tag}") for k in range(2)]
        self.rcpts = [(f"rcpt{k}@{DOMAIN}", f"pw-rcpt{k}-{self.tag}") for k in range(2)]
        self.samples: dict[str, list[tuple[float, float]]] = {s: [] for s in SERVICES}
        self.mails = self.sends = self.records = 0
        self.mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(self.inst.mongo_uri, tz_aware=True)

    async def setup(self) -> tuple[Producer, Supervisor]:
        log(f"stack instance {self.inst.stack_dir} (ports {self.inst.base}+), wiping it first")
        self.inst.lock()
        await asyncio.to_thread(self.inst.prepare, fresh=True)
        for _, email, pw in self.inboxes:
            await asyncio.to_thread(self.inst.adduser, email, pw)
            history = [seed_message(i, self.tag, email, CUSTOMERS) for i in range(200)]
            await asyncio.to_thread(imap_append, self.inst.ports["IMAP_PORT"], email, pw, history)
        for email, pw in self.rcpts:
            await asyncio.to_thread(self.inst.adduser, email, pw)
        keys, keyring = new_keys()
        await self.mongo["mailsync"]["inboxes"].insert_many(
            [inbox_doc(iid, email, pw, keyring, self.inst) for iid, email, pw in self.inboxes]
        )
        producer = Producer(self.inst.bootstrap)
        await producer.start()
        await producer.publish(
            [record_event(f"rec-{c}", customer(c)) for c in range(0, CUSTOMERS, 4)]
            + [record_event(f"rec-r{k}", e) for k, (e, _) in enumerate(self.rcpts)]
        )
        children = {n: self.inst.service_env(n, keys) for n in SERVICES}
        sup = Supervisor(children, self.inst.stack_dir / "services-soak")
        await sup.start_all()
        log("all four services ready")
        return producer, sup

    def deliver(self, smtp: smtplib.SMTP, i: int) -> None:
        _, to, _ = self.inboxes[i % len(self.inboxes)]
        msg = EmailMessage()
        c = (i * 13) % CUSTOMERS
        msg["From"] = f"Contact {c} <{customer(c)}>"
        msg["To"] = to
        msg["Subject"] = f"soak mail {i}"
        msg["Date"] = formatdate()
        msg["Message-ID"] = f"<soak-{self.tag}-{i}@customers.example>"
        msg.set_content("Steady traffic for the soak test.\n" * 10)
        smtp.send_message(msg)

    async def mail_stream(self, t_end: float) -> None:
        i = 0
        smtp: smtplib.SMTP | None = None
        while time.monotonic() < t_end:
            try:
                if smtp is None:
                    smtp = await asyncio.to_thread(
                        smtplib.SMTP, "127.0.0.1", self.inst.ports["SMTP_PORT"], None, 30
                    )
                await asyncio.to_thread(self.deliver, smtp, i)
                i += 1
                self.mails += 1
            except (OSError, smtplib.SMTPException) as exc:
                log(f"delivery failed: {exc!r}")
                smtp = None
            await asyncio.sleep(1 / MAIL_RATE)
        if smtp is not None:
            await asyncio.to_thread(smtp.quit)

    async def crm_and_sends(self, producer: Producer, t_end: float) -> None:
        i = 0
        next_record = time.monotonic()
        while time.monotonic() < t_end:
            iid, email, _ = self.inboxes[i % len(self.inboxes)]
            to = self.rcpts[i % len(self.rcpts)][0]
            await producer.publish([send_command(f"soak-{self.tag}-{i}", iid, email, to)])
            self.sends += 1
            i += 1
            if time.monotonic() >= next_record:
                c = 1 + 4 * (self.records % (CUSTOMERS // 4))  # a customer with mail but no record yet
                await producer.publish([record_event(f"rec-{c}", customer(c))])
                self.records += 1
                next_record += 5
            await asyncio.sleep(1 / SEND_RATE)

    async def sampler(self, sup: Supervisor, t0: float, t_end: float) -> None:
        while time.monotonic() < t_end:
            t = time.monotonic() - t0
            for name in SERVICES:
                pid = sup.pid(name)
                mb = rss_mb(pid) if pid else None
                if mb is not None:
                    self.samples[name].append((t, mb))
            await asyncio.sleep(SAMPLE)


async def main() -> None:
    soak = Soak()
    log(
        f"soak: {SECONDS:.0f}s, mail {MAIL_RATE}/s, sends {SEND_RATE}/s, one CRM record per 5 s, "
        f"RSS every {SAMPLE:.0f}s, warm-up {WARMUP:.0f}s"
    )
    producer, sup = await soak.setup()
    t0 = time.monotonic()
    t_end = t0 + SECONDS
    try:
        await asyncio.gather(
            soak.mail_stream(t_end), soak.crm_and_sends(producer, t_end), soak.sampler(sup, t0, t_end)
        )
        db = soak.mongo["mailsync"]
        stored = await db["messages"].count_documents({"tenant_id": TENANT})
        linked = await db["link_messages"].count_documents(
            {"tenant_id": TENANT, "record_ids.0": {"$exists": True}}
        )
        sent = await db["send_requests"].count_documents({})
    finally:
        await sup.stop_all()
        await producer.stop()
        await soak.mongo.close()
        if not os.environ.get("CHAOS_KEEP_STACK"):
            await asyncio.to_thread(soak.inst.down)
    print()
    print(
        f"{'service':10} {'samples':>8} {'RSS start MB':>13} {'RSS end MB':>11} {'max MB':>8} "
        f"{'slope MB/min':>13}"
    )
    slopes: dict[str, float] = {}
    for name in SERVICES:
        pts = soak.samples[name]
        after = [p for p in pts if p[0] >= WARMUP]
        slopes[name] = slope_per_min(after)
        first = after[0][1] if after else float("nan")
        last = after[-1][1] if after else float("nan")
        peak = max((v for _, v in pts), default=float("nan"))
        print(f"{name:10} {len(after):8} {first:13.1f} {last:11.1f} {peak:8.1f} {slopes[name]:13.3f}")
    restarts = sup.restarts
    print(
        f"traffic: {soak.mails} mails delivered, {soak.sends} send commands, {soak.records} new CRM records; "
        f"stored messages {stored}, linked messages {linked}, send requests {sent}; "
        f"service restarts {restarts}"
    )
    parts = " ".join(f"{n}_slope_mb_per_min={slopes[n]:.3f}" for n in SERVICES)
    print(
        f"RESULT seconds={SECONDS:.0f} warmup={WARMUP:.0f} max_slope_mb_per_min={max(slopes.values()):.3f} "
        f"{parts} mails={soak.mails} sends={soak.sends} restarts={restarts}"
    )


if __name__ == "__main__":
    run_main(main())
