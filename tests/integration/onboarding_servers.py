"""Small real servers the onboarding tests talk to: a DNS responder, an HTTP server for autoconfig
files, and an OAuth2 authorization server (token endpoint + RFC 7662 introspection for Dovecot)."""

from __future__ import annotations

import json
import secrets
import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dns.flags
import dns.message
import dns.rcode
import dns.rrset


class DnsResponder:
    """Authoritative answers from a dict `{(name, type): [rdata text]}` over UDP on 127.0.0.1."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.queries: list[tuple[str, str]] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                try:
                    query = dns.message.from_wire(data)
                except Exception:
                    return
                response = dns.message.make_response(query)
                response.flags |= dns.flags.AA
                question = query.question[0]
                name = question.name.to_text().rstrip(".").lower()
                rdtype = dns.rdatatype.to_text(question.rdtype)
                outer.queries.append((name, rdtype))
                answers = outer.records.get((name, rdtype))
                if answers:
                    response.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", rdtype, answers))
                elif not any(n == name for n, _ in outer.records):
                    response.set_rcode(dns.rcode.NXDOMAIN)
                sock.sendto(response.to_wire(), self.client_address)

        self.server = socketserver.ThreadingUDPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, name: str, rdtype: str, *rdata: str) -> None:
        self.records.setdefault((name.lower().rstrip("."), rdtype), []).extend(rdata)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HttpFiles:
    """Serves `{(host, path): body}` on 127.0.0.1 (the Host header picks the virtual host)."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], bytes] = {}
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = (self.headers.get("host") or "").split(":")[0].lower()
                path = urlsplit(self.path).path
                outer.requests.append((host, path))
                body = outer.files.get((host, path))
                self.send_response(200 if body is not None else 404)
                self.send_header("content-type", "application/xml")
                self.end_headers()
                self.wfile.write(body or b"not found")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class AuthServer:
    """OAuth2 token endpoint (`/token`, refresh grant) and introspection (`/introspect`) for Dovecot."""

    port: int
    access_ttl: int = 3600
    access: dict[str, dict[str, Any]] = field(default_factory=dict)  # token → {username, exp, active}
    refresh: dict[str, dict[str, Any]] = field(default_factory=dict)  # token → {username, revoked}
    token_requests: list[dict[str, str]] = field(default_factory=list)
    introspections: int = 0

    def issue_refresh(self, username: str) -> str:
        token = "rt-" + secrets.token_urlsafe(24)
        self.refresh[token] = {"username": username, "revoked": False}
        return token

    def issue_access(self, username: str, ttl: int | None = None) -> str:
        token = "at-" + secrets.token_urlsafe(24)
        self.access[token] = {
            "username": username,
            "exp": time.time() + (ttl or self.access_ttl),
            "active": True,
        }
        return token

    def revoke(self, username: str) -> None:
        for rec in (*self.refresh.values(), *self.access.values()):
            if rec["username"] == username:
                rec["revoked"] = True
                rec["active"] = False

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _json(self, status: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                form = {k: v[-1] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                path = urlsplit(self.path).path
                if path == "/token":
                    outer.token_requests.append(form)
                    rec = outer.refresh.get(form.get("refresh_token", ""))
                    if form.get("grant_type") != "refresh_token" or rec is None or rec["revoked"]:
                        self._json(400, {"error": "invalid_grant", "error_description": "token revoked"})
                        return
                    token = outer.issue_access(rec["username"])
                    self._json(
                        200, {"access_token": token, "token_type": "Bearer", "expires_in": outer.access_ttl}
                    )
                elif path == "/introspect":
                    outer.introspections += 1
                    rec = outer.access.get(form.get("token", ""))
                    if rec is None or not rec["active"] or rec["exp"] < time.time():
                        self._json(200, {"active": False})
                        return
                    self._json(200, {"active": True, "username": rec["username"], "scope": "mail"})
                else:
                    self._json(404, {"error": "not_found"})

            def log_message(self, *args: Any) -> None:
                pass

        try:
            self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        except OSError as exc:
            raise RuntimeError(
                f"port {self.port} (OAUTH2_INTROSPECTION_PORT, for Dovecot) is busy: {exc}"
            ) from None
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def token_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
