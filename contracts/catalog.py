"""Every event type by name, and parsing raw records into the right model."""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter, ValidationError

from .envelope import Envelope
from .topics import TOPICS, TOPICS_BY_NAME, AnyEvent

EVENT_TYPES: dict[str, type[AnyEvent]] = {cls.event_type: cls for t in TOPICS for cls in t.events}


class UnknownEventType(ValueError):
    pass


@cache
def _adapter(topic_name: str | None) -> TypeAdapter[Any]:
    classes = TOPICS_BY_NAME[topic_name].events if topic_name else tuple(EVENT_TYPES.values())
    if len(classes) == 1:
        return TypeAdapter(classes[0])
    union: Any = Annotated[Union[classes], Field(discriminator="type")]  # noqa: UP007
    return TypeAdapter(union)


def parse_event(raw: bytes | str, topic: str | None = None) -> Envelope[Any]:
    """Validate a JSON record into its event model (restricted to the topic's types if given).

    Raises `pydantic.ValidationError` for bad input; callers turn that into `mailsync.input.rejected`.
    """
    event: Envelope[Any] = _adapter(topic).validate_json(raw)
    return event


__all__ = ["EVENT_TYPES", "UnknownEventType", "ValidationError", "parse_event"]
