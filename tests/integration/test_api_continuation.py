"""Continuation tokens are signed: only a token the server issued, for this list and tenant, pages.

A forged token (``eyJub3QiOiJ5b3VycyJ9`` is base64 of ``{"not":"yours"}``) used to answer 200
with an empty page; it is a 400 naming ``continuation`` on every paged endpoint.
"""

from __future__ import annotations

import pytest

from core.ids import new_id
from core.models import Job
from core.storage import JOBS
from tests.integration.conftest import random_email

V1 = "/api/v1"
FORGED = "eyJub3QiOiJ5b3VycyJ9"


@pytest.fixture
def resources(client, tenant, campaign_body, storage) -> dict[str, str]:
    """One campaign, one job of it and one contact, so every paged route has something to list."""
    campaign = client.post(f"{V1}/campaigns", json=campaign_body(), headers=tenant.headers).json()
    job = Job(id=new_id(), tenant_id=tenant.id, campaign_id=campaign["id"], campaign_name="n", template={},
              criteria={})
    storage.table(JOBS).insert(job.to_entity())
    client.post(f"{V1}/contacts", json=[{"email": random_email()}], headers=tenant.headers)
    contact = client.get(f"{V1}/contacts", headers=tenant.headers).json()["items"][0]
    return {"campaign": campaign["id"], "job": job.id, "contact": contact["id"]}


PAGED = [
    "/contacts",
    "/contacts?list=alumni",
    "/campaigns",
    "/campaigns/{campaign}/jobs",
    "/jobs/{job}/deliveries",
    "/contacts/{contact}/deliveries",
    "/suppressions",
    "/tenants",
]


def headers_for(path: str, tenant, admin) -> dict[str, str]:
    return admin if path == "/tenants" else tenant.headers


def with_token(path: str, token: str) -> str:
    return f"{path}{'&' if '?' in path else '?'}continuation={token}"


@pytest.mark.parametrize("path", PAGED)
def test_a_forged_continuation_is_400_naming_continuation(client, tenant, admin, resources, path):
    url = V1 + with_token(path.format(**resources), FORGED)
    response = client.get(url, headers=headers_for(path, tenant, admin))
    assert response.status_code == 400, response.text
    assert [d["field"] for d in response.json()["error"]["details"]] == ["continuation"]


@pytest.mark.parametrize("path", ["/contacts", "/contacts?list=alumni"])
def test_a_token_the_server_issued_pages_through_every_item_once(client, tenant, path):
    rows = [{"email": random_email(), "lists": ["alumni"]} for _ in range(7)]
    assert client.post(f"{V1}/contacts", json=rows, headers=tenant.headers).status_code == 200
    seen, token, pages = [], None, 0
    while True:
        url = f"{V1}{path}{'&' if '?' in path else '?'}limit=3" + (f"&continuation={token}" if token else "")
        page = client.get(url, headers=tenant.headers)
        assert page.status_code == 200, page.text
        seen += [c["email"] for c in page.json()["items"]]
        token, pages = page.json()["continuation"], pages + 1
        if not token:
            break
    assert sorted(seen) == sorted(r["email"] for r in rows) and pages >= 3


def first_token(client, headers, path: str) -> str:
    token = client.get(f"{V1}{path}", params={"limit": 1}, headers=headers).json()["continuation"]
    assert token
    return token


def test_a_token_of_tenant_a_is_400_for_tenant_b(client, new_tenant):
    a, b = new_tenant(), new_tenant()
    for owner in (a, b):
        rows = [{"email": random_email()} for _ in range(2)]
        client.post(f"{V1}/contacts", json=rows, headers=owner.headers)
    token = first_token(client, a.headers, "/contacts")

    replayed = client.get(f"{V1}/contacts", params={"continuation": token}, headers=b.headers)

    assert replayed.status_code == 400, replayed.text
    assert replayed.json()["error"]["details"][0]["field"] == "continuation"


def test_a_token_of_one_list_is_400_on_another(client, tenant, campaign_body):
    for _ in range(2):
        client.post(f"{V1}/campaigns", json=campaign_body(), headers=tenant.headers)
        client.post(f"{V1}/contacts", json=[{"email": random_email()}], headers=tenant.headers)
    token = first_token(client, tenant.headers, "/campaigns")

    replayed = client.get(f"{V1}/contacts", params={"continuation": token}, headers=tenant.headers)

    assert replayed.status_code == 400
    assert replayed.json()["error"]["details"][0]["field"] == "continuation"


def test_an_altered_token_is_400(client, tenant, campaign_body):
    for _ in range(2):
        client.post(f"{V1}/campaigns", json=campaign_body(), headers=tenant.headers)
    token = first_token(client, tenant.headers, "/campaigns")
    payload, _, mac = token.partition(".")
    other = "B" if payload[0] == "A" else "A"

    altered = client.get(f"{V1}/campaigns", params={"continuation": f"{other}{payload[1:]}.{mac}"},
                         headers=tenant.headers)

    assert altered.status_code == 400
