"""Settings every service shares. Each service extends `ServiceSettings` in its own `settings.py`.

All values come from environment variables prefixed `MAILSYNC_` (12-factor); secrets are `SecretStr`
so they never show in a repr, a log line or an exception.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAILSYNC_", extra="ignore")

    service_name: str = Field(default="mailsync", description="Used in logs, event `source`, client ids.")
    tenant_default: str = Field(default="default", description="Tenant for single-tenant deployments.")

    # Kafka
    kafka_bootstrap_servers: str = Field(default="127.0.0.1:39092", description="Comma-separated host:port.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_compression_type: Literal["gzip"] | None = Field(
        default=None, description="None is fastest on a LAN; gzip saves bandwidth across zones."
    )
    kafka_consumer_group_prefix: str = Field(default="mailsync", description="Group id = prefix.service.")
    kafka_max_batch_bytes: int = Field(
        default=512 * 1024,
        ge=16 * 1024,
        le=1024 * 1024,
        description="Producer record batch size per partition; at most the brokers' message.max.bytes "
        "(1 MiB by default).",
    )

    # MongoDB (FerretDB locally, MongoDB replica set in production)
    mongo_uri: SecretStr = Field(default=SecretStr("mongodb://127.0.0.1:37017/"))
    mongo_database: str = "mailsync"

    # Health and admin HTTP
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    tracing_enabled: bool = Field(
        default=False,
        description="OpenTelemetry spans for every publish and consume, trace context in Kafka headers; "
        "exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set and the OTLP exporter is installed.",
    )
    tracing_file: str | None = Field(
        default=None,
        description="For tests and debugging: also write every finished span as one JSON line to this file "
        "(turns tracing on).",
    )
    shutdown_timeout_seconds: float = Field(default=20.0, gt=0)
    gc_gen0_threshold: int = Field(
        default=50_000,
        ge=0,
        description="Allocations between the cyclic garbage collector's youngest-generation runs (Python's "
        "default 700 spent ~15% of the fetcher's CPU in an initial sync, bench/sync.py); 0 keeps Python's "
        "default. Reference counting frees almost everything here, so fewer runs cost little memory.",
    )
    imap_connections_per_account: int | None = Field(
        default=None,
        ge=2,
        description="IMAP connections the fetcher and the sender together may hold per mail account "
        "(split in mailsync/connection_budget.py); None: the provider's limit less a third for the "
        "owner's own clients.",
    )

    def consumer_group(self) -> str:
        return f"{self.kafka_consumer_group_prefix}.{self.service_name}"
