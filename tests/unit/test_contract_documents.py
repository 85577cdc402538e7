"""The committed JSON Schemas and AsyncAPI document must match the models."""

from __future__ import annotations

import json

from contracts import EVENT_TYPES, generate


def test_committed_documents_match_the_models() -> None:
    problems = generate.drift()
    assert not problems, f"run `make contracts`: {problems}"


def test_every_event_has_a_schema_file_and_the_asyncapi_lists_every_topic() -> None:
    names = {p.stem for p in generate.SCHEMA_DIR.glob("*.json")}
    assert names == set(EVENT_TYPES)
    doc = json.loads(generate.ASYNCAPI_FILE.read_text())
    assert doc["asyncapi"].startswith("3.")
    from contracts import TOPICS

    assert set(doc["channels"]) == {t.name for t in TOPICS}


def test_drift_is_detected(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    schema_dir = tmp_path / "schemas"
    schema_dir.mkdir()
    monkeypatch.setattr(generate, "SCHEMA_DIR", schema_dir)
    monkeypatch.setattr(generate, "ASYNCAPI_FILE", tmp_path / "asyncapi.json")
    monkeypatch.setattr(generate, "HERE", tmp_path)
    generate.write()
    assert generate.drift() == []
    target = schema_dir / "crm.record.upserted.json"
    target.write_text(target.read_text().replace("record_id", "recordId"))
    (schema_dir / "stale.event.json").write_text("{}")
    problems = generate.drift()
    assert any("crm.record.upserted" in p for p in problems)
    assert any("stale.event" in p for p in problems)
