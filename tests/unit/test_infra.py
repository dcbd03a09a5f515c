"""infra/main.bicep deploys the same tables, queues and settings the code and local.settings.json use."""

from __future__ import annotations

import json
import re

from core.settings import PROJECT_ROOT, Settings
from core.storage import ALL_QUEUES, ALL_TABLES, POISON_SUFFIX

BICEP = (PROJECT_ROOT / "infra" / "main.bicep").read_text()


def bicep_list(name: str) -> list[str]:
    match = re.search(rf"^var {name} = \[(.*?)\]$", BICEP, re.MULTILINE)
    assert match, f"var {name} not found"
    return re.findall(r"'([^']+)'", match.group(1))


def test_bicep_creates_every_table_the_code_uses():
    assert sorted(bicep_list("tables")) == sorted(ALL_TABLES)


def test_bicep_creates_every_queue_and_its_poison_twin():
    assert sorted(bicep_list("queues")) == sorted([*ALL_QUEUES, *(q + POISON_SUFFIX for q in ALL_QUEUES)])


def test_bicep_app_settings_are_the_values_of_local_settings_example():
    assert "loadJsonContent('../local.settings.json.example').Values" in BICEP
    values = json.loads((PROJECT_ROOT / "local.settings.json.example").read_text())["Values"]
    aliases = {field.alias for field in Settings.model_fields.values()}
    overridden = re.findall(r"^  ([A-Z_]+): ", BICEP, re.MULTILINE)
    assert set(overridden) <= set(values) and set(overridden) <= aliases | {"AzureWebJobsStorage"}


def test_bicep_keeps_the_delivery_logs_container():
    assert "name: 'delivery-logs'" in BICEP
