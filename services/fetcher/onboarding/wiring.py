"""Builds onboarding from the fetcher's settings and registers the admin API on the runtime."""

from __future__ import annotations

import os

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from mailsync.credentials import CredentialKeyError, Keyring
from mailsync.service import Runtime
from services.fetcher.registry import INBOXES
from services.fetcher.settings import FetcherSettings

from .api import AdminApi
from .autodiscovery import Discoverer, DiscoveryOptions
from .hosts import HostResolver, parse_allow_list
from .inboxes import Onboarding, check_documents, verify_keys
from .probe import ProbeOptions


def resolver_from(settings: FetcherSettings) -> HostResolver:
    return HostResolver(
        parse_allow_list(settings.fetcher_allowed_networks),
        timeout=settings.fetcher_discovery_step_timeout_seconds,
        nameservers=settings.fetcher_dns_nameservers or None,
        port=settings.fetcher_dns_port,
    )


def build_onboarding(rt: Runtime, settings: FetcherSettings, keyring: Keyring) -> Onboarding:
    resolver = resolver_from(settings)
    probe = ProbeOptions(
        resolver=resolver,
        connect_timeout=settings.fetcher_connect_timeout_seconds,
        read_timeout=settings.fetcher_read_timeout_seconds,
        greeting_timeout=settings.fetcher_greeting_timeout_seconds,
        ca_file=settings.fetcher_tls_ca_file,
        smtp_allow_plain=settings.fetcher_smtp_allow_plain,
    )
    discoverer = Discoverer(
        DiscoveryOptions(
            resolver=resolver,
            step_timeout=settings.fetcher_discovery_step_timeout_seconds,
            autoconfig_schemes=tuple(settings.fetcher_autoconfig_schemes),
            autoconfig_port=settings.fetcher_autoconfig_port,
            ca_file=settings.fetcher_tls_ca_file,
        )
    )
    return Onboarding(rt.db, rt.publisher, rt.source, keyring, probe, discoverer, settings.tenant_default)


def install(rt: Runtime) -> Onboarding:
    settings = rt.settings if isinstance(rt.settings, FetcherSettings) else FetcherSettings()
    try:
        keyring = Keyring.from_env(dict(os.environ))
    except CredentialKeyError as exc:
        rt.log.error("cannot start: %s", exc)
        raise SystemExit(f"fetcher: {exc}") from None
    # Before serving anything: do the keys open what is stored? (wrong key → refuse to start)
    checked = False
    client: MongoClient[dict[str, object]] = MongoClient(
        settings.mongo_uri.get_secret_value(), serverSelectionTimeoutMS=5000, tz_aware=True
    )
    try:
        docs = list(client[settings.mongo_database][INBOXES].find({}).limit(50))
        checked = True
    except PyMongoError:
        docs = []  # database not reachable yet: checked again once the service runs
    finally:
        client.close()
    try:
        check_documents(docs, keyring)
    except CredentialKeyError as exc:
        rt.log.error("cannot start: %s", exc)
        raise SystemExit(f"fetcher: {exc}") from None
    onboarding = build_onboarding(rt, settings, keyring)
    rt.http_routes.extend(AdminApi(onboarding).routes())

    async def _check_keys() -> None:
        try:
            await verify_keys(rt.db, keyring)
        except CredentialKeyError as exc:
            rt.log.error("cannot start: %s", exc)
            raise SystemExit(f"fetcher: {exc}") from None

    if not checked:
        rt.startup_hooks.append(_check_keys)
    return onboarding
