"""The CLI's view of the REST API: base URL and key from the environment, errors as one line.

``MAILROOM_URL`` is where the app answers (``http://127.0.0.1:7071`` locally; ``/api/v1`` is
added when missing), ``MAILROOM_KEY`` the bearer key, and ``MAILROOM_TENANT`` the tenant an
operator-wide key acts on (sent as ``X-Mailroom-Tenant``). The key is never printed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx

API_PATH = "/api/v1"
DEFAULT_URL = "http://127.0.0.1:7071"


class ApiFailure(Exception):
    """An API answer of 4xx/5xx, or no answer: the CLI prints ``message`` and exits non-zero."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def api_base(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith(API_PATH) else url + API_PATH


class MailroomApi:
    """A thin client: one method per HTTP verb, JSON in and out, ``ApiFailure`` on errors."""

    def __init__(self, http: httpx.Client, key: str, tenant: str | None = None) -> None:
        self.http = http
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        if tenant:
            self.headers["X-Mailroom-Tenant"] = tenant

    @classmethod
    def from_environment(cls, tenant: str | None = None) -> MailroomApi:
        url = os.environ.get("MAILROOM_URL", DEFAULT_URL)
        key = os.environ.get("MAILROOM_KEY", "")
        if not key:
            raise ApiFailure("set MAILROOM_KEY to an API key (and MAILROOM_URL to the app's address)")
        http = httpx.Client(base_url=api_base(url), timeout=60)
        return cls(http, key, tenant or os.environ.get("MAILROOM_TENANT") or None)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        path = path if self.http.base_url.path.rstrip("/").endswith(API_PATH) else API_PATH + path
        headers = {**self.headers, **kwargs.pop("headers", {})}
        try:
            response = self.http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as err:
            raise ApiFailure(f"no answer from {self.http.base_url}: {type(err).__name__}") from err
        if response.status_code >= 400:
            raise ApiFailure(describe_error(response), response.status_code)
        if not response.content:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Any:
        return self.request("PATCH", path, **kwargs)

    def pages(self, path: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every item of a paged list, following ``continuation``."""
        params = dict(params or {})
        while True:
            page = self.get(path, params=params)
            yield from page["items"]
            if not page.get("continuation"):
                return
            params["continuation"] = page["continuation"]


def describe_error(response: httpx.Response) -> str:
    """``409 state_conflict: a draft campaign …`` (+ field details) from the API's error body."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code}: {response.text[:200]}"
    text = f"{response.status_code} {error.get('code', '')}: {error.get('message', '')}"
    details = "; ".join(f"{d.get('field')}: {d.get('message')}" for d in error.get("details", []))
    return f"{text} ({details})" if details else text
