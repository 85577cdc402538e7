"""Coverage-guided fuzzing (atheris/libFuzzer) of the IMAP response parser and the MIME-to-event path.

Run as its own process (libFuzzer ends the process when done):

    .venv/bin/python -m tests.fuzz_atheris -max_total_time=10 -timeout=10 SEED_DIR

The first input byte picks the target: `I` the IMAP framer/parser, anything else the message path
(headers → `message received` event → stored document, and the body analysis). An exception other
than the parser's ProtocolError, or one input running longer than `-timeout`, is a finding: libFuzzer
prints it, saves the input as `crash-*`/`timeout-*` and exits non-zero.
"""

from __future__ import annotations

import sys

import atheris

# Only our code and the stdlib `email` package are instrumented (all of pydantic would take a minute).
with atheris.instrument_imports(include=["services", "email"]):
    from services.fetcher.imap.protocol import (
        ProtocolError,
        ResponseFramer,
        Untagged,
        fetch_items,
        parse_response,
    )
    from services.fetcher.sync.bodies import analyze
    from services.fetcher.sync.messages import (
        FetchedMessage,
        FolderContext,
        message_document,
        message_key,
        received_event,
    )

import bson

CTX = FolderContext("t", "i", "INBOX", 1, "/fuzz", frozenset({"me@mailsync.test"}))


def one_input(data: bytes) -> None:
    if data[:1] == b"I":
        try:
            for raw in ResponseFramer(max_literal=1 << 16, max_line=1 << 14).feed(data[1:]):
                resp = parse_response(raw)
                if isinstance(resp, Untagged) and resp.kind == "FETCH":
                    fetch_items(resp)
        except ProtocolError:
            pass
        return
    end = data.find(b"\r\n\r\n")
    items: dict[str, object] = {
        "UID": 1,
        "FLAGS": [],
        "RFC822.SIZE": len(data),
        "BODY[HEADER]": data[: end + 4] if end >= 0 else data,
    }
    msg = FetchedMessage(items)  # type: ignore[arg-type]
    event = received_event(CTX, msg, history=False, key=message_key(msg))
    event.model_dump_json()
    bson.encode(message_document(CTX, event, 0))
    analyze(data)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
