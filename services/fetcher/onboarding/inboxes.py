"""Onboarding operations on the inbox registry: add, test, list, show, update, pause, resume, remove.

Each change is written to the `inboxes` collection (secrets only as AES-GCM ciphertexts under the
keyring, owner `<_id>:<field>`) and announced with the matching inbox event. Views returned to callers
never contain a secret: credentials show as `{"kind", "username", "stored": true}`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from contracts.common import ErrorInfo
from contracts.inbox import (
    InboxAuthFailed,
    InboxCommandData,
    InboxCommandRequested,
    InboxConnected,
    InboxConnectedData,
    InboxConnectFailed,
    InboxFailureData,
)
from mailsync.credentials import CredentialKeyError, DecryptionError, EncryptedSecret, Keyring
from mailsync.inbox_record import Auth, InboxRecord, OAuth2Auth, PasswordAuth, ServerSettings
from mailsync.kafka import EventPublisher
from mailsync.oauth2 import OAuth2Error, ensure_access_token, needs_refresh, refresh_access_token
from mailsync.store import Document
from services.fetcher.inbox_commands import decide
from services.fetcher.registry import INBOXES, InboxRegistry

from . import presets
from .autodiscovery import Discoverer
from .errors import error
from .hosts import HostError, HostResolver
from .models import ActionInput, InboxInput, InboxUpdate, OAuth2Input, SettingsInput
from .probe import Credentials, ProbeOptions, ProbeResult, probe_imap, probe_smtp

SECRET_FIELDS = (
    "imap_auth.password",
    "imap_auth.refresh_token",
    "imap_auth.access_token",
    "imap_auth.client_secret",
    "smtp_auth.password",
    "smtp_auth.refresh_token",
    "smtp_auth.access_token",
    "smtp_auth.client_secret",
)


class OnboardingError(Exception):
    """A refusal with an HTTP status and a body an operator can act on (never a secret)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(
            body.get("error", {}).get("message", "refused")
            if isinstance(body.get("error"), dict)
            else "refused"
        )
        self.status = status
        self.body = body


def _err(
    status: int, code: str, message: str, field: str | None = None, hint: str | None = None
) -> OnboardingError:
    return OnboardingError(
        status, {"error": ErrorInfo(code=code, message=message, field=field, hint=hint).model_dump()}
    )


@dataclass
class TestOutcome:
    imap: ProbeResult
    smtp: ProbeResult | None
    oauth_error: ErrorInfo | None = None

    @property
    def ok(self) -> bool:
        return self.oauth_error is None and self.imap.ok and (self.smtp is None or self.smtp.ok)

    @property
    def first_error(self) -> tuple[str, ErrorInfo] | None:
        if self.oauth_error:
            return "oauth", self.oauth_error
        if self.imap.error:
            return "imap", self.imap.error
        if self.smtp and self.smtp.error:
            return "smtp", self.smtp.error
        return None

    def as_dict(self) -> dict[str, Any]:
        first = self.first_error
        return {
            "ok": self.ok,
            "error": first[1].model_dump() if first else None,
            "oauth_error": self.oauth_error.model_dump() if self.oauth_error else None,
            "imap": self.imap.as_dict(),
            "smtp": self.smtp.as_dict() if self.smtp else None,
        }


def view(record: InboxRecord) -> dict[str, Any]:
    """The inbox as callers see it: everything but secrets."""
    doc = record.model_dump(mode="json", by_alias=False, exclude={"imap_auth", "smtp_auth"})

    def auth_view(auth: Auth | None) -> dict[str, Any] | None:
        if auth is None:
            return None
        if isinstance(auth, PasswordAuth):
            return {"kind": "password", "username": auth.username, "password": "stored"}
        return {
            "kind": "oauth2",
            "username": auth.username,
            "token_endpoint": auth.token_endpoint,
            "client_id": auth.client_id,
            "scope": auth.scope,
            "refresh_token": "stored",
            "access_token_expires_at": auth.access_token_expires_at.isoformat()
            if auth.access_token_expires_at
            else None,
        }

    doc["imap_auth"] = auth_view(record.imap_auth)
    doc["smtp_auth"] = auth_view(record.smtp_auth)
    doc["smtp_same_credentials"] = record.smtp_auth is None
    return doc


