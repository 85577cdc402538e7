"""Pure pieces of operations: topic config drift, metric labels and lag arithmetic."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition

from contracts import TOPICS_BY_NAME
from mailsync import metrics
from mailsync.kafka import config_drift
from mailsync.service import _event_type


def test_config_drift_names_only_what_differs() -> None:
    wanted = {"cleanup.policy": "compact", "retention.ms": "-1"}
    assert config_drift(wanted, {"cleanup.policy": "compact", "retention.ms": "-1", "x": "1"}) == {}
    assert config_drift(wanted, {"cleanup.policy": "delete", "retention.ms": "-1"}) == {
        "cleanup.policy": "compact"
    }
    assert config_drift(wanted, {}) == wanted


def test_event_type_label_is_bounded_to_registry_types() -> None:
    topic = TOPICS_BY_NAME["crm.records.v1"]
    assert _event_type(topic, ["crm.record.upserted"], []) == "crm.record.upserted"
    assert _event_type(topic, [], [("ce_type", b"crm.record.deleted")]) == "crm.record.deleted"
    assert _event_type(topic, [], [("ce_type", b"attacker.chosen.label")]) == "unknown"
    assert _event_type(topic, [], None) == "unknown"


class _Consumer:
    def __init__(self, hw: int | None) -> None:
        self.hw = hw

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.hw


def _lag(topic: str, partition: int) -> Any:
    return metrics.REGISTRY.get_sample_value(
        "mailsync_consumer_lag", {"topic": topic, "partition": str(partition)}
    )


def test_consumer_lag_is_high_watermark_minus_next_offset() -> None:
    metrics.observe_lag(_Consumer(100), "t.lag", 0, 89)
    assert _lag("t.lag", 0) == 10
    metrics.observe_lag(_Consumer(100), "t.lag", 0, 99)
    assert _lag("t.lag", 0) == 0
    metrics.observe_lag(_Consumer(None), "t.lag", 1, 5)  # no watermark known yet: no sample
    assert _lag("t.lag", 1) is None
    metrics.observe_lag(object(), "t.lag", 2, 5)  # a test consumer without watermarks
    assert _lag("t.lag", 2) is None


def test_exposition_is_prometheus_text() -> None:
    metrics.observe_produced("t.exp", "x.y")
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    assert b'mailsync_events_produced_total{topic="t.exp",type="x.y"} 1.0' in body


def test_tracing_is_off_by_default_and_exports_over_otlp_when_configured(monkeypatch: Any) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from mailsync import tracing
    from mailsync.settings import ServiceSettings

    assert tracing.tracer_provider(ServiceSettings()) is None
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert tracing._otlp_exporter() is None  # no endpoint: spans only carry the context on
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    provider = tracing.tracer_provider(ServiceSettings(service_name="linker", tracing_enabled=True))
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "mailsync-linker"
    exporters = [p.span_exporter for p in provider._active_span_processor._span_processors]  # type: ignore[attr-defined]
    assert any(isinstance(e, OTLPSpanExporter) for e in exporters)
    provider.shutdown()
