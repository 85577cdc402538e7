"""`python -m services.fetcher.onboarding VERB`: the admin API's verbs from a terminal, and `rotate-key`.

Verbs talk to a running fetcher's admin API (`--url`, default `$MAILSYNC_ADMIN_URL` or
http://127.0.0.1:8081). Secrets are never taken from the command line (they would land in shell
history and `ps`): the password comes from a prompt, `--password-stdin` or `--password-env VAR`;
OAuth2 tokens from `--refresh-token-env VAR` / `--client-secret-env VAR`.

    add --owner u1 --email ann@example.com --provider gmail --password-env APP_PW
    add --owner u1 --email bob@corp.example --imap mail.corp.example:993:tls \\
        --smtp mail.corp.example:587:starttls          (password prompted)
    test|show|pause|resume|remove --inbox-id ID     list [--owner u1]
    update --inbox-id ID [--imap ...] [--password-env VAR] [--display-name ...]
    presets | discover EMAIL
    rotate-key        re-encrypt every stored secret under MAILSYNC_CREDENTIALS_PRIMARY_KEY_ID (direct DB)
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from typing import Any

import httpx

from mailsync.credentials import CredentialKeyError, Keyring
from mailsync.settings import ServiceSettings
from mailsync.store import database, make_client

from .inboxes import rotate_keys


def _server(spec: str) -> dict[str, Any]:
    host, _, rest = spec.partition(":")
    port, _, security = rest.partition(":")
    if not host or not port.isdigit() or security not in ("tls", "starttls", "plain"):
        raise SystemExit(f"server {spec!r}: expected HOST:PORT:tls|starttls|plain")
    return {"host": host, "port": int(port), "security": security}


def _secret(args: argparse.Namespace, env_name: str | None, stdin: bool, prompt: str | None) -> str | None:
    if env_name:
        value = os.environ.get(env_name)
        if not value:
            raise SystemExit(f"environment variable {env_name} is empty")
        return value
    if stdin:
        return sys.stdin.readline().rstrip("\n")
    if prompt and sys.stdin.isatty():
        return getpass.getpass(prompt)
    return None


def _settings_body(args: argparse.Namespace, *, for_update: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name in ("email", "provider", "username", "display_name", "sharing", "sent_copy", "smtp_username"):
        value = getattr(args, name, None)
        if value is not None:
            body[name] = value
    if getattr(args, "imap", None):
        body["imap"] = _server(args.imap)
    if getattr(args, "smtp", None):
        body["smtp"] = _server(args.smtp)
    if getattr(args, "smtp_allow_plain", False):
        body["smtp_allow_plain"] = True
    if getattr(args, "separate_smtp", False):
        body["smtp_same_credentials"] = False
        body["smtp_password"] = _secret(args, args.smtp_password_env, False, "SMTP password: ")
    if getattr(args, "additional_from", None):
        body["additional_from"] = args.additional_from
    if getattr(args, "token_endpoint", None):
        refresh = _secret(args, args.refresh_token_env, args.password_stdin, "OAuth2 refresh token: ")
        body["oauth2"] = {
            "token_endpoint": args.token_endpoint,
            "client_id": args.client_id,
            "refresh_token": refresh,
        }
        if args.client_secret_env:
            body["oauth2"]["client_secret"] = _secret(args, args.client_secret_env, False, None)
        if args.scope:
            body["oauth2"]["scope"] = args.scope
    else:
        prompt = None if for_update else "Password (or app password): "
        password = _secret(
            args, getattr(args, "password_env", None), getattr(args, "password_stdin", False), prompt
        )
        if password is not None:
            body["password"] = password
    return body


def _print_result(status: int, doc: Any, as_json: bool) -> int:
    if as_json:
        print(json.dumps(doc, indent=2, default=str))
        return 0 if status < 400 else 1
    test = doc.get("test") if isinstance(doc, dict) else None
    if isinstance(doc, dict) and (
        "imap" in doc and isinstance(doc.get("imap"), dict) and "steps" in doc["imap"]
    ):
        test = doc
    if isinstance(test, dict):
        for proto in ("imap", "smtp"):
            res = test.get(proto)
            if not res:
                continue
            for step in res.get("steps", []):
                mark = "ok  " if step["ok"] else "FAIL"
                print(f"  {proto:4} {mark} {step['name']:<10} {step['detail']}")
    err = doc.get("error") if isinstance(doc, dict) else None
    if err:
        print(f"error: {err.get('code')}: {err.get('message')}")
        if err.get("field"):
            print(f"  fix:  {err['field']}")
        if err.get("hint"):
            print(f"  hint: {err['hint']}")
    if isinstance(doc, dict) and "inbox" in doc and doc.get("saved"):
        inbox = doc["inbox"]
        print(f"saved inbox {inbox['inbox_id']} ({inbox['email']}), status {inbox['status']}")
    elif isinstance(doc, dict) and not err and "test" not in doc and test is None:
        print(json.dumps(doc, indent=2, default=str))
    return 0 if status < 400 else 1


async def _rotate() -> int:
    try:
        keyring = Keyring.from_env()
    except CredentialKeyError as exc:
        print(f"rotate-key: {exc}", file=sys.stderr)
        return 2
    settings = ServiceSettings(service_name="fetcher")
    client = make_client(settings)
    try:
        report = await rotate_keys(database(client, settings), keyring)
    finally:
        await client.close()
    print(
        f"rotate-key: primary {keyring.primary}: {report.inboxes} inboxes, "
        f"{report.rotated} secrets re-encrypted, "
        f"{report.raced} changed concurrently (re-run to finish), {len(report.failed or [])} failed"
    )
    for line in report.failed or []:
        print(f"  failed: {line}", file=sys.stderr)
    return 1 if report.failed else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m services.fetcher.onboarding",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", default=os.environ.get("MAILSYNC_ADMIN_URL", "http://127.0.0.1:8081"))
    p.add_argument("--tenant", default=None)
    p.add_argument("--json", action="store_true", help="print the API's JSON answer")
    p.add_argument("--timeout", type=float, default=90.0)
    sub = p.add_subparsers(dest="verb", required=True)

    def settings_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--imap", help="HOST:PORT:tls|starttls")
        sp.add_argument("--smtp", help="HOST:PORT:tls|starttls|plain")
        sp.add_argument("--smtp-allow-plain", action="store_true")
        sp.add_argument("--username")
        sp.add_argument("--password-env", metavar="VAR")
        sp.add_argument("--password-stdin", action="store_true")
        sp.add_argument("--separate-smtp", action="store_true", help="SMTP has its own credentials")
        sp.add_argument("--smtp-username")
        sp.add_argument("--smtp-password-env", metavar="VAR")
        sp.add_argument("--token-endpoint", help="OAuth2: token endpoint URL")
        sp.add_argument("--client-id")
        sp.add_argument("--client-secret-env", metavar="VAR")
        sp.add_argument("--refresh-token-env", metavar="VAR")
        sp.add_argument("--scope")

    for verb in ("add", "test-settings"):
        sp = sub.add_parser(verb)
        sp.add_argument("--email", required=True)
        sp.add_argument("--provider", help="preset id (see `presets`)")
        settings_args(sp)
        if verb == "add":
            sp.add_argument("--owner", required=True)
            sp.add_argument("--inbox-id")
            sp.add_argument("--display-name")
            sp.add_argument("--additional-from", action="append")
            sp.add_argument("--sharing", choices=["private", "metadata", "subject", "full"])
            sp.add_argument("--sent-copy", choices=["auto", "always", "never"])
            sp.add_argument("--force", action="store_true", help="save even if the test fails")
    sp = sub.add_parser("update")
    sp.add_argument("--inbox-id", required=True)
    sp.add_argument("--display-name")
    sp.add_argument("--sharing", choices=["private", "metadata", "subject", "full"])
    sp.add_argument("--sent-copy", choices=["auto", "always", "never"])
    sp.add_argument("--force", action="store_true")
    settings_args(sp)
    for verb in ("test", "show", "pause", "resume", "remove"):
        sp = sub.add_parser(verb)
        sp.add_argument("--inbox-id", required=True)
        sp.add_argument("--reason")
    sp = sub.add_parser("list")
    sp.add_argument("--owner")
    sub.add_parser("presets")
    sp = sub.add_parser("discover")
    sp.add_argument("email")
    sub.add_parser("rotate-key", help="re-encrypt all stored credentials under the primary key")
    return p


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0912 - one branch per verb
    args = parser().parse_args(argv)
    if args.verb == "rotate-key":
        return asyncio.run(_rotate())
    q: dict[str, str] = {}
    if args.tenant:
        q["tenant_id"] = args.tenant
    if getattr(args, "inbox_id", None) and args.verb != "add":
        q["inbox_id"] = args.inbox_id
    method, path, body = "GET", "", None
    if args.verb == "presets":
        path = "/admin/presets"
    elif args.verb == "discover":
        method, path, body = "POST", "/admin/discover", {"email": args.email}
    elif args.verb == "list":
        path = "/admin/inboxes"
        if args.owner:
            q["owner_user_id"] = args.owner
    elif args.verb == "show":
        path = "/admin/inbox"
    elif args.verb in ("pause", "resume"):
        method, path, body = "POST", f"/admin/inbox/{args.verb}", {"reason": args.reason}
    elif args.verb == "remove":
        method, path, body = "DELETE", "/admin/inbox", {"reason": args.reason}
    elif args.verb == "test":
        method, path, body = "POST", "/admin/inbox/test", {}
    elif args.verb == "test-settings":
        method, path, body = "POST", "/admin/test", _settings_body(args)
    elif args.verb == "add":
        body = _settings_body(args)
        body.update({"owner_user_id": args.owner, "force": args.force})
        if args.tenant:
            body["tenant_id"] = args.tenant
        if args.inbox_id:
            body["inbox_id"] = args.inbox_id
        method, path = "POST", "/admin/inboxes"
    elif args.verb == "update":
        body = _settings_body(args, for_update=True)
        body["force"] = args.force
        method, path = "PATCH", "/admin/inbox"
    try:
        with httpx.Client(base_url=args.url, timeout=args.timeout) as client:
            resp = client.request(method, path, params=q, json=body)
    except httpx.HTTPError as exc:
        print(f"cannot reach the fetcher's admin API at {args.url}: {type(exc).__name__}", file=sys.stderr)
        return 2
    try:
        doc = resp.json()
    except ValueError:
        print(f"HTTP {resp.status_code}: not JSON", file=sys.stderr)
        return 1
    return _print_result(resp.status_code, doc, args.json)
