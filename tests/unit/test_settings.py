"""Settings: environment first, then local.settings.json, then defaults; one line on error."""

from __future__ import annotations

import json

import pytest

from core.errors import SettingsError
from core.settings import load_settings


@pytest.fixture
def local_settings(tmp_path, monkeypatch):
    path = tmp_path / "local.settings.json"
    monkeypatch.setenv("MAILROOM_LOCAL_SETTINGS", str(path))

    def write(values: dict) -> None:
        path.write_text(json.dumps({"IsEncrypted": False, "Values": values}))

    return write


def test_environment_wins_over_local_settings_json(local_settings, monkeypatch):
    local_settings({"MAILROOM_ADMIN_KEY": "from-file", "TASK_SIZE": "250"})
    monkeypatch.setenv("MAILROOM_ADMIN_KEY", "from-env")
    settings = load_settings()
    assert settings.admin_key == "from-env" and settings.task_size == 250


def test_a_malformed_setting_is_one_line_naming_it(local_settings, monkeypatch):
    local_settings({})
    monkeypatch.setenv("TASK_SIZE", "lots")
    with pytest.raises(SettingsError, match="TASK_SIZE"):
        load_settings()


def test_development_storage_shortcut_expands_to_azurite_endpoints(local_settings, monkeypatch):
    local_settings({"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    monkeypatch.delenv("AzureWebJobsStorage", raising=False)
    assert "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1" in load_settings().connection_string
