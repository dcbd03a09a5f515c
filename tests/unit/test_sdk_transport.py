"""The storage SDK's HTTP session reads the environment only when the environment says something."""

from __future__ import annotations

import pytest

from core.storage import _CA_BUNDLE_SETTINGS, _ENVIRONMENT_SETTINGS, sdk_transport


@pytest.fixture
def bare_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (*_ENVIRONMENT_SETTINGS, *_CA_BUNDLE_SETTINGS):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def test_without_proxy_or_ca_settings_the_session_does_not_look_at_the_environment(bare_environment):
    assert sdk_transport().session.trust_env is False


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "https_proxy", "NO_PROXY", "NETRC"])
def test_a_proxy_or_netrc_in_the_environment_is_honoured(bare_environment, name):
    bare_environment.setenv(name, "http://proxy.internal:3128")

    assert sdk_transport().session.trust_env is True


@pytest.mark.parametrize("name", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_a_ca_bundle_alone_is_the_sessions_verify_without_the_environment_lookup(bare_environment, name):
    bare_environment.setenv(name, "/etc/ssl/certs/ca-certificates.crt")

    session = sdk_transport().session

    assert session.trust_env is False and session.verify == "/etc/ssl/certs/ca-certificates.crt"


def test_the_requests_bundle_wins_over_curls_as_in_requests(bare_environment):
    bare_environment.setenv("CURL_CA_BUNDLE", "/curl.pem")
    bare_environment.setenv("REQUESTS_CA_BUNDLE", "/requests.pem")

    assert sdk_transport().session.verify == "/requests.pem"