def load_record(doc: Document) -> InboxRecord:
    """Other writers add fields of their own (status timestamps, sync cursors): keep only ours."""
    known = set(InboxRecord.model_fields) | {"_id"}
    return InboxRecord.model_validate({k: v for k, v in doc.items() if k in known and k != "id"})


class Onboarding:
    def __init__(  # noqa: PLR0917
        self,
        db: AsyncDatabase[Document],
        publisher: EventPublisher,
        source: str,
        keyring: Keyring,
        probe_options: ProbeOptions,
        discoverer: Discoverer,
        tenant_default: str = "default",
        http_factory: Callable[[], httpx.AsyncClient] | None = None,
    ) -> None:
        self.db = db
        self.col = db[INBOXES]
        self.publisher = publisher
        self.source = source
        self.keyring = keyring
        self.probe_options = probe_options
        self.discoverer = discoverer
        self.tenant_default = tenant_default
        self.registry = InboxRegistry(db, publisher, source)
        timeout = probe_options.read_timeout
        self.http_factory = http_factory or (
            lambda: httpx.AsyncClient(
                timeout=timeout, follow_redirects=False, verify=probe_options.ca_file or True
            )
        )

    @property
    def resolver(self) -> HostResolver:
        return self.probe_options.resolver

    # ------------------------------------------------------------ settings → servers + credentials

    async def _servers(self, inp: SettingsInput) -> tuple[ServerSettings, ServerSettings, str | None, bool]:
        preset = presets.get(inp.provider) if inp.provider else None
        if inp.provider and preset is None:
            raise _err(
                422,
                "input.unknown_provider",
                f"unknown provider preset {inp.provider!r}",
                "provider",
                "see GET /admin/presets for the preset ids",
            )
        imap, smtp = inp.imap, inp.smtp
        provider_id = preset.id if preset else None
        if preset is not None:
            imap = imap or ServerSettings(**preset.imap.model_dump())
            smtp = smtp or ServerSettings(**preset.smtp.model_dump())
        if imap is None or smtp is None:
            found = await self.discoverer.discover(inp.email)
            if found.imap is None:
                raise _err(
                    422,
                    "discovery.not_found",
                    f"no mail server settings found for {found.domain}",
                    "imap.host",
                    "enter the IMAP and SMTP servers by hand or choose a provider",
                )
            imap = imap or found.imap
            smtp = smtp or found.smtp
            provider_id = provider_id or found.preset_id
            if smtp is None:
                raise _err(
                    422,
                    "discovery.smtp_not_found",
                    f"no SMTP server found for {found.domain}",
                    "smtp.host",
                    "enter the SMTP server by hand",
                )
        files_sent = (
            bool(preset.files_sent_copy)
            if preset
            else bool(provider_id and (p := presets.get(provider_id)) and p.files_sent_copy)
        )
        return imap, smtp, provider_id, files_sent

    async def _check_token_endpoint(self, url: str) -> None:
        host = urlsplit(url).hostname or ""
        try:
            await self.resolver.resolve(host)
        except HostError as exc:
            raise _err(
                422, exc.code, f"token endpoint: {exc}", "oauth2", "use the provider's public token endpoint"
            ) from None

    async def _oauth_token(self, oauth: OAuth2Input) -> tuple[str, datetime | None, str | None]:
        """A usable access token for a new inbox (refresh when none given or it is about to expire)."""
        await self._check_token_endpoint(oauth.token_endpoint)
        now = datetime.now(UTC)
        if oauth.access_token and not needs_refresh(oauth.access_token_expires_at, now):
            return oauth.access_token.get_secret_value(), oauth.access_token_expires_at, None
        async with self.http_factory() as client:
            tokens = await refresh_access_token(
                client,
                oauth.token_endpoint,
                client_id=oauth.client_id,
                refresh_token=oauth.refresh_token.get_secret_value(),
                client_secret=oauth.client_secret.get_secret_value() if oauth.client_secret else None,
                scope=oauth.scope,
                now=now,
            )
        return tokens.access_token, tokens.expires_at, tokens.refresh_token

    async def _run_tests(
        self,
        imap: ServerSettings,
        smtp: ServerSettings,
        imap_creds: Credentials,
        smtp_creds: Credentials,
        allow_plain: bool,
    ) -> TestOutcome:
        opts = self.probe_options
        smtp_opts = ProbeOptions(
            **{**opts.__dict__, "smtp_allow_plain": allow_plain or opts.smtp_allow_plain}
        )
        imap_res, smtp_res = await asyncio.gather(
            probe_imap(imap, imap_creds, opts), probe_smtp(smtp, smtp_creds, smtp_opts)
        )
        return TestOutcome(imap_res, smtp_res)

    @staticmethod
    def _oauth_error(exc: OAuth2Error) -> ErrorInfo:
        code = "auth.token_refresh_failed" if exc.revoked else "auth.token_endpoint_failed"
        base = error(code, "oauth")
        return base.model_copy(update={"message": f"OAuth2: {exc}"})

    # ------------------------------------------------------------ test without saving

    async def test_settings(self, inp: SettingsInput) -> dict[str, Any]:
        imap, smtp, provider_id, _ = await self._servers(inp)
        try:
            imap_creds, smtp_creds, _ = await self._credentials(inp)
        except OAuth2Error as exc:
            return {
                "imap_settings": imap.model_dump(),
                "smtp_settings": smtp.model_dump(),
                "provider": provider_id,
                **TestOutcome(ProbeResult("imap"), None, self._oauth_error(exc)).as_dict(),
            }
        outcome = await self._run_tests(imap, smtp, imap_creds, smtp_creds, inp.smtp_allow_plain)
        return {
            "imap_settings": imap.model_dump(),
            "smtp_settings": smtp.model_dump(),
            "provider": provider_id,
            **outcome.as_dict(),
        }

    async def _credentials(
        self, inp: SettingsInput
    ) -> tuple[Credentials, Credentials, tuple[str, datetime | None, str | None] | None]:
        username = inp.username or inp.email
        token: tuple[str, datetime | None, str | None] | None = None
        if inp.oauth2 is not None:
            token = await self._oauth_token(inp.oauth2)
            imap_creds = Credentials(username, access_token=token[0])
        elif inp.password is not None:
            imap_creds = Credentials(username, password=inp.password.get_secret_value())
        else:
            raise _err(
                422,
                "input.credentials_missing",
                "a password (or app password) or OAuth2 credentials are required",
                "imap.password",
                "enter the password or an app password, or connect with OAuth2",
            )
        if inp.smtp_same_credentials:
            smtp_creds = imap_creds
        else:
            if inp.smtp_password is None:
                raise _err(
                    422,
                    "input.credentials_missing",
                    "SMTP password required when not reusing the IMAP credentials",
                    "smtp.password",
                    "enter the SMTP password or tick 'use the same credentials'",
                )
            smtp_creds = Credentials(
                inp.smtp_username or username, password=inp.smtp_password.get_secret_value()
            )
        return imap_creds, smtp_creds, token

    # ------------------------------------------------------------ add

    async def add(self, inp: InboxInput) -> tuple[int, dict[str, Any]]:
        tenant = inp.tenant_id or self.tenant_default
        inbox_id = inp.inbox_id or uuid.uuid4().hex
        key = InboxRecord.key(tenant, inbox_id)
        if await self.col.find_one({"_id": key}, {"_id": 1}) is not None:
            raise _err(
                409,
                "input.inbox_exists",
                f"inbox {inbox_id!r} already exists for tenant {tenant!r}",
                "inbox_id",
            )
        imap, smtp, provider_id, files_sent = await self._servers(inp)
        oauth_exc: OAuth2Error | None = None
        try:
            imap_creds, smtp_creds, token = await self._credentials(inp)
            outcome = await self._run_tests(imap, smtp, imap_creds, smtp_creds, inp.smtp_allow_plain)
        except OAuth2Error as exc:
            oauth_exc, token = exc, None
            outcome = TestOutcome(ProbeResult("imap"), None, self._oauth_error(exc))
        if not outcome.ok and not inp.force:
            return 422, {
                "saved": False,
                "test": outcome.as_dict(),
                "error": outcome.first_error[1].model_dump() if outcome.first_error else None,
            }
        now = datetime.now(UTC)
        stub = InboxRecord.model_validate(
            {
                "_id": key,
                "tenant_id": tenant,
                "inbox_id": inbox_id,
                "owner_user_id": inp.owner_user_id,
                "email": inp.email,
                "imap": imap,
                "smtp": smtp,
                "imap_auth": PasswordAuth(
                    username="-", password=EncryptedSecret(key_id="-", nonce="", ciphertext="")
                ),
            }
        )
        imap_auth = self._encrypt_auth(stub, "imap_auth", inp, token)
        smtp_auth = None
        if not inp.smtp_same_credentials and inp.smtp_password is not None:
            smtp_auth = PasswordAuth(
                username=inp.smtp_username or inp.username or inp.email,
                password=self.keyring.encrypt(
                    inp.smtp_password.get_secret_value(), stub.secret_owner("smtp_auth.password")
                ),
            )
        status, reason = self._status_after(outcome)
        record = stub.model_copy(
            update={
                "display_name": inp.display_name,
                "provider": provider_id,
                "smtp_allow_plain": inp.smtp_allow_plain,
                "imap_auth": imap_auth,
                "smtp_auth": smtp_auth,
                "additional_from": inp.additional_from,
                "sharing": inp.sharing,
                "shared_with": inp.shared_with,
                "sent_copy": inp.sent_copy,
                "provider_files_sent_copy": files_sent,
                "sync": inp.sync,
                "status": status,
                "status_reason": reason,
                "created_at": now,
                "updated_at": now,
                "revision": 0,
            }
        )
        InboxRecord.model_validate(record.model_dump(by_alias=True))  # full validation of the merged record
        attempt = inp.request_id or uuid.uuid4().hex
        await self._announce(record, outcome, attempt)
        try:
            await self.col.insert_one(record.model_dump(by_alias=True, mode="python"))
        except DuplicateKeyError:
            raise _err(
                409,
                "input.inbox_exists",
                f"inbox {inbox_id!r} already exists for tenant {tenant!r}",
                "inbox_id",
            ) from None
        _ = oauth_exc
        return 201, {"saved": True, "inbox": view(record), "test": outcome.as_dict()}

    def _encrypt_auth(
        self,
        record: InboxRecord,
        field: str,
        inp: SettingsInput,
        token: tuple[str, datetime | None, str | None] | None,
    ) -> Auth:
        username = inp.username or inp.email

        def enc(value: str, name: str) -> EncryptedSecret:
            return self.keyring.encrypt(value, record.secret_owner(f"{field}.{name}"))

        if inp.oauth2 is not None:
            o = inp.oauth2
            refresh = (token[2] if token and token[2] else None) or o.refresh_token.get_secret_value()
            return OAuth2Auth(
                username=username,
                token_endpoint=o.token_endpoint,
                client_id=o.client_id,
                client_secret=enc(o.client_secret.get_secret_value(), "client_secret")
                if o.client_secret
                else None,
                refresh_token=enc(refresh, "refresh_token"),
                access_token=enc(token[0], "access_token") if token else None,
                access_token_expires_at=token[1] if token else None,
                scope=o.scope,
            )
        assert inp.password is not None
        return PasswordAuth(username=username, password=enc(inp.password.get_secret_value(), "password"))

    @staticmethod
    def _status_after(outcome: TestOutcome) -> tuple[str, str | None]:
        first = outcome.first_error
        if first is None:
            return "connecting", None
        proto, err = first
        if proto == "oauth" or err.code.startswith("auth."):
            return "auth_failed", err.code
        return "connect_failed", err.code

    async def _announce(self, record: InboxRecord, outcome: TestOutcome, attempt: str) -> None:
        tenant, inbox_id = record.tenant_id, record.inbox_id
        first = outcome.first_error
        if first is None:
            caps = outcome.imap.capabilities
            data = InboxConnectedData(
                connection_id=f"r{record.revision}:{attempt}",
                email=record.email,
                owner_user_id=record.owner_user_id,
                provider=record.provider,
                capabilities=caps,
            )
            await self.publisher.publish(
                InboxConnected.build(data=data, tenant_id=tenant, inbox_id=inbox_id, source=self.source)
            )
            return
        proto, err = first
        fdata = InboxFailureData(attempt_id=f"r{record.revision}:{attempt}", protocol=proto, error=err)
        cls = InboxAuthFailed if proto == "oauth" or err.code.startswith("auth.") else InboxConnectFailed
        await self.publisher.publish(
            cls.build(data=fdata, tenant_id=tenant, inbox_id=inbox_id, source=self.source)
        )

    # ------------------------------------------------------------ read

    async def get(self, tenant: str | None, inbox_id: str) -> InboxRecord:
        doc = await self.col.find_one({"_id": InboxRecord.key(tenant or self.tenant_default, inbox_id)})
        if doc is None:
            raise _err(
                404,
                "input.unknown_inbox",
                f"no inbox {inbox_id!r} for tenant {tenant or self.tenant_default!r}",
                "inbox_id",
            )
        return load_record(doc)

    async def show(self, tenant: str | None, inbox_id: str) -> dict[str, Any]:
        return view(await self.get(tenant, inbox_id))

    async def list_inboxes(
        self, tenant: str | None, owner_user_id: str | None = None, limit: int = 500
    ) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"tenant_id": tenant or self.tenant_default}
        if owner_user_id:
            query["owner_user_id"] = owner_user_id
        out = []
        async for doc in self.col.find(query).sort("_id", 1).limit(limit):
            out.append(view(load_record(doc)))
        return out

    # ------------------------------------------------------------ stored credentials → test

    def _decrypt_creds(self, record: InboxRecord, field: str, access_token: str | None) -> Credentials:
        auth = getattr(record, field)
        if isinstance(auth, PasswordAuth):
            return Credentials(
                auth.username,
                password=self.keyring.decrypt(auth.password, record.secret_owner(f"{field}.password")),
            )
        assert isinstance(auth, OAuth2Auth)
        return Credentials(auth.username, access_token=access_token)

    async def _stored_creds(self, record: InboxRecord) -> tuple[Credentials, Credentials]:
        token = None
        if isinstance(record.imap_auth, OAuth2Auth):
            await self._check_token_endpoint(record.imap_auth.token_endpoint)
            async with self.http_factory() as client:
                got = await ensure_access_token(record, self.keyring, client)
            if got.update:
                await self.col.update_one({"_id": record.id}, {"$set": got.update})
            token = got.token
        imap_creds = self._decrypt_creds(record, "imap_auth", token)
        smtp_creds = (
            imap_creds if record.smtp_auth is None else self._decrypt_creds(record, "smtp_auth", None)
        )
        return imap_creds, smtp_creds

    async def test(self, tenant: str | None, inbox_id: str, request_id: str | None = None) -> dict[str, Any]:
        record = await self.get(tenant, inbox_id)
        if record.status == "removed":
            raise _err(409, "input.inbox_removed", "inbox was removed; add it again to use it")
        try:
            imap_creds, smtp_creds = await self._stored_creds(record)
            outcome = await self._run_tests(
                record.imap, record.smtp, imap_creds, smtp_creds, record.smtp_allow_plain
            )
        except OAuth2Error as exc:
            outcome = TestOutcome(ProbeResult("imap"), None, self._oauth_error(exc))
        await self._after_test(record, outcome, request_id or uuid.uuid4().hex)
        return {"inbox_id": record.inbox_id, **outcome.as_dict()}

    async def _after_test(self, record: InboxRecord, outcome: TestOutcome, attempt: str) -> None:
        """A failing test marks the inbox auth_failed/connect_failed; a passing one clears that."""
        failed_states = ("auth_failed", "connect_failed")
        status, reason = self._status_after(outcome)
        if outcome.ok and record.status not in failed_states:
            return
        if not outcome.ok and record.status in ("paused", "deactivated"):
            return  # an operator's pause stays; the event still tells what failed
        await self._announce(record, outcome, attempt)
        await self.col.update_one(
            {"_id": record.id},
            {"$set": {"status": status, "status_reason": reason, "status_changed_at": datetime.now(UTC)}},
        )

    async def refresh_or_mark(self, record: InboxRecord) -> str | None:
        """For the sync engine and the sender: a fresh access token, or mark the inbox auth_failed."""
        try:
            async with self.http_factory() as client:
                got = await ensure_access_token(record, self.keyring, client)
        except OAuth2Error as exc:
            if exc.revoked:
                outcome = TestOutcome(ProbeResult("imap"), None, self._oauth_error(exc))
                await self._after_test(record, outcome, uuid.uuid4().hex)
            return None
        if got.update:
            await self.col.update_one({"_id": record.id}, {"$set": got.update})
        return got.token

    # ------------------------------------------------------------ update

    async def update(  # noqa: PLR0912 - one merge per optional field
        self, tenant: str | None, inbox_id: str, upd: InboxUpdate
    ) -> tuple[int, dict[str, Any]]:
        record = await self.get(tenant, inbox_id)
        if record.status == "removed":
            raise _err(409, "input.inbox_removed", "inbox was removed; add it again to use it")
        plain: dict[str, Any] = {}
        for name in ("display_name", "additional_from", "sharing", "shared_with", "sent_copy", "sync"):
            value = getattr(upd, name)
            if value is not None:
                plain[name] = value
        if not upd.touches_connection():
            new = record.model_copy(update={**plain, "updated_at": datetime.now(UTC)})
            InboxRecord.model_validate(new.model_dump(by_alias=True))
            await self.col.update_one(
                {"_id": record.id}, {"$set": self._dump_fields(new, [*plain, "updated_at"])}
            )
            return 200, {"saved": True, "inbox": view(new), "test": None}
        # Connection settings changed: merge with the stored ones, test, then save as a new revision.
        stored_imap, stored_smtp = await self._stored_creds_safe(record)
        username = upd.username or record.imap_auth.username
        inp = SettingsInput(
            email=record.email,
            imap=upd.imap or record.imap,
            smtp=upd.smtp or record.smtp,
            smtp_allow_plain=record.smtp_allow_plain
            if upd.smtp_allow_plain is None
            else upd.smtp_allow_plain,
            username=username,
            password=upd.password,
            oauth2=upd.oauth2,
            smtp_same_credentials=(record.smtp_auth is None)
            if upd.smtp_same_credentials is None
            else upd.smtp_same_credentials,
            smtp_username=upd.smtp_username or (record.smtp_auth.username if record.smtp_auth else None),
            smtp_password=upd.smtp_password,
        )
        token = None
        try:
            if inp.oauth2 is None and inp.password is None:
                # Credentials unchanged: reuse the stored ones for the test.
                imap_creds = (
                    stored_imap
                    if upd.username is None
                    else Credentials(username, stored_imap.password, stored_imap.access_token)
                )
            else:
                imap_creds, _, token = await self._credentials(inp)
            if inp.smtp_same_credentials:
                smtp_creds = imap_creds
            elif inp.smtp_password is not None:
                smtp_creds = Credentials(
                    inp.smtp_username or username, password=inp.smtp_password.get_secret_value()
                )
            elif record.smtp_auth is not None:
                smtp_creds = stored_smtp
            else:
                raise _err(
                    422,
                    "input.credentials_missing",
                    "SMTP password required when not reusing the IMAP credentials",
                    "smtp.password",
                    "enter the SMTP password",
                )
            outcome = await self._run_tests(
                inp.imap or record.imap, inp.smtp or record.smtp, imap_creds, smtp_creds, inp.smtp_allow_plain
            )
        except OAuth2Error as exc:
            outcome = TestOutcome(ProbeResult("imap"), None, self._oauth_error(exc))
        if not outcome.ok and not upd.force:
            return 422, {
                "saved": False,
                "test": outcome.as_dict(),
                "error": outcome.first_error[1].model_dump() if outcome.first_error else None,
            }
        changes: dict[str, Any] = {
            **plain,
            "imap": inp.imap,
            "smtp": inp.smtp,
            "smtp_allow_plain": inp.smtp_allow_plain,
            "revision": record.revision + 1,
            "updated_at": datetime.now(UTC),
        }
        if inp.oauth2 is not None or inp.password is not None:
            changes["imap_auth"] = self._encrypt_auth(record, "imap_auth", inp, token)
        elif upd.username is not None:
            changes["imap_auth"] = record.imap_auth.model_copy(update={"username": username})
        if inp.smtp_same_credentials:
            changes["smtp_auth"] = None
        elif inp.smtp_password is not None:
            changes["smtp_auth"] = PasswordAuth(
                username=inp.smtp_username or username,
                password=self.keyring.encrypt(
                    inp.smtp_password.get_secret_value(), record.secret_owner("smtp_auth.password")
                ),
            )
        if record.status not in ("paused", "deactivated"):
            status, reason = self._status_after(outcome)
            changes["status"], changes["status_reason"] = status, reason
        new = record.model_copy(update=changes)
        InboxRecord.model_validate(new.model_dump(by_alias=True))
        await self._announce(new, outcome, upd.request_id or uuid.uuid4().hex)
        await self.col.update_one({"_id": record.id}, {"$set": self._dump_fields(new, list(changes))})
        return 200, {"saved": True, "inbox": view(new), "test": outcome.as_dict()}

    async def _stored_creds_safe(self, record: InboxRecord) -> tuple[Credentials, Credentials]:
        try:
            return await self._stored_creds(record)
        except OAuth2Error:
            empty = Credentials(record.imap_auth.username)
            return empty, empty

    @staticmethod
    def _dump_fields(record: InboxRecord, names: list[str]) -> dict[str, Any]:
        doc = record.model_dump(by_alias=True, mode="python")
        return {n: doc[n] for n in names}

    # ------------------------------------------------------------ pause / resume / remove

    async def action(
        self, tenant: str | None, inbox_id: str, action: str, inp: ActionInput
    ) -> dict[str, Any]:
        record = await self.get(tenant, inbox_id)
        decision = decide(record.status, action)  # type: ignore[arg-type]
        if decision.refused:
            raise _err(409, "input.refused", decision.refused)
        data = InboxCommandData(
            request_id=inp.request_id or uuid.uuid4().hex,
            action=action,
            by_user_id=inp.by_user_id,
            reason=inp.reason,
        )
        command = InboxCommandRequested.build(
            data=data, tenant_id=record.tenant_id, inbox_id=record.inbox_id, source=self.source
        )
        # The same path as a command from Kafka: the event is emitted, then the status stored.
        await self.registry.command(command)
        return view(await self.get(record.tenant_id, record.inbox_id))


