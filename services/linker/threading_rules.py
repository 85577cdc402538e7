"""Thread ids: pure decisions, no I/O.

Gmail's X-GM-THRID where present; otherwise the root of the conversation: the first Message-ID of
References, else the parent's thread (when the parent is known) or the parent's Message-ID, else the
message itself. Out of order arrival is repaired by the caller: when a message arrives whose own
Message-ID was used as a thread id by earlier children, those children move to its thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def clean_id(mid: str) -> str:
    return mid.strip().strip("<>").strip()


def thread_id(
    *,
    gmail_thread_id: str | None,
    message_id: str | None,
    message_key: str,
    in_reply_to: Sequence[str],
    references: Sequence[str],
    known_threads: Mapping[str, str],
) -> str:
    """The thread a message belongs to; `known_threads` maps Message-IDs already seen → their thread."""
    if gmail_thread_id:
        return f"gm:{gmail_thread_id}"
    refs = [clean_id(r) for r in references if clean_id(r)]
    parents = [clean_id(r) for r in in_reply_to if clean_id(r)]
    # The nearest known ancestor's thread wins: it already reflects its own root.
    for mid in [*parents, *reversed(refs)]:
        if mid in known_threads:
            return known_threads[mid]
    if refs:
        return f"mid:{refs[0]}"
    if parents:
        return f"mid:{parents[0]}"
    if message_id:
        return f"mid:{clean_id(message_id)}"
    return f"key:{message_key}"


def self_thread(message_id: str | None) -> str | None:
    """The thread id children would have used for this message before it arrived."""
    return f"mid:{clean_id(message_id)}" if message_id and clean_id(message_id) else None
