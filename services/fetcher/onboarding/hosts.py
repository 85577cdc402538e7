"""User-supplied hosts are untrusted: resolve them once, refuse internal addresses, connect to the IP.

`address_refusal` is the pure decision; `HostResolver` does the DNS I/O (dnspython, bounded timeout,
optionally pointed at a given nameserver). Connecting to the checked IP (with the name kept for TLS
SNI and certificate checks) means a second DNS answer cannot swap in an internal address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_allow_list(items: Iterable[str]) -> list[Network]:
    """`127.0.0.1`, `10.0.0.0/8`, `::1` → networks; a bad entry is a configuration error."""
    return [ipaddress.ip_network(item.strip(), strict=False) for item in items if item.strip()]


def address_refusal(ip: IPAddress, allow: list[Network]) -> str | None:
    """Why connecting to `ip` is refused, or None when it is allowed."""
    if any(ip in net for net in allow):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return address_refusal(ip.ipv4_mapped, allow)
    for attr, what in (
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_private", "a private address"),
        ("is_multicast", "a multicast address"),
        ("is_unspecified", "an unspecified address"),
        ("is_reserved", "a reserved address"),
    ):
        if getattr(ip, attr):
            return what
    return None


class HostError(Exception):
    """DNS failure or refused address; `code` is one of the onboarding error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Resolved:
    host: str
    ip: str


class HostResolver:
    def __init__(
        self,
        allow: list[Network],
        *,
        timeout: float = 5.0,
        nameservers: list[str] | None = None,
        port: int = 53,
    ) -> None:
        self.allow = allow
        self.timeout = timeout
        self.dns = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            self.dns.nameservers = nameservers
            self.dns.port = port
        self.dns.lifetime = timeout
        self.dns.timeout = min(timeout, 2.0)

    async def resolve(self, host: str) -> Resolved:
        """The first allowed address of `host` (an IP literal is checked as is)."""
        host = host.strip().rstrip(".").lower()
        try:
            literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            ips = [literal]
        else:
            ips = await self._lookup(host)
        reasons: list[str] = []
        for ip in ips:
            why = address_refusal(ip, self.allow)
            if why is None:
                return Resolved(host, str(ip))
            reasons.append(f"{ip} is {why}")
        raise HostError("host.refused", f"{host}: {'; '.join(reasons)}; only public mail servers are allowed")

    async def _lookup(self, host: str) -> list[IPAddress]:
        out: list[IPAddress] = []
        failures: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self.dns.resolve(host, rdtype, search=False)
            except dns.resolver.NXDOMAIN:
                raise HostError("dns.not_found", f"{host} does not exist in DNS") from None
            except (dns.resolver.NoAnswer, dns.resolver.NoNameservers):
                continue
            except dns.exception.Timeout:
                failures.append("timeout")
                continue
            except dns.exception.DNSException as exc:
                failures.append(type(exc).__name__)
                continue
            out += [ipaddress.ip_address(r.to_text()) for r in answer]
        if out:
            return out
        if failures:
            raise HostError("dns.failed", f"looking up {host} failed ({', '.join(failures)})")
        raise HostError("dns.not_found", f"{host} has no address records")

    async def query(self, name: str, rdtype: str) -> list[str]:
        """Raw records as text for autodiscovery (SRV, MX); empty on any DNS failure."""
        try:
            answer = await self.dns.resolve(name, rdtype, search=False)
        except dns.exception.DNSException:
            return []
        return [r.to_text() for r in answer]
