"""Generate the published contract documents from the models.

- `contracts/schemas/<event type>.json`: JSON Schema (draft 2020-12) of each event's envelope;
- `contracts/asyncapi.json`: AsyncAPI 3.0 document of every topic and its messages, produced by
  FastStream's generator from a documentation-only broker built from the topic registry.

`python -m contracts.generate` rewrites them; `--check` exits 1 when the files drifted from the
models (the test suite runs the same check).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Union

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from .topics import TOPICS

HERE = Path(__file__).parent
SCHEMA_DIR = HERE / "schemas"
ASYNCAPI_FILE = HERE / "asyncapi.json"
VERSION = "1"


def _dump(doc: Any) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def json_schemas() -> dict[str, str]:
    """File name → JSON Schema text, one per event type."""
    out: dict[str, str] = {}
    for topic in TOPICS:
        for cls in topic.events:
            schema = cls.model_json_schema(by_alias=True, mode="serialization")
            schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
            schema["$id"] = f"urn:mailsync:event:{cls.event_type}:v{cls.current_schema_version}"
            schema["x-topic"] = topic.name
            schema["x-kafka-key"] = topic.key
            schema["x-kind"] = cls.kind
            out[f"{cls.event_type}.json"] = _dump(schema)
    return out


def asyncapi() -> str:
    broker = KafkaBroker("127.0.0.1:39092", description="The local stack of `make run`.")
    for topic in TOPICS:
        payload: Any = topic.events[0] if len(topic.events) == 1 else Union[topic.events]  # noqa: UP007
        broker.publisher(
            topic.name,
            title=topic.name,
            description=f"{topic.description} Kafka key: `{topic.key}`.",
            schema=payload,
        )
    spec = AsyncAPI(
        broker,
        title="mailsync",
        version=VERSION,
        description="Events and commands of mailsync: IMAP sync, CRM linking, sending, inbox cleanup.",
        license={"name": "GPL-3.0-or-later"},
        schema_version="3.0.0",
    )
    doc = json.loads(spec.to_specification().to_json())
    return _dump(doc)


def expected_files() -> dict[Path, str]:
    files = {SCHEMA_DIR / name: text for name, text in json_schemas().items()}
    files[ASYNCAPI_FILE] = asyncapi()
    return files


def drift() -> list[str]:
    """Paths that are missing, stale, or no longer generated."""
    files = expected_files()
    problems = [
        str(p.relative_to(HERE.parent)) for p, t in files.items() if not p.exists() or p.read_text() != t
    ]
    if SCHEMA_DIR.exists():
        problems += [
            f"{p.relative_to(HERE.parent)} (no longer generated)"
            for p in SCHEMA_DIR.glob("*.json")
            if p not in files
        ]
    return problems


def write() -> None:
    SCHEMA_DIR.mkdir(exist_ok=True)
    files = expected_files()
    for path in SCHEMA_DIR.glob("*.json"):
        if path not in files:
            path.unlink()
    for path, text in files.items():
        path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contracts.generate")
    parser.add_argument("--check", action="store_true", help="fail if the files differ from the models")
    args = parser.parse_args(argv)
    if args.check:
        problems = drift()
        for p in problems:
            print(f"contracts drifted: {p} (run `make contracts`)", file=sys.stderr)
        return 1 if problems else 0
    write()
    print(f"wrote {len(expected_files())} files under {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
