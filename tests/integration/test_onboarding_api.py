"""The fetcher's admin API and CLI end to end: a real fetcher process, Kafka, FerretDB, Dovecot,
Postfix and a local OAuth2 server. Also proves no secret leaks into responses, logs, events,
CLI output or the database, and that `rotate-key` re-encrypts under a new key without downtime."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from mailsync.credentials import generate_key
from tests.integration.onboarding_servers import AuthServer
from tests.stack import ROOT, SCRIPTS, MailLab

pytestmark = pytest.mark.integration

CA_FILE = str(ROOT / ".stack" / "mail" / "tls" / "cert.pem")


def _lab_caps(lab: MailLab) -> str:
    with socket.create_connection((lab.host, lab.imap_port), timeout=5) as s:
        return s.recv(2000).decode()


@pytest.fixture(scope="module")
def oauth_ready(mail_lab: MailLab) -> MailLab:
    """The lab with its oauth2 passdb active (re-read by Dovecot if it started before the change)."""
    if "AUTH=XOAUTH2" not in _lab_caps(mail_lab):
        subprocess.run([str(SCRIPTS / "mail.sh"), "reload"], check=True, capture_output=True, timeout=60)
    return mail_lab


@pytest.fixture(scope="module")
def auth_server() -> Iterator[AuthServer]:
    server = AuthServer(int(os.environ.get("OAUTH2_INTROSPECTION_PORT", "31080")))
    server.start()
    yield server
    server.close()


def _env(keys: str) -> dict[str, str]:
    return {
        "MAILSYNC_CREDENTIALS_KEYS": keys,
        "MAILSYNC_FETCHER_ALLOWED_NETWORKS": '["127.0.0.1"]',
        "MAILSYNC_FETCHER_TLS_CA_FILE": CA_FILE,
        "MAILSYNC_FETCHER_GREETING_TIMEOUT_SECONDS": "1.5",
        "MAILSYNC_FETCHER_CONNECT_TIMEOUT_SECONDS": "3",
        "MAILSYNC_FETCHER_READ_TIMEOUT_SECONDS": "5",
        "MAILSYNC_FETCHER_SYNC_ENABLED": "false",  # this test is about onboarding only
    }


def _run(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=120, cwd=ROOT, **kw)


def _servers(lab: MailLab) -> dict[str, Any]:
    return {
        "imap": {"host": lab.host, "port": lab.imaps_port, "security": "tls"},
        "smtp": {"host": lab.host, "port": lab.submission_port, "security": "starttls"},
    }


async def test_admin_api_cli_events_and_no_secret_leaks(  # noqa: PLR0917
    service: Callable[..., Any],
    watch: Callable[..., Any],
    mongo: AsyncMongoClient[dict[str, Any]],
    oauth_ready: MailLab,
    mail_user_factory: Callable[[str], Any],
    auth_server: AuthServer,
) -> None:
    lab = oauth_ready
    old_key = generate_key()
    new_key = generate_key()
    # Both keys known from the start, `old` primary: rotation later needs no restart (no downtime).
    fetcher = service(
        "fetcher", **_env(f"old:{old_key},new:{new_key}"), MAILSYNC_CREDENTIALS_PRIMARY_KEY_ID="old"
    )
    events = await watch("mailsync.inbox.v1")
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    ann, bob = mail_user_factory("api-ann"), mail_user_factory("api-bob")
    wrong_pw = f"wrong-{uuid.uuid4().hex}"
    transcript: list[str] = []  # every response and CLI output, searched for secrets at the end
    base = f"http://127.0.0.1:{fetcher.port}"

    async with httpx.AsyncClient(base_url=base, timeout=60) as http:

        async def call(method: str, path: str, body: Any = None, **params: str) -> tuple[int, Any]:
            resp = await http.request(method, path, json=body, params={"tenant_id": tenant, **params})
            transcript.append(resp.text)
            return resp.status_code, resp.json()

        status, doc = await call("GET", "/admin/openapi.json")
        assert status == 200 and "/admin/inboxes" in doc["paths"]
        status, doc = await call("GET", "/admin/presets")
        ids = {p["id"] for p in doc["presets"]}
        assert {
            "gmail",
            "yahoo",
            "outlook",
            "office365",
            "zoho",
            "zoho-eu",
            "icloud",
            "aol",
            "gmx",
            "fastmail",
        } <= ids

        # Wrong password: refused with code, field and hint; nothing saved, nothing announced.
        add = {
            "tenant_id": tenant,
            "inbox_id": "ann",
            "owner_user_id": "u-ann",
            "email": ann.email,
            **_servers(lab),
        }
        status, doc = await call("POST", "/admin/inboxes", {**add, "password": wrong_pw})
        assert status == 422 and doc["saved"] is False
        assert doc["error"]["code"] == "auth.invalid_credentials"
        assert doc["error"]["field"] == "imap.password" and "app password" in doc["error"]["hint"]
        assert (await call("GET", "/admin/inbox", inbox_id="ann"))[0] == 404

        # Good password: saved after the test, `connected` emitted.
        status, doc = await call(
            "POST", "/admin/inboxes", {**add, "password": ann.password, "sharing": "metadata"}
        )
        assert status == 201, doc
        assert doc["inbox"]["imap_auth"] == {"kind": "password", "username": ann.email, "password": "stored"}
        assert (
            doc["inbox"]["status"] == "connecting"
            and doc["test"]["imap"]["special_folders"]["\\Sent"] == "Sent"
        )
        ev = await events.wait_for(
            lambda e: e["type"] == "mailsync.inbox.connected" and e["inbox_id"] == "ann"
        )
        assert ev["tenant_id"] == tenant and ev["data"]["email"] == ann.email
        assert (await call("POST", "/admin/inboxes", {**add, "password": ann.password}))[0] == 409

        status, doc = await call("GET", "/admin/inboxes")
        assert [i["inbox_id"] for i in doc["inboxes"]] == ["ann"]
        status, doc = await call("GET", "/admin/inbox", inbox_id="ann")
        assert doc["sharing"] == "metadata" and doc["smtp_same_credentials"] is True

        # Update: a plain field saves at once; a new wrong password is tested and refused.
        status, doc = await call("PATCH", "/admin/inbox", {"display_name": "Ann A."}, inbox_id="ann")
        assert status == 200 and doc["inbox"]["display_name"] == "Ann A."
        status, doc = await call("PATCH", "/admin/inbox", {"password": wrong_pw}, inbox_id="ann")
        assert status == 422 and doc["error"]["code"] == "auth.invalid_credentials"
        status, doc = await call("POST", "/admin/inbox/test", {}, inbox_id="ann")
        assert status == 200 and doc["ok"] is True  # the stored password is still the good one
        status, doc = await call(
            "PATCH",
            "/admin/inbox",
            {"smtp": {"host": lab.host, "port": lab.submissions_port, "security": "tls"}},
            inbox_id="ann",
        )
        assert (
            status == 200
            and doc["inbox"]["revision"] == 1
            and doc["inbox"]["smtp"]["port"] == lab.submissions_port
        )

        # Pause, resume, remove: each emits its event.
        assert (await call("POST", "/admin/inbox/pause", {"reason": "vacation"}, inbox_id="ann"))[1][
            "status"
        ] == "paused"
        await events.wait_for(lambda e: e["type"] == "mailsync.inbox.paused" and e["inbox_id"] == "ann")
        assert (await call("POST", "/admin/inbox/resume", {}, inbox_id="ann"))[1]["status"] == "connecting"
        await events.wait_for(lambda e: e["type"] == "mailsync.inbox.reactivated" and e["inbox_id"] == "ann")

        # Forced add of a failing inbox: saved as auth_failed and announced as such.
        status, doc = await call(
            "POST",
            "/admin/inboxes",
            {**add, "inbox_id": "bob", "email": bob.email, "password": wrong_pw, "force": True},
        )
        assert status == 201 and doc["inbox"]["status"] == "auth_failed"
        ev = await events.wait_for(
            lambda e: e["type"] == "mailsync.inbox.auth_failed" and e["inbox_id"] == "bob"
        )
        assert ev["data"]["error"]["code"] == "auth.invalid_credentials"

        # OAuth2: the refresh token gets an access token; Dovecot checks it; revoked → auth_failed.
        carol = mail_user_factory("api-carol")
        refresh = auth_server.issue_refresh(carol.email)
        oauth_add = {
            **add,
            "inbox_id": "carol",
            "email": carol.email,
            "oauth2": {
                "token_endpoint": auth_server.token_endpoint,
                "client_id": "crm",
                "refresh_token": refresh,
                "client_secret": "cs-" + uuid.uuid4().hex,
            },
        }
        status, doc = await call("POST", "/admin/inboxes", oauth_add)
        assert status == 201, doc
        assert (
            doc["inbox"]["imap_auth"]["kind"] == "oauth2"
            and doc["inbox"]["imap_auth"]["refresh_token"] == "stored"
        )
        issued = [t for t, rec in auth_server.access.items() if rec["username"] == carol.email]
        assert issued
        auth_server.revoke(carol.email)
        status, doc = await call("POST", "/admin/inbox/test", {}, inbox_id="carol")
        # The stored access token is still within its lifetime but Dovecot's introspection says revoked.
        assert doc["ok"] is False
        ev = await events.wait_for(
            lambda e: e["type"] == "mailsync.inbox.auth_failed" and e["inbox_id"] == "carol"
        )
        assert ev["data"]["error"]["field"] == "oauth2"
        assert (await call("GET", "/admin/inbox", inbox_id="carol"))[1]["status"] == "auth_failed"
        # Expired access token → refresh at the endpoint → revoked there too: oauth failure, reconnect hint.
        db = mongo[fetcher.database]
        await db.inboxes.update_one(
            {"_id": f"{tenant}:carol"}, {"$set": {"imap_auth.access_token_expires_at": None}}
        )
        status, doc = await call("POST", "/admin/inbox/test", {}, inbox_id="carol")
        assert (
            doc["oauth_error"]["code"] == "auth.token_refresh_failed"
            and "reconnect" in doc["oauth_error"]["hint"]
        )
        ev = await events.wait_for(
            lambda e: (
                e["type"] == "mailsync.inbox.auth_failed"
                and e["inbox_id"] == "carol"
                and e["data"]["protocol"] == "oauth"
            )
        )
        assert ev["data"]["error"]["code"] == "auth.token_refresh_failed"

        # Bad input: a validation error names the field, never echoes the value.
        status, doc = await call("POST", "/admin/inboxes", {**add, "inbox_id": "x y", "password": wrong_pw})
        assert status == 422 and doc["error"]["code"] == "input.invalid"

    # The CLI: same verbs against the same API.
    cli_env = {
        **os.environ,
        "MAILSYNC_ADMIN_URL": base,
        "DAVE_PW": (dave := mail_user_factory("cli-dave")).password,
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "services.fetcher.onboarding", "--tenant", tenant, *args],
            cwd=ROOT,
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        transcript.append(proc.stdout + proc.stderr)
        return proc

    added = cli(
        "add",
        "--owner",
        "u-dave",
        "--inbox-id",
        "dave",
        "--email",
        dave.email,
        "--imap",
        f"{lab.host}:{lab.imaps_port}:tls",
        "--smtp",
        f"{lab.host}:{lab.submission_port}:starttls",
        "--password-env",
        "DAVE_PW",
    )
    assert added.returncode == 0, added.stdout + added.stderr
    assert "imap ok   auth" in added.stdout and "saved inbox dave" in added.stdout
    print("\n--- CLI add ---\n" + added.stdout)
    listed = cli("--json", "list")
    assert {i["inbox_id"] for i in json.loads(listed.stdout)["inboxes"]} == {"ann", "bob", "carol", "dave"}
    assert cli("pause", "--inbox-id", "dave").returncode == 0
    removed = cli("remove", "--inbox-id", "dave")
    assert removed.returncode == 0
    await events.wait_for(lambda e: e["type"] == "mailsync.inbox.removed" and e["inbox_id"] == "dave")
    failing = cli(
        "test-settings",
        "--email",
        dave.email,
        "--imap",
        f"{lab.host}:{lab.imap_port}:tls",
        "--smtp",
        f"{lab.host}:{lab.submission_port}:starttls",
        "--password-env",
        "DAVE_PW",
    )
    assert "tls.plaintext_port" in failing.stdout and "fix:  imap.security" in failing.stdout

    # rotate-key: re-encrypt under a new primary while the fetcher keeps running with both keys known.
    old_ids = {
        d["imap_auth"]["password"]["key_id"]
        async for d in mongo[fetcher.database].inboxes.find({})
        if d["imap_auth"].get("password")
    }
    assert old_ids == {"old"}
    rot_env = {
        **os.environ,
        "MAILSYNC_MONGO_URI": os.environ.get("MAILSYNC_MONGO_URI", "mongodb://127.0.0.1:37017/"),
        "MAILSYNC_MONGO_DATABASE": fetcher.database,
        "MAILSYNC_CREDENTIALS_KEYS": f"old:{old_key},new:{new_key}",
        "MAILSYNC_CREDENTIALS_PRIMARY_KEY_ID": "new",
    }
    rotated = _run([sys.executable, "-m", "services.fetcher.onboarding", "rotate-key"], env=rot_env)
    transcript.append(rotated.stdout + rotated.stderr)
    assert rotated.returncode == 0, rotated.stderr
    assert "secrets re-encrypted" in rotated.stdout
    key_ids = set()
    async for doc in mongo[fetcher.database].inboxes.find({}):
        for field in ("password", "refresh_token", "access_token", "client_secret"):
            secret = (doc.get("imap_auth") or {}).get(field)
            if secret:
                key_ids.add(secret["key_id"])
    assert key_ids == {"new"}
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:  # the running fetcher reads them at once
        resp = await http.post("/admin/inbox/test", json={}, params={"tenant_id": tenant, "inbox_id": "ann"})
        transcript.append(resp.text)
        assert resp.json()["ok"] is True
    fetcher.stop()
    logs = fetcher.log()  # each start of the same service reuses its log file: keep this one now
    # Restarted with only the new key: stored passwords open.
    fetcher2 = service("fetcher", **{**_env(f"new:{new_key}"), "MAILSYNC_MONGO_DATABASE": fetcher.database})
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{fetcher2.port}", timeout=60) as http:
        resp = await http.post("/admin/inbox/test", json={}, params={"tenant_id": tenant, "inbox_id": "ann"})
        transcript.append(resp.text)
        assert resp.json()["ok"] is True
    fetcher2.stop()
    logs += fetcher2.log()
    # Wrong key, missing key: clear start-up errors.
    with pytest.raises(AssertionError, match="does not open the stored credentials"):
        service("fetcher", **{**_env(f"new:{generate_key()}"), "MAILSYNC_MONGO_DATABASE": fetcher.database})
    with pytest.raises(AssertionError, match="no credential encryption key"):
        service("fetcher", **_env(""))

    # No secret anywhere: API responses, CLI output, fetcher logs, events, the database.
    events_text = json.dumps(events.seen)
    logs += fetcher.log()  # the failed starts' output
    db_text = json.dumps([d async for d in mongo[fetcher.database].inboxes.find({})], default=str)
    secrets = [
        ann.password,
        bob.password,
        carol.password,
        dave.password,
        wrong_pw,
        refresh,
        new_key,
        old_key,
        oauth_add["oauth2"]["client_secret"],
        *issued,
        *[t for t, rec in auth_server.access.items() if rec["username"] == carol.email],
    ]
    haystacks = {"responses": "\n".join(transcript), "logs": logs, "events": events_text, "database": db_text}
    for where, text in haystacks.items():
        for secret in secrets:
            assert secret not in text, f"a secret leaked into {where}"
    assert "admin request" in logs  # the logs were captured (so the search above means something)
    assert len(events.seen) >= 6
