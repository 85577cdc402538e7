"""Seeds the local demo: a few CRM contacts and one email into the demo inbox (which `run.sh` onboards).

Idempotent: every run upserts the same records and publishes events with the same deterministic ids.
"""

from __future__ import annotations

import asyncio
import os
import smtplib
from email.message import EmailMessage

from contracts.crm import CrmRecordUpserted, CrmRecordUpsertedData
from mailsync.kafka import EventPublisher, make_broker
from mailsync.settings import ServiceSettings

TENANT = "demo"
INBOX_ID = "demo-inbox"
DOMAIN = os.environ.get("MAIL_DOMAIN", "mailsync.test")
DEMO_EMAIL = f"demo@{DOMAIN}"


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


CONTACTS = [
    ("c-ada", "contact", "Ada Lovelace", "ada@analytical.example", ["ada.l@engines.example"]),
    ("c-grace", "contact", "Grace Hopper", "grace@cobol.example", []),
    ("l-alan", "lead", "Alan Turing", "alan@bletchley.example", ["turing@enigma.example"]),
]


async def seed() -> None:
    settings = ServiceSettings(service_name="demo")
    broker = make_broker(settings)
    await broker.start()
    try:
        publisher = EventPublisher(broker)
        events = [
            CrmRecordUpserted.build(
                data=CrmRecordUpsertedData(
                    record_id=rid,
                    record_type=kind,  # type: ignore[arg-type]
                    revision=1,
                    owner_user_id="demo-user",
                    name=name,
                    primary_email=primary,
                    secondary_emails=secondary,
                ),
                tenant_id=TENANT,
                source="/mailsync/demo",
                subject=rid,
            )
            for rid, kind, name, primary, secondary in CONTACTS
        ]
        await publisher.publish_all(events)
    finally:
        await broker.stop()


def send_welcome() -> None:
    msg = EmailMessage()
    msg["From"] = "Ada Lovelace <ada@analytical.example>"
    msg["To"] = DEMO_EMAIL
    msg["Subject"] = "Welcome to the mailsync demo"
    msg["Message-ID"] = "<demo-welcome@analytical.example>"
    msg.set_content("This message was delivered through the local Postfix into Dovecot.\n")
    with smtplib.SMTP("127.0.0.1", _port("SMTP_PORT", 31025), timeout=10) as smtp:
        smtp.send_message(msg)


if __name__ == "__main__":
    asyncio.run(seed())
    send_welcome()
    print(f"demo: inbox {DEMO_EMAIL} (tenant {TENANT}), {len(CONTACTS)} CRM contacts, one welcome email")
