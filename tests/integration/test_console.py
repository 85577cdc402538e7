"""The operator console in a real browser: headless Debian Chromium (Playwright, no browser download)
against a real fetcher process, Kafka, FerretDB and the Dovecot/Postfix lab.

Connect an inbox through the form, see the wrong-password error with its hint and the field marked,
fix it, save, watch the initial sync reach 100 %, pause and resume it. Screenshots of each page go to
docs/screenshots/ (linked from README.md)."""

from __future__ import annotations

import imaplib
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from tests.integration.conftest import MailUser
from tests.stack import ROOT, SCRIPTS, MailLab

pytestmark = pytest.mark.integration

CA_FILE = str(ROOT / ".stack" / "mail" / "tls" / "cert.pem")
SHOTS = ROOT / "docs" / "screenshots"
SEEDED = 40


def _chromium() -> str:
    """Debian's chromium, installed once by the project's script (apt, cached by `command -v`)."""
    found = shutil.which("chromium")
    if found:
        return found
    out = subprocess.run(
        [str(SCRIPTS / "browser.sh")], check=False, capture_output=True, text=True, timeout=900
    )
    if out.returncode != 0:
        raise AssertionError(f"deploy/local/browser.sh failed: {out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


def _seed(lab: MailLab, user: MailUser, count: int) -> None:
    ctx = ssl.create_default_context(cafile=CA_FILE)
    with imaplib.IMAP4_SSL(lab.host, lab.imaps_port, ssl_context=ctx, timeout=20) as imap:
        imap.login(user.email, user.password)
        for i in range(count):
            msg = EmailMessage()
            msg["From"] = f"Customer {i} <customer{i}@example.com>"
            msg["To"] = user.email
            msg["Subject"] = f"console seed {i}"
            msg["Message-ID"] = f"<console-{i}-{uuid.uuid4().hex}@example.com>"
            msg["Date"] = "Sat, 21 Nov 2026 10:00:00 +0000"
            msg.set_content(f"hello {i}\n")
            imap.append("INBOX", None, None, msg.as_bytes())


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright  # dev dependency, integration only

    path = _chromium()
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=path, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield chromium
        finally:
            await chromium.close()


async def test_connect_inbox_in_the_browser(
    service: Callable[..., Any],
    mongo: AsyncMongoClient[dict[str, Any]],
    mail_lab: MailLab,
    mail_user_factory: Callable[[str], MailUser],
    browser: Any,
) -> None:
    started = time.monotonic()
    user = mail_user_factory("console")
    _seed(mail_lab, user, SEEDED)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    token = f"tok-{uuid.uuid4().hex}"
    wrong = f"wrong-{uuid.uuid4().hex}"
    inbox_id = f"console-{uuid.uuid4().hex[:6]}"
    fetcher = service(
        "fetcher",
        MAILSYNC_FETCHER_CONSOLE_USERS=f"ops:{tenant}:{token},other:{tenant}-b:{token}-b",
        MAILSYNC_FETCHER_ALLOWED_NETWORKS='["127.0.0.1"]',
        MAILSYNC_FETCHER_TLS_CA_FILE=CA_FILE,
        MAILSYNC_FETCHER_SYNC_SCAN_INTERVAL_SECONDS="0.5",
        MAILSYNC_FETCHER_GREETING_TIMEOUT_SECONDS="3",
        MAILSYNC_FETCHER_CONNECT_TIMEOUT_SECONDS="3",
    )
    base = f"http://127.0.0.1:{fetcher.port}"
    SHOTS.mkdir(parents=True, exist_ok=True)

    # The console itself is behind a login, and its forms behind a CSRF token.
    async with httpx.AsyncClient(base_url=base, timeout=20) as http:
        assert (await http.get("/console")).status_code == 401
        assert (await http.get("/console", auth=("ops", "not-the-token-at-all"))).status_code == 401
        refused = await http.post(
            "/console/action", data={"inbox_id": inbox_id, "op": "pause"}, auth=("ops", token)
        )
        assert refused.status_code == 403

    context = await browser.new_context(
        http_credentials={"username": "ops", "password": token}, viewport={"width": 1366, "height": 900}
    )
    page = await context.new_page()
    page.set_default_timeout(20_000)
    page.on("dialog", lambda d: d.accept())

    # Empty list, then the connect form with a preset chosen: its server details are filled in.
    await page.goto(f"{base}/console")
    assert "No inboxes yet" in await page.content()
    await page.goto(f"{base}/console/connect")
    await page.select_option("#f-provider", "fastmail")
    assert await page.input_value("#f-imap-host") == "imap.fastmail.com"
    await page.screenshot(path=str(SHOTS / "console-connect.png"), full_page=True)
    # A provider that takes OAuth2 only: the OAuth2 fields replace the password.
    await page.select_option("#f-provider", "outlook")
    assert await page.is_visible("#f-oauth2-refresh-token")
    assert not await page.is_visible("#f-imap-password")
    assert "login.microsoftonline.com" in await page.input_value("#f-oauth2-token-endpoint")
    await page.screenshot(path=str(SHOTS / "console-connect-oauth2.png"), full_page=True)
    await page.check("#f-auth-password")

    # Custom server (the lab's Dovecot and Postfix), wrong password first.
    await page.select_option("#f-provider", "")
    await page.fill("#f-email", user.email)
    await page.fill("#f-display-name", "Console test inbox")
    await page.fill("#f-imap-host", mail_lab.host)
    await page.fill("#f-imap-port", str(mail_lab.imaps_port))
    await page.select_option("#f-imap-security", "tls")
    await page.fill("#f-smtp-host", mail_lab.host)
    await page.fill("#f-smtp-port", str(mail_lab.submission_port))
    await page.select_option("#f-smtp-security", "starttls")
    await page.fill("#f-imap-password", wrong)
    await page.fill("#f-inbox-id", inbox_id)
    await page.fill("#f-additional-from", f"alias-{uuid.uuid4().hex[:6]}@{mail_lab.domain}")
    await page.select_option("#f-sharing", "metadata")
    await page.check("#f-sent-copy-never")
    await page.get_by_role("button", name="Test connection").click()
    login = page.locator('[data-step="login"]')
    await login.and_(page.locator('[data-state="failed"]')).wait_for()
    text = await login.inner_text()
    assert "auth.invalid_credentials" in text
    assert "app password" in text  # the hint from onboarding
    assert await page.get_attribute("#f-imap-password", "aria-invalid") == "true"
    described = await page.get_attribute("#f-imap-password", "aria-describedby")
    assert described and (await page.inner_text(f"#{described}")).strip()
    assert await page.get_attribute('[data-step="connect"]', "data-state") == "ok"
    assert await page.get_attribute('[data-step="tls"]', "data-state") == "ok"
    assert wrong not in await page.content()
    await page.screenshot(path=str(SHOTS / "console-wrong-password.png"), full_page=True)

    # Saving a failing inbox is refused (no force); nothing is stored.
    await page.fill("#f-imap-password", wrong)
    await page.get_by_role("button", name="Save inbox").click()
    await page.wait_for_selector('[data-step="login"][data-state="failed"]')
    assert "Not saved" in await page.content()
    assert wrong not in await page.content()
    db = mongo[fetcher.database]
    assert await db["inboxes"].find_one({"_id": f"{tenant}:{inbox_id}"}) is None

    # Fixed: the test passes, then saving leads to the inbox table.
    await page.fill("#f-imap-password", user.password)
    await page.get_by_role("button", name="Test connection").click()
    await page.wait_for_selector('[data-step="smtp"][data-state="ok"]')
    assert await page.get_attribute('[data-step="folders"]', "data-state") == "ok"
    assert await page.get_attribute("#f-imap-password", "aria-invalid") is None
    await page.get_by_role("button", name="Save inbox").click()
    await page.wait_for_url("**/console?saved=*")
    row = page.locator(f'tr[data-inbox="{inbox_id}"]')
    await row.wait_for()
    await page.screenshot(path=str(SHOTS / "console-inboxes-syncing.png"), full_page=True)

    # Live progress (polling, no reload) reaches 100 %.
    await row.locator('[data-percent="100"]').wait_for(timeout=45_000)
    assert f"{SEEDED} messages" in await row.inner_text()
    await row.locator('[data-cell="messages"]', has_text=str(SEEDED)).wait_for()  # stored messages
    await page.screenshot(path=str(SHOTS / "console-inboxes-synced.png"), full_page=True)
    stored = await db["inboxes"].find_one({"_id": f"{tenant}:{inbox_id}"})
    assert stored is not None and stored["sharing"] == "metadata" and stored["sent_copy"] == "never"
    assert user.password not in await page.content()

    # Pause and resume through the same path as inbox commands (registry status + events).
    await row.get_by_role("button", name=f"Pause {inbox_id}").click()
    await page.wait_for_url("**/console?*done=paused*")
    await row.locator(".s-paused").wait_for()
    stored = await db["inboxes"].find_one({"_id": f"{tenant}:{inbox_id}"})
    assert stored is not None and stored["status"] == "paused"
    await page.screenshot(path=str(SHOTS / "console-paused.png"), full_page=True)
    await row.get_by_role("button", name=f"Resume {inbox_id}").click()
    await page.wait_for_url("**/console?*done=resumed*")
    stored = await db["inboxes"].find_one({"_id": f"{tenant}:{inbox_id}"})
    assert stored is not None and stored["status"] != "paused"
    assert await row.locator(".s-paused").count() == 0

    # Detail: folders with cursors and the events the inbox produced.
    await page.click(f'tr[data-inbox="{inbox_id}"] a')
    await page.wait_for_selector("#folders")
    detail = await page.inner_text("main")
    deadline = time.monotonic() + 20
    while "mailsync.inbox.reactivated" not in detail and time.monotonic() < deadline:
        await page.wait_for_timeout(500)  # the events arrive through Kafka: reload until they are in
        await page.reload()
        detail = await page.inner_text("main")
    assert "INBOX" in detail and f"done ({SEEDED} messages)" in detail
    for kind in ("connected", "initial_sync_completed", "paused", "reactivated"):
        assert f"mailsync.inbox.{kind}" in detail
    await page.screenshot(path=str(SHOTS / "console-inbox-detail.png"), full_page=True)

    # Retest from the detail page: the stored (encrypted) credentials are tested again.
    await page.get_by_role("button", name=f"Retest {inbox_id}").click()
    await page.wait_for_selector('#test-result [data-step="smtp"][data-state="ok"]')
    assert "Connection test passed" in await page.inner_text("#test-result")

    # Another tenant's user sees nothing of this inbox.
    async with httpx.AsyncClient(base_url=base, timeout=20, auth=("other", f"{token}-b")) as other:
        assert (await other.get("/console/api/inboxes")).json()["rows"] == []
        assert (await other.get("/console/inbox", params={"id": inbox_id})).status_code == 404

    # Keyboard only: type into the fields, Enter runs the connection test, the bad field is marked.
    await page.goto(f"{base}/console/connect")
    await page.focus("#f-email")
    await page.keyboard.type(user.email)
    await page.focus("#f-imap-host")
    await page.keyboard.type(mail_lab.host)
    await page.keyboard.press("Tab")  # → IMAP port
    await page.keyboard.type("99999")
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#f-imap-port[aria-invalid=true]")
    assert "port" in await page.inner_text("#err-f-imap-port")

    # Remove (after a confirmation dialog, accepted above): the inbox stays listed as removed.
    await page.goto(f"{base}/console")
    await row.get_by_role("button", name=f"Remove {inbox_id}").click()
    await page.wait_for_url("**/console?*done=removed*")
    await row.locator(".s-removed").wait_for()

    await context.close()
    assert time.monotonic() - started < 90
