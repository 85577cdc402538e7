"""Builds the console from the fetcher's settings and registers its routes on the runtime."""

from __future__ import annotations

from pathlib import Path

from mailsync.service import Runtime
from services.fetcher.onboarding.inboxes import Onboarding
from services.fetcher.settings import FetcherSettings

from .auth import ConsoleUser, UsersError, parse_users
from .routes import Console
from .tail import Tail


def load_users(settings: FetcherSettings) -> dict[str, ConsoleUser]:
    text = ""
    if settings.fetcher_console_users is not None:
        text += settings.fetcher_console_users.get_secret_value() + "\n"
    if settings.fetcher_console_users_file:
        try:
            text += Path(settings.fetcher_console_users_file).read_text()
        except OSError as exc:
            raise UsersError(f"cannot read MAILSYNC_FETCHER_CONSOLE_USERS_FILE: {exc.strerror}") from None
    return parse_users(text)


def install(rt: Runtime, onboarding: Onboarding) -> Console | None:
    settings = rt.settings if isinstance(rt.settings, FetcherSettings) else FetcherSettings()
    if not settings.fetcher_console_enabled:
        return None
    try:
        users = load_users(settings)
    except UsersError as exc:
        rt.log.error("cannot start: %s", exc)
        raise SystemExit(f"fetcher: {exc}") from None
    if settings.fetcher_console_auth and not users:
        rt.log.warning("console: no users configured (MAILSYNC_FETCHER_CONSOLE_USERS); /console answers 503")
    tail = Tail(settings) if settings.fetcher_console_events else None
    secret = settings.fetcher_console_csrf_secret
    console = Console(
        onboarding,
        tail,
        users=users,
        auth=settings.fetcher_console_auth,
        local_tenant=settings.fetcher_console_local_tenant or settings.tenant_default,
        secret=secret.get_secret_value().encode() if secret else None,
    )
    rt.http_routes.extend(console.routes())
    if tail is not None:
        rt.shutdown_hooks.append(tail.stop)
    return console
