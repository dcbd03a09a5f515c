"""Signed unsubscribe tokens: verifiable without a lookup (HMAC with MAILROOM_SIGNING_KEY)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass


@dataclass(frozen=True)
class UnsubscribeClaim:
    tenant_id: str
    contact_id: str
    campaign_id: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(signing_key: str, claim: UnsubscribeClaim) -> str:
    payload = f"{claim.tenant_id}.{claim.contact_id}.{claim.campaign_id}".encode()
    mac = hmac.new(signing_key.encode(), payload, hashlib.sha256).digest()[:16]
    return f"{_b64(payload)}.{_b64(mac)}"


def read_token(signing_key: str, token: str) -> UnsubscribeClaim | None:
    """The claim inside a token, or ``None`` when it was not signed by us."""
    try:
        payload_b64, mac_b64 = token.split(".", 1)
        payload = _unb64(payload_b64)
        expected = hmac.new(signing_key.encode(), payload, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(expected, _unb64(mac_b64)):
            return None
        tenant_id, contact_id, campaign_id = payload.decode().split(".")
    except ValueError:
        return None
    return UnsubscribeClaim(tenant_id, contact_id, campaign_id)


def unsubscribe_url(public_url: str, signing_key: str, claim: UnsubscribeClaim) -> str:
    return f"{public_url.rstrip('/')}/api/v1/unsubscribe/{make_token(signing_key, claim)}"


def one_click_headers(url: str) -> dict[str, str]:
    """RFC 8058 headers every campaign email carries (and every preview shows)."""
    return {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
