"""Provider presets, loaded from `presets.json` (data, not code), and the lookups onboarding needs."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PRESETS_FILE = Path(__file__).with_name("presets.json")

AuthMethod = Literal["password", "app_password", "oauth2"]


class PresetServer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    port: int
    security: Literal["tls", "starttls", "plain"]


class PresetOAuth2(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    token_endpoint: str
    scope: str | None = None


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    domains: list[str] = Field(default_factory=list)
    mx_suffixes: list[str] = Field(default_factory=list)
    imap: PresetServer
    smtp: PresetServer
    smtp_alternatives: list[PresetServer] = Field(default_factory=list)
    username: Literal["email", "local_part"] = "email"
    auth_methods: list[AuthMethod]
    oauth2: PresetOAuth2 | None = None
    files_sent_copy: bool = False
    notes: str | None = None
    limits: dict[str, int] = Field(default_factory=dict)
    region: str | None = None


def _expand(raw: dict[str, Any]) -> list[Preset]:
    regions: dict[str, dict[str, Any]] = raw.pop("regions", None) or {}
    base = Preset.model_validate(raw)
    out = [base]
    for region, spec in regions.items():
        oauth = base.oauth2
        if oauth and spec.get("token_endpoint"):
            oauth = PresetOAuth2(token_endpoint=spec["token_endpoint"], scope=oauth.scope)
        out.append(
            base.model_copy(
                update={
                    "id": f"{base.id}-{region}",
                    "name": f"{base.name} ({region.upper()})",
                    "domains": [],
                    "mx_suffixes": spec.get("mx_suffixes", []),
                    "imap": base.imap.model_copy(update={"host": spec["imap_host"]}),
                    "smtp": base.smtp.model_copy(update={"host": spec["smtp_host"]}),
                    "smtp_alternatives": [
                        s.model_copy(update={"host": spec["smtp_host"]}) for s in base.smtp_alternatives
                    ],
                    "oauth2": oauth,
                    "region": region,
                }
            )
        )
    return out


def load(path: Path = PRESETS_FILE) -> dict[str, Preset]:
    doc = json.loads(path.read_text())
    presets: dict[str, Preset] = {}
    for raw in doc["presets"]:
        for preset in _expand(dict(raw)):
            if preset.id in presets:
                raise ValueError(f"duplicate preset id {preset.id!r} in {path}")
            presets[preset.id] = preset
    return presets


@cache
def all_presets() -> dict[str, Preset]:
    return load()


def get(preset_id: str) -> Preset | None:
    return all_presets().get(preset_id)


def by_email_domain(domain: str) -> Preset | None:
    domain = domain.lower().rstrip(".")
    for preset in all_presets().values():
        if domain in preset.domains:
            return preset
    return None


def by_mx(mx_hosts: list[str]) -> Preset | None:
    """The preset whose MX suffix matches best (longest suffix wins: `zoho.com.au` over `zoho.com`)."""
    best: tuple[int, Preset] | None = None
    for mx in mx_hosts:
        host = mx.lower().rstrip(".")
        for preset in all_presets().values():
            for suffix in preset.mx_suffixes:
                if (host == suffix or host.endswith("." + suffix)) and (
                    best is None or len(suffix) > best[0]
                ):
                    best = (len(suffix), preset)
    return best[1] if best else None