# ---------------------------------------------------------------- key rotation and start-up check


@dataclass
class RotationReport:
    inboxes: int = 0
    rotated: int = 0
    raced: int = 0
    failed: list[str] | None = None


def _get_path(doc: Document, path: str) -> Any:
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


async def rotate_keys(db: AsyncDatabase[Document], keyring: Keyring) -> RotationReport:
    """Re-encrypt every stored secret under the primary key. Safe while services run: readers hold the
    old key too, and each write is a compare-and-set on the old ciphertext (a concurrent change wins)."""
    report = RotationReport(failed=[])
    async for doc in db[INBOXES].find({}):
        report.inboxes += 1
        for path in SECRET_FIELDS:
            raw = _get_path(doc, path)
            if not isinstance(raw, dict) or "key_id" not in raw:
                continue
            secret = EncryptedSecret.model_validate(raw)
            if not keyring.needs_rotation(secret):
                continue
            owner = f"{doc['_id']}:{path}"
            try:
                new = keyring.rotate(secret, owner)
            except Exception as exc:  # unknown key id or does not decrypt: report, never print the value
                assert report.failed is not None
                report.failed.append(f"{doc['_id']} {path}: {type(exc).__name__}")
                continue
            res = await db[INBOXES].update_one(
                {"_id": doc["_id"], f"{path}.ciphertext": secret.ciphertext},
                {"$set": {path: new.model_dump()}},
            )
            if res.modified_count:
                report.rotated += 1
            else:
                report.raced += 1
    return report


