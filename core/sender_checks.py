"""Sender checks: does a from_email domain publish SPF, DKIM and an aligned DMARC policy?

Gmail and Yahoo refuse or junk bulk mail from domains without them, and a campaign sent
from such a domain burns the shared provider account's reputation for every tenant. So a
campaign is checked when it is scheduled (``POST /campaigns/{id}/schedule``, when
``SENDER_CHECKS`` is on) and refused naming the failing record; the operator may override.

What counts as passing (through DNS, ``dnspython``):

- **SPF**: exactly one ``v=spf1`` TXT record at the domain (two are a permanent error for
  receivers), and not one that authorizes nobody (``v=spf1 -all``);
- **DKIM**: a TXT record with a non-empty public key (``p=``) at
  ``<selector>._domainkey.<domain>`` for one of ``DKIM_SELECTORS`` (CNAMEs, as SendGrid's
  branded domains use, are followed by the resolver);
- **DMARC**: a ``v=DMARC1`` TXT record at ``_dmarc.<domain>``, else at the organizational
  domain (the last two labels: a simplification of the public suffix list). Alignment holds
  because SPF and DKIM are checked at the from_email domain itself; with ``adkim=s`` or
  ``aspf=s`` an organizational-domain record would need the exact domain, so a strict
  record found only at the organizational domain of a subdomain fails alignment.

``DNS_RESOLVER`` (``host:port``) points the checks at one DNS server (tests run a local
one); empty uses the system's resolvers. A lookup that times out or fails is a failure
naming the record ("could not be checked"), never a pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.exception
import dns.resolver

from core.errors import FieldProblem, InvalidInput
from core.settings import Settings


@dataclass(frozen=True)
class RecordProblem:
    """One failing record: ``record`` is ``SPF``, ``DKIM`` or ``DMARC``."""

    record: str
    message: str

    def __str__(self) -> str:
        return f"{self.record}: {self.message}"


class _Lookup:
    def __init__(self, settings: Settings) -> None:
        resolver = dns.resolver.Resolver(configure=not settings.dns_resolver)
        if settings.dns_resolver:
            host, _, port = settings.dns_resolver.rpartition(":")
            resolver.nameservers = [host or settings.dns_resolver]
            resolver.port = int(port) if host and port else 53
        resolver.lifetime = settings.dns_timeout_seconds
        resolver.timeout = settings.dns_timeout_seconds
        self.resolver = resolver

    def txt(self, name: str) -> list[str] | None:
        """The TXT strings at ``name`` (``[]``: none), ``None`` when DNS could not answer."""
        try:
            answer = self.resolver.resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.exception.DNSException):
            return None
        return [b"".join(record.strings).decode("utf-8", "replace") for record in answer]


def check_sender_domain(domain: str, settings: Settings) -> list[RecordProblem]:
    """Every record the domain fails (``[]``: it may send)."""
    domain = domain.strip().lower().rstrip(".")
    lookup = _Lookup(settings)
    problems = [
        *check_spf(lookup, domain),
        *check_dkim(lookup, domain, _selectors(settings)),
        *check_dmarc(lookup, domain),
    ]
    return problems


def check_spf(lookup: _Lookup, domain: str) -> list[RecordProblem]:
    records = lookup.txt(domain)
    if records is None:
        return [RecordProblem("SPF", f"the TXT records of {domain} could not be looked up")]
    spf = [r for r in records if r.lower().startswith("v=spf1")]
    if not spf:
        return [RecordProblem("SPF", f"no v=spf1 TXT record at {domain}")]
    if len(spf) > 1:
        return [RecordProblem("SPF", f"{len(spf)} v=spf1 TXT records at {domain} (receivers need one)")]
    if spf[0].lower().split()[1:] in ([], ["-all"]):
        return [RecordProblem("SPF", f"the SPF record of {domain} authorizes no sender")]
    return []


def check_dkim(lookup: _Lookup, domain: str, selectors: list[str]) -> list[RecordProblem]:
    unreachable = False
    for selector in selectors:
        records = lookup.txt(f"{selector}._domainkey.{domain}")
        if records is None:
            unreachable = True
            continue
        for record in records:
            tags = _tags(record)
            if tags.get("p"):
                return []
    names = ", ".join(f"{s}._domainkey.{domain}" for s in selectors)
    if unreachable:
        return [RecordProblem("DKIM", f"selector {selectors[0]}: {names} could not be looked up")]
    return [RecordProblem("DKIM", f"selector {', '.join(selectors)}: no DKIM public key (p=) at {names}")]


def check_dmarc(lookup: _Lookup, domain: str) -> list[RecordProblem]:
    organizational = ".".join(domain.split(".")[-2:])
    names = [domain] + ([organizational] if organizational != domain else [])
    for name in names:
        records = lookup.txt(f"_dmarc.{name}")
        if records is None:
            return [RecordProblem("DMARC", f"_dmarc.{name} could not be looked up")]
        dmarc = [r for r in records if r.replace(" ", "").lower().startswith("v=dmarc1")]
        if not dmarc:
            continue
        tags = _tags(dmarc[0])
        if tags.get("p", "").lower() not in ("none", "quarantine", "reject"):
            return [RecordProblem("DMARC", f"the DMARC record at _dmarc.{name} has no valid p= policy")]
        strict = "s" in (tags.get("adkim", "r").lower(), tags.get("aspf", "r").lower())
        if name != domain and strict:
            return [RecordProblem("DMARC", f"the strict DMARC policy of {name} does not align with {domain}")]
        return []
    return [RecordProblem("DMARC", f"no v=DMARC1 TXT record at _dmarc.{domain}")]


def _tags(record: str) -> dict[str, str]:
    tags = {}
    for part in record.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            tags[name.strip().lower()] = value.strip()
    return tags


def _selectors(settings: Settings) -> list[str]:
    return [s.strip() for s in settings.dkim_selectors.split(",") if s.strip()] or ["s1"]


def require_passing_sender(from_email: str, settings: Settings, field: str) -> None:
    """``InvalidInput`` naming ``field`` and every failing record when the domain fails the checks."""
    domain = from_email.rpartition("@")[2]
    problems = check_sender_domain(domain, settings)
    if problems:
        named = "; ".join(str(p) for p in problems)
        raise InvalidInput(f"the sender domain {domain} fails sender checks: {named}",
                           [FieldProblem(field, str(p)) for p in problems])
