"""Sent-copy decisions: whether to append at all, and which folder is the Sent folder (no I/O).

`auto` appends unless the provider files its own copy of mail sent through its SMTP (Gmail, Office 365 /
Outlook.com, iCloud): appending there would duplicate it. The folder is found by the `\\Sent` special-use
attribute (RFC 6154), then by common (localized) names, else created.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from mailsync.imap_names import decode_mailbox

# Presets whose SMTP servers file a copy themselves.
SELF_FILING_PROVIDERS = frozenset({"gmail", "google", "office365", "outlook", "icloud"})

# Common Sent folder names, tried in this order when no folder carries \Sent.
SENT_NAMES = (
    "Sent",
    "Sent Items",
    "Sent Messages",
    "Sent Mail",
    "INBOX.Sent",
    "INBOX/Sent",
    "INBOX.Sent Items",
    "INBOX.Sent Messages",
    "[Gmail]/Sent Mail",
    "Gesendet",
    "Gesendete Objekte",
    "Gesendete Elemente",
    "Envoyés",
    "Éléments envoyés",
    "Enviados",
    "Elementos enviados",
    "Inviata",
    "Posta inviata",
    "Verzonden",
    "Verzonden items",
    "Skickat",
    "Sendt",
    "Wysłane",
    "Отправленные",
)
CREATE_NAME = "Sent"

Action = Literal["append", "provider_filed", "never"]


def copy_action(policy: str, provider: str | None, provider_files_sent_copy: bool) -> Action:
    if policy == "never":
        return "never"
    if policy == "always":
        return "append"
    files_itself = provider_files_sent_copy or (provider or "").lower() in SELF_FILING_PROVIDERS
    return "provider_filed" if files_itself else "append"


@dataclass(frozen=True)
class ListedFolder:
    name: str
    attributes: frozenset[str]
    delimiter: str | None


_LIST_LINE = re.compile(
    r'^\((?P<attrs>[^)]*)\)\s+(?P<delim>NIL|"(?:[^"\\]|\\.)*")\s+(?P<name>.+)$', re.IGNORECASE
)


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


# Kept under the sender's name for its callers.
decode_mutf7 = decode_mailbox


def parse_list_line(line: str) -> ListedFolder | None:
    """One `LIST` response line without the leading `* LIST ` (as imaplib returns it)."""
    m = _LIST_LINE.match(line.strip())
    if not m:
        return None
    attrs = frozenset(a.lower() for a in m.group("attrs").split())
    delim = None if m.group("delim").upper() == "NIL" else _unquote(m.group("delim"))
    return ListedFolder(_unquote(m.group("name")), attrs, delim)


def choose_sent_folder(folders: list[ListedFolder]) -> str | None:
    """The wire name (as listed) of the Sent folder, or None when one must be created."""
    usable = [f for f in folders if "\\noselect" not in f.attributes and "\\nonexistent" not in f.attributes]
    for f in usable:
        if "\\sent" in f.attributes:
            return f.name
    by_name = {decode_mutf7(f.name).casefold(): f.name for f in usable}
    for candidate in SENT_NAMES:
        found = by_name.get(candidate.casefold())
        if found is not None:
            return found
    return None


def quote(name: str) -> str:
    """An IMAP quoted string (folder names, search values)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
