"""The storage SDK's HTTP session reads the environment only when the environment says something."""

from __future__ import annotations

import pytest

from core.storage import _ENVIRONMENT_SETTINGS, sdk_transport


@pytest.fixture
def bare_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _ENVIRONMENT_SETTINGS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def test_without_proxy_or_ca_settings_the_session_does_not_look_at_the_environment(bare_environment):
    assert sdk_transport().session.trust_env is False


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "https_proxy", "REQUESTS_CA_BUNDLE", "NO_PROXY"])
def test_a_proxy_or_ca_bundle_in_the_environment_is_honoured(bare_environment, name):
    bare_environment.setenv(name, "http://proxy.internal:3128")

    assert sdk_transport().session.trust_env is True
