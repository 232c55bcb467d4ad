"""The app setting names are the same everywhere: the README's configuration reference (the spec), bridge/settings.py (what the app
reads), local.settings.sample.json (local development) and infra/main.bicep (Azure).

Allowed differences, and only these:
- platform settings that belong to Azure or the Functions host (APPLICATIONINSIGHTS_*, FUNCTIONS_*, WEBSITE_*, ...);
- a connection appears in its local connection-string form (`BridgeStorage`, `AzureWebJobsStorage`) locally and in
  its identity-based `PREFIX__property` form in Azure;
- RELAY_CA_FILE is local only (the emulator's CA; empty in Azure).
"""

from __future__ import annotations

import json
import re

from bridge import settings as app_settings_module
from tests.infra import bicep as b

PLATFORM = re.compile(
    r"^(APPLICATIONINSIGHTS_|FUNCTIONS_|WEBSITE_|SCM_|ENABLE_ORYX_BUILD$|AzureWebJobsFeatureFlags$|AzureWebJobsScriptRoot$)"
)
LOCAL_ONLY = {"RELAY_CA_FILE"}
IDENTITY_PROPERTIES = {"accountName", "queueServiceUri", "blobServiceUri", "tableServiceUri", "credential", "clientId"}
SAMPLE = b.REPO / "local.settings.sample.json"


def logical(name: str) -> str:
    """`BridgeStorage__queueServiceUri` -> `BridgeStorage`: the connection a setting belongs to."""
    return name.split("__", 1)[0]


def configuration_section() -> list[str]:
    """Lines of the README's "Configuration reference" section (the settings table)."""
    text = (b.REPO / "README.md").read_text()
    section = text.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    return section.splitlines()


def docs_names() -> set[str]:
    """Names in the README's configuration table (`(+ `__credential`, ...)` expands to the previous row's prefix)."""
    names: set[str] = set()
    for line in configuration_section():
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        prefix = None
        for token in re.findall(r"`([^`]+)`", first_cell):
            if token.startswith("__"):
                assert prefix, f"suffix {token} without a setting before it: {line}"
                names.add(prefix + token)
            else:
                names.add(token)
                prefix = logical(token)
    return names


def app_names() -> set[str]:
    return set(app_settings_module.SETTING_NAMES) | set(app_settings_module.HOST_SETTING_NAMES)


def bicep_names() -> set[str]:
    return set(b.app_settings())


def sample_names() -> set[str]:
    assert SAMPLE.is_file(), "local.settings.sample.json is missing (it documents the local settings)"
    return set(json.loads(SAMPLE.read_text())["Values"])


def test_docs_and_app_list_the_same_names():
    assert docs_names() == app_names()


def test_bicep_uses_only_documented_names():
    unknown = {n for n in bicep_names() if not PLATFORM.match(n)} - app_names()
    assert not unknown, f"main.bicep sets settings the app does not know: {sorted(unknown)}"


def test_bicep_sets_every_setting_the_app_reads_in_azure():
    missing = {logical(n) for n in app_names()} - LOCAL_ONLY - {logical(n) for n in bicep_names()}
    assert not missing, f"main.bicep lacks {sorted(missing)}"


def test_bicep_uses_identity_based_connections_only():
    names = bicep_names()
    connections = {logical(n) for n in app_names() if "__" in n}
    assert connections == {"BridgeStorage", "AzureWebJobsStorage"}
    assert not connections & names, "a connection-string form of a connection is set in Azure"
    for name in names:
        if "__" in name:
            assert name.split("__", 1)[1] in IDENTITY_PROPERTIES, name
    assert {"AzureWebJobsStorage__accountName", "BridgeStorage__queueServiceUri", "BridgeStorage__blobServiceUri"} <= names
    assert not LOCAL_ONLY & names


def test_sample_uses_only_documented_names():
    unknown = {n for n in sample_names() if not PLATFORM.match(n)} - app_names()
    assert not unknown, f"local.settings.sample.json has settings the app does not know: {sorted(unknown)}"


def test_sample_lists_every_setting_in_its_local_form():
    sample = sample_names()
    assert {logical(n) for n in app_names()} == {logical(n) for n in sample if not PLATFORM.match(n)}
    # Locally both connections are connection strings (Azurite).
    assert {"BridgeStorage", "AzureWebJobsStorage"} <= sample


def test_the_same_logical_settings_in_all_three_places():
    app = {logical(n) for n in app_names()}
    local = {logical(n) for n in sample_names() if not PLATFORM.match(n)}
    azure = {logical(n) for n in bicep_names() if not PLATFORM.match(n)}
    assert app == local == azure | LOCAL_ONLY


def test_bicep_values_match_the_app_defaults_and_limits():
    main = b.parse(b.MAIN)
    window = main["parameters"]["listenerWindowSeconds"]
    bounds = {d["type"]: d["argument"] for d in window["decorators"]}
    assert window["default"] == app_settings_module.DEFAULT_LISTENER_WINDOW
    assert app_settings_module.MIN_LISTENER_WINDOW <= bounds["min_value"]
    assert bounds["max_value"] <= app_settings_module.MAX_LISTENER_WINDOW
    assert b.resolve(main, "outboundQueueName") == app_settings_module.OUTBOUND_QUEUE
    assert b.resolve(main, "outboundPoisonQueueName") == app_settings_module.OUTBOUND_POISON_QUEUE
    assert b.resolve(main, "inboundDefaultQueueName") == app_settings_module.DEFAULT_INBOUND_QUEUE
    assert b.resolve(main, "claimCheckContainerName") == app_settings_module.DEFAULT_CLAIM_CHECK_CONTAINER
