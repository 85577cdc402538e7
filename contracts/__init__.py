"""mailsync event contracts: pydantic v2 models of every event and command, and the topic registry."""

from .catalog import EVENT_TYPES, parse_event
from .envelope import Envelope, Payload, event_id
from .topics import TOPICS, TOPICS_BY_NAME, Topic, topic_of

__all__ = [
    "EVENT_TYPES",
    "TOPICS",
    "TOPICS_BY_NAME",
    "Envelope",
    "Payload",
    "Topic",
    "event_id",
    "parse_event",
    "topic_of",
]
