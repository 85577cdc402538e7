"""Which unknown participants are worth proposing as contacts: pure decisions, no I/O."""

from __future__ import annotations

import re
from typing import Literal

from contracts.links import LinkRole

Policy = Literal["off", "sent_only", "sent_and_received"]

# Role, robot and group mailboxes: nobody to create a contact for.
_UNWANTED_LOCAL = re.compile(
    r"^(no[-_.]?reply|do[-_.]?not[-_.]?reply|mailer[-_.]?daemon|postmaster|bounces?|notifications?|notify"
    r"|alerts?|support|info|sales|help|helpdesk|admin|administrator|billing|invoices?|accounts?|newsletters?"
    r"|news|marketing|team|hello|contact|office|jobs|careers|hr|noc|abuse|root|webmaster|hostmaster"
    r"|security|privacy|feedback|updates?|digest|system|automated|daemon|calendar|reminders?|service"
    r"|all|everyone|staff|list|lists|listserv|majordomo|announce|press|orders?|receipts?)$"
    r"|^(no[-_.]?reply|noreply|bounces?|notifications?)[-_.+]"
    r"|[-_.](no[-_.]?reply|bounces?|notifications?)$"
    r"|(^owner-|-owner$|-request$|-bounces$|-noreply$|-group$|^group[-_.])",
    re.IGNORECASE,
)
_GROUP_DOMAINS = re.compile(r"(^|\.)(googlegroups\.com|groups\.io|lists\.|list\.)", re.IGNORECASE)


def is_unwanted(email: str) -> bool:
    """No-reply, mailer-daemon, role (support@, info@ …) and group/list addresses."""
    local, _, domain = email.rpartition("@")
    base = local.split("+", 1)[0]
    return bool(_UNWANTED_LOCAL.search(base)) or bool(_GROUP_DOMAINS.search(domain))


def eligible(policy: Policy, direction: str, roles: list[LinkRole]) -> bool:
    """Does the inbox's policy allow proposing a participant seen in these roles of this message?"""
    if policy == "off":
        return False
    if direction == "outbound":
        return any(r in ("recipient", "cc", "bcc") for r in roles)
    return policy == "sent_and_received"