async def verify_keys(db: AsyncDatabase[Document], keyring: Keyring, sample: int = 50) -> None:
    """Start-up check: stored secrets are readable with the configured keys (one per key id)."""
    check_documents([doc async for doc in db[INBOXES].find({}).limit(sample)], keyring)


def check_documents(docs: list[Document], keyring: Keyring) -> None:
    """Decrypt one stored secret per key id; a clear `CredentialKeyError` when keys are wrong/missing."""
    checked: set[str] = set()
    for doc in docs:
        for path in SECRET_FIELDS:
            raw = _get_path(doc, path)
            if not isinstance(raw, dict) or raw.get("key_id") in checked:
                continue
            secret = EncryptedSecret.model_validate(raw)
            try:
                keyring.decrypt(secret, f"{doc['_id']}:{path}")
            except CredentialKeyError as exc:
                raise CredentialKeyError(
                    f"stored credentials use key id {secret.key_id!r}, "
                    f"which MAILSYNC_CREDENTIALS_KEYS lacks ({exc})"
                ) from None
            except DecryptionError:
                raise CredentialKeyError(
                    f"credential key {secret.key_id!r} does not open the stored credentials: "
                    "wrong key material in MAILSYNC_CREDENTIALS_KEYS (or _FILE)"
                ) from None
            checked.add(secret.key_id)
