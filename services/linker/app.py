"""Linker service wiring: CRM records in → directory; message linking arrives with its own issue."""

from __future__ import annotations

from mailsync.service import Runtime

from .directory import Directory
from .settings import LinkerSettings


def setup(rt: Runtime) -> None:
    settings = rt.settings
    assert isinstance(settings, LinkerSettings)
    directory = Directory(rt.db, strip_plus=settings.linker_strip_plus_addresses)
    rt.startup_hooks.append(directory.ensure_indexes)
    rt.subscribe("crm.records.v1", directory.apply)
